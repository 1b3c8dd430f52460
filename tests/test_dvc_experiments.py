"""DVC experiments are safe: `dvc repro` and `dvc exp run` record the gate's decision but never register a version
or move `champion`, and a temporary experiment (`dvc exp run --temp`, run by DVC in a copy of the project under
`.dvc/tmp/exps/`) logs its runs into the original project's MLflow store, not into a store made in that copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import dvc_executable, make_clone, run_ok, tool_env

NAME = "mufasa-sal"


def _registry(root: Path) -> tuple[set[str], str | None]:
    """The registered versions of the model and the version `champion` points at, in ``root``'s own store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions = {v.version for v in client.search_model_versions(f"name='{NAME}'")}
    try:
        champion = client.get_model_version_by_alias(NAME, "champion").version
    except MlflowException:
        champion = None
    return {str(v) for v in versions}, None if champion is None else str(champion)


def _gate_runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`mufasa.stage` = 'gate'")


def _commit(root: Path, message: str) -> None:
    run_ok(["git", "add", "-A"], root)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory):
    """A clone after `dvc repro` (which registers nothing) and `mufasa stage gate --register` (version 1 is
    `champion`), committed: the state an experiment starts from. The store is the project's own ``mlflow/``.
    Shared by this module's slow tests (one pipeline run): the temporary experiment leaves the workspace as it
    was, so it runs first."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # tool_env() passes os.environ on to the stages
        mp.delenv("DVC_ROOT", raising=False)
        clone = make_clone(tmp_path_factory.mktemp("experiments") / "clone")
        run_ok([dvc_executable(), "repro"], clone)
        assert json.loads((clone / "metrics" / "gate.json").read_text())["passed"]  # tests' margins let it pass
        assert not (clone / "mlflow" / "mlflow.db").exists() or _registry(clone) == (set(), None)  # no version
        status = run_ok([dvc_executable(), "status"], clone)
        assert "up to date" in status.stdout, status.stdout
        out = run_ok([sys.executable, "-m", "mufasa.cli", "stage", "gate", "--register"], clone)
        assert "registered as version 1;" in out.stdout, out.stdout
        assert _registry(clone) == ({"1"}, "1")
        status = run_ok([dvc_executable(), "status"], clone)  # registering changed none of the gate's files
        assert "up to date" in status.stdout, status.stdout
        _commit(clone, "baseline with a champion")
        yield clone


@pytest.mark.slow
def test_a_temporary_experiment_logs_into_the_original_project_store(champion_project):
    root = champion_project
    before = {r.info.run_id for r in _gate_runs(root)}
    exp = run_ok([dvc_executable(), "exp", "run", "--temp", "-S", "gate.min_gain_over_popularity=-0.5"], root)
    assert "Running stage 'gate'" in exp.stdout, exp.stdout
    new = [r for r in _gate_runs(root) if r.info.run_id not in before]
    assert len(new) == 1, f"the temporary experiment's gate run is not in {root / 'mlflow' / 'mlflow.db'}"
    (run,) = new
    assert run.data.params["gate.min_gain_over_popularity"] == "-0.5"  # the experiment's, not the workspace's
    # it compared with this project's champion (a store made in the copy would have had none) and moved nothing
    assert run.data.metrics["passed"] == 1.0 and run.data.metrics["registered"] == 0.0
    assert any(k.startswith("champion_ndcg") for k in run.data.metrics), run.data.metrics
    assert _registry(root) == ({"1"}, "1")
    assert not list((root / ".dvc" / "tmp").glob("exps/**/mlflow/mlflow.db"))


@pytest.mark.slow
def test_a_dvc_experiment_leaves_the_champion_where_it_was(champion_project):
    root = champion_project
    # the README's kind of experiment: a changed parameter reruns evaluate and the gate, whose candidate passes
    exp = run_ok([dvc_executable(), "exp", "run", "-S", "evaluate.filter_history=true"], root)
    assert "Running stage 'evaluate'" in exp.stdout and "Running stage 'gate'" in exp.stdout, exp.stdout
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert gate["passed"] and gate["compared_with_champion"] == "1"  # it would be promoted: only recorded
    assert "nothing registered" in exp.stdout
    assert _registry(root) == ({"1"}, "1")
    # and an experiment cannot be talked into registering either
    inside = subprocess.run(
        [sys.executable, "-m", "mufasa.cli", "stage", "gate", "--register"], cwd=root, capture_output=True,
        text=True, env=dict(tool_env(), DVC_EXP_NAME="exp-under-test"),
    )
    assert inside.returncode == 2 and "never registers a version" in inside.stderr, inside.stderr
    assert _registry(root) == ({"1"}, "1")


def test_a_dvc_experiment_copy_resolves_to_the_original_project_store(tmp_path, monkeypatch):
    """The rule behind the slow test above, without DVC: a root under ``<DVC_ROOT>/.dvc/tmp/exps/`` logs to
    ``<DVC_ROOT>/mlflow``; every other root keeps its own store; an explicit store always wins."""
    from mufasa.pipeline.tracking import Tracker, default_tracking_uri, store_root

    original = tmp_path / "project"
    (original / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub").mkdir(parents=True)
    (original / "dvc.yaml").write_text("stages: {}\n")
    copy = original / ".dvc" / "tmp" / "exps" / "tmpab12"
    other = tmp_path / "elsewhere"
    other.mkdir()
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    own = f"sqlite:///{copy.resolve() / 'mlflow' / 'mlflow.db'}"
    assert default_tracking_uri(copy) == own  # no DVC: the folder's own store

    monkeypatch.setenv("DVC_ROOT", str(original))  # what DVC sets for a --temp / queued experiment's stages
    expected = f"sqlite:///{original.resolve() / 'mlflow' / 'mlflow.db'}"
    assert default_tracking_uri(copy) == expected
    assert default_tracking_uri(copy / "sub") == expected
    assert Tracker.for_project(copy).artifact_root == original.resolve() / "mlflow" / "artifacts"
    assert store_root(original) == original.resolve()  # `dvc repro` / workspace `dvc exp run`: DVC_ROOT is the root
    assert store_root(other) == other.resolve()  # a DVC_ROOT that is not this folder's parent project: ignored
    (original / "dvc.yaml").unlink()
    assert default_tracking_uri(copy) == own  # not a DVC project: the copy rule does not apply

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri(copy) == "http://127.0.0.1:5999"
