"""The raw-data sensor fires once per new version of the data, with the cursor to prove it; it skips with a
reason otherwise. The failure sensor tags the MLflow pipeline run."""

from __future__ import annotations

import yaml
from dagster import RunRequest, SkipReason, build_sensor_context

from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline.params import load_params
from orchestration.defs.resources import MufasaProject
from orchestration.defs.sensors import raw_data_sensor


def _files_project(root):
    inp = root / "data" / "input"
    inp.mkdir(parents=True, exist_ok=True)
    (inp / "items.csv").write_text("item_id,title\n1,A\n2,B\n3,C\n")
    (inp / "interactions.csv").write_text("user_id,item_id,timestamp\n1,1,1\n1,2,2\n1,3,3\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"ingest": {"source": "files", "files": {"image_root": None}}}))
    return MufasaProject(root=str(root))


def _tick(project, cursor=None):
    with build_sensor_context(cursor=cursor, resources={"project": project}) as ctx:  # the project is a cm resource
        result = raw_data_sensor(ctx)
        return result, ctx.cursor


def test_fires_once_on_new_data_then_skips(tmp_path):
    project = _files_project(tmp_path)
    first, cursor = _tick(project)
    assert isinstance(first, RunRequest) and first.run_key == f"raw-data-{cursor}"
    again, cursor2 = _tick(project, cursor)
    assert isinstance(again, SkipReason) and "unchanged" in again.skip_message
    assert cursor2 == cursor
    with open(tmp_path / "data" / "input" / "interactions.csv", "a") as fh:
        fh.write("2,1,4\n")
    changed, cursor3 = _tick(project, cursor)
    assert isinstance(changed, RunRequest) and cursor3 != cursor and changed.run_key == f"raw-data-{cursor3}"
    assert changed.tags["mufasa/trigger"] == "raw_data_changed"


def test_first_tick_skips_when_the_data_is_already_ingested(tmp_path):
    project = _files_project(tmp_path)
    ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, project.paths)
    result, cursor = _tick(project)
    assert isinstance(result, SkipReason)
    assert cursor is not None  # the baseline is recorded, so a later change fires


def test_param_change_counts_as_new_data(tmp_path):
    project = _files_project(tmp_path)
    _, cursor = _tick(project)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["ingest"]["files"]["encoding"] = "latin-1"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result, _ = _tick(project, cursor)
    assert isinstance(result, RunRequest)


def test_failure_is_recorded_on_the_mlflow_pipeline_run(tmp_path):
    from mlflow import MlflowClient

    from mufasa.pipeline.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t")
    parent = tracker.record_pipeline_failure("dagster-run-1", "step ingest failed: bad data")
    run = MlflowClient(tracker.tracking_uri).get_run(parent)
    assert run.info.status == "FAILED" and "bad data" in run.data.tags["mufasa.failure"]


# ---- the schedule: configured when the definitions load, and a tick evaluated ------------------------------------


def test_the_schedule_defaults_to_mondays_0300_utc_and_its_tick_requests_a_retrain():
    from datetime import datetime, timezone

    from dagster import build_schedule_context

    from orchestration.definitions import build_definitions

    schedule = build_definitions({}).get_schedule_def("weekly_retrain")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == ("0 3 * * 1", "UTC", "retrain")
    tick = schedule.evaluate_tick(build_schedule_context(
        scheduled_execution_time=datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)))
    assert len(tick.run_requests) == 1 and tick.run_requests[0].tags["mufasa/trigger"] == "schedule"


