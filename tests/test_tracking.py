"""MLflow adapter: one parent run per pipeline run, nested stage runs, failures recorded."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mufasa.pipeline import stages
from mufasa.pipeline.tracking import PIPELINE_TAG, Tracker


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", artifact_root=tmp_path / "artifacts")


def test_stages_of_one_pipeline_run_nest_under_one_parent(tracker, project, small_params):
    for name in ("ingest", "sequences"):
        with tracker.stage_run(name, "pipe-1") as run:
            tracker.log_stage_result(run, stages.run_stage(name, small_params, project))
    with tracker.stage_run("ingest", "pipe-2") as other:
        pass
    client = MlflowClient(tracker.tracking_uri)
    exp = client.get_experiment_by_name("test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert sorted(r.data.tags[PIPELINE_TAG] for r in parents) == ["pipe-1", "pipe-2"]
    parent1 = next(r for r in parents if r.data.tags[PIPELINE_TAG] == "pipe-1")
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent1.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["ingest", "sequences"]
    ingest_run = next(r for r in children if r.info.run_name == "ingest")
    assert ingest_run.data.metrics["n_users"] == small_params.ingest.synthetic.n_users
    assert ingest_run.data.params["source"] == "synthetic"
    assert ingest_run.info.status == "FINISHED"
    assert other.parent_run_id != parent1.info.run_id
    assert parent1.info.status == "FINISHED"


def test_a_failing_stage_marks_its_run_failed_with_the_reason(tracker):
    with pytest.raises(RuntimeError):
        with tracker.stage_run("train", "pipe-x") as run:
            raise RuntimeError("out of memory")
    client = MlflowClient(tracker.tracking_uri)
    failed = client.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert "out of memory" in failed.data.tags["mufasa.failure"]
    parent = client.get_run(run.parent_run_id)
    assert parent.data.tags["mufasa.failed_stage"] == "train" and parent.info.status == "FAILED"


def test_project_default_store_is_sqlite_in_mlflow_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = Tracker.for_project(tmp_path)
    assert t.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert Tracker.for_project(tmp_path).tracking_uri == "http://127.0.0.1:5999"


def test_runs_carry_the_git_commit_and_whether_the_tree_was_dirty(clone, monkeypatch):
    import subprocess

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker.for_project(clone, "test")
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with tracker.stage_run("ingest", "clean") as clean:
        pass
    (clone / "params.yaml").write_text((clone / "params.yaml").read_text() + "\n# edited\n")
    with tracker.stage_run("ingest", "dirty") as dirty:
        pass
    client = MlflowClient(tracker.tracking_uri)
    for run, expected in ((clean, "false"), (dirty, "true")):
        tags = client.get_run(run.run_id).data.tags
        assert tags["mlflow.source.git.commit"] == head
        assert tags["mufasa.git.dirty"] == expected
        parent = client.get_run(tags[MLFLOW_PARENT_RUN_ID]).data.tags
        assert parent["mlflow.source.git.commit"] == head and parent["mufasa.git.dirty"] == expected


def test_outside_a_git_checkout_runs_have_no_commit_tag(project):
    from mufasa.pipeline.tracking import source_tags

    tags = source_tags(project.root)
    assert "mlflow.source.git.commit" not in tags and tags["mlflow.source.name"] == "mufasa"
