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