def test_the_schedule_and_dvc_push_follow_the_environment_and_refuse_bad_values():
    import pytest

    from orchestration.definitions import build_definitions

    defs = build_definitions({"MUFASA_RETRAIN_CRON": "30 1 * * *", "MUFASA_RETRAIN_TIMEZONE": "Europe/Berlin",
                              "MUFASA_DVC_PUSH": "1"})
    schedule = defs.get_schedule_def("weekly_retrain")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 1 * * *", "Europe/Berlin")
    assert defs.resources["dvc"].push is True
    with pytest.raises(ValueError, match="MUFASA_RETRAIN_CRON='0 3 \\* \\*'"):
        build_definitions({"MUFASA_RETRAIN_CRON": "0 3 * *"})
    with pytest.raises(ValueError, match="MUFASA_RETRAIN_TIMEZONE='Mars/Olympus'"):
        build_definitions({"MUFASA_RETRAIN_TIMEZONE": "Mars/Olympus"})
    with pytest.raises(ValueError, match="MUFASA_DVC_PUSH='yes'"):
        build_definitions({"MUFASA_DVC_PUSH": "yes"})


# ---- the failure sensor, run on a real failed run --------------------------------------------------------------


def test_the_failure_sensor_marks_the_mlflow_pipeline_run_failed_with_the_reason(tmp_path):
    from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context, job, op
    from mlflow import MlflowClient

    from mufasa.pipeline.tracking import PIPELINE_TAG
    from orchestration.defs.resources import MlflowTracking
    from orchestration.defs.sensors import retrain_failure_sensor
    from tests.conftest import synthetic_params_dict

    @op
    def train_sal():
        raise RuntimeError("loss became NaN")

    @job(name="retrain")
    def retrain():
        train_sal()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowTracking(tracking_uri=uri)
    project = MufasaProject(root=str(tmp_path))
    with DagsterInstance.ephemeral() as instance:
        result = retrain.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
        # a stage of this run had opened the MLflow pipeline run (as the assets do, keyed by the Dagster run id)
        with mlflow.tracker(project).stage_run("ingest", run.run_id):
            pass
        with build_run_status_sensor_context(
            sensor_name="retrain_failure_sensor", dagster_instance=instance, dagster_run=run, dagster_event=failure,
            resources={"project": project, "mlflow": mlflow},  # the project is a context-manager resource
        ) as context:
            retrain_failure_sensor(context.for_run_failure())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(synthetic_params_dict()["tracking"]["experiment"])
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{run.run_id}' "
                                 "and tags.`mufasa.role` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert "train_sal" in parents[0].data.tags["mufasa.failure"]


# ---- the raw data as an observable source asset: its data version, shared with the sensor ----------------------


def _observe(project) -> str:
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from orchestration.defs.assets import raw_source

    job = define_asset_job("observe_raw_source", selection=AssetSelection.assets(raw_source.key))
    defs = Definitions(assets=[raw_source], jobs=[job], resources={"project": project})
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("observe_raw_source").execute_in_process(instance=instance)
        (observation,) = result.asset_observations_for_node("raw_source")
        return observation.data_version


def test_the_raw_source_version_changes_with_an_input_file_and_only_then(tmp_path):
    import os

    from orchestration.defs.assets import raw_data_version

    project = _files_project(tmp_path)
    first = _observe(project)
    assert first and first == _observe(project) == raw_data_version(project)
    interactions = tmp_path / "data" / "input" / "interactions.csv"
    os.utime(interactions, (1, 1))  # touched, same bytes: the same data
    assert _observe(project) == first
    with open(interactions, "a") as fh:
        fh.write("2,1,4\n")
    second = _observe(project)
    assert second != first
    (tmp_path / "data" / "input" / "items.csv").write_text("item_id,title\n1,A\n2,B\n3,Z\n")
    assert _observe(project) not in (first, second)


def test_the_sensor_fires_for_the_version_the_source_asset_observes(tmp_path):
    project = _files_project(tmp_path)
    request, cursor = _tick(project)
    assert isinstance(request, RunRequest) and cursor == _observe(project)
    assert request.tags["mufasa/fingerprint"] == cursor


def test_ingest_records_the_observed_version_in_its_manifest(tmp_path):
    import json

    project = _files_project(tmp_path)
    ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, project.paths)
    manifest = json.loads(project.paths.raw_manifest.read_text())
    assert manifest["source_fingerprint"] == _observe(project)
