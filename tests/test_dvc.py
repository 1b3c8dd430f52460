"""DVC: `dvc repro` runs the stages in a fresh clone, a second one does nothing, a Dagster run leaves
`dvc.lock` current (`dvc status` clean), and `dvc push` / `dvc pull` move a run's data through the remote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc_executable, tool_env, run_ok, synthetic_params_dict

pytestmark = pytest.mark.slow


def test_dvc_repro_in_a_fresh_clone_then_nothing_to_do(clone):
    first = run_ok([dvc_executable(), "repro"], clone)
    for stage in ("ingest", "validate", "sequences"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (clone / "data" / "sequences" / "test.parquet").is_file()
    metrics = yaml.safe_load((clone / "metrics" / "sequences.json").read_text())
    assert metrics["n_test"] == synthetic_params_dict()["ingest"]["synthetic"]["n_users"]
    second = run_ok([dvc_executable(), "repro"], clone)
    assert "Running stage" not in second.stdout
    status = run_ok([dvc_executable(), "status"], clone)
    assert "up to date" in status.stdout
    # an experiment with one parameter changed, compared with the committed baseline
    run_ok(["git", "add", "-A"], clone)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], clone)
    exp = run_ok([dvc_executable(), "exp", "run", "-S", "evaluate.filter_history=true"], clone)
    assert "Running stage 'evaluate'" in exp.stdout and "Running stage 'train_sal'" not in exp.stdout
    diff = run_ok([dvc_executable(), "metrics", "diff", "--all"], clone)
    assert "metrics/eval.json" in diff.stdout and "models.mufasa.hr@10" in diff.stdout
    plots = run_ok([dvc_executable(), "plots", "show", "--json"], clone)
    assert "reports/eval.png" in plots.stdout
    # the training curves are data series DVC can overlay across runs, with the axes declared in dvc.yaml
    series = json.loads(plots.stdout)["data"]
    points = [p for entry in series["reports/sal/history.json"] for p in entry["content"]["data"]["values"]]
    epochs = yaml.safe_load((clone / "params.yaml").read_text())["train_sal"]["train"]["epochs"]
    assert [p["epoch"] for p in points] == list(range(1, epochs + 1))  # no early stop in 3 epochs (patience 10)
    assert all("val_ndcg@10" in p and "seconds" not in p for p in points)
    assert "reports/mfl/history.json" in series


def test_dagster_run_leaves_dvc_lock_current(clone):
    code = (
        "from orchestration.definitions import defs; "
        "r = defs.resolve_job_def('retrain').execute_in_process(raise_on_error=False); "
        "raise SystemExit(0 if r.success else 1)"
    )
    env_dvc = str(Path(dvc_executable()).parent)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=clone,
        env=dict(tool_env(), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env_dvc}{os.pathsep}{os.environ['PATH']}",
                 PYTHONPATH=str(clone), MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = run_ok([dvc_executable(), "status"], clone)
    assert "up to date" in status.stdout, status.stdout
    repro = run_ok([dvc_executable(), "repro"], clone)
    assert "Running stage" not in repro.stdout
    # `dvc repro` reproduces the evaluation metrics of the Dagster run (same seeds, CPU): within 1e-4
    dagster_metrics = json.loads((clone / "metrics" / "eval.json").read_text())["models"]
    run_ok([dvc_executable(), "repro", "--force", "--single-item", "train_sal"], clone)
    run_ok([dvc_executable(), "repro", "--force", "--single-item", "evaluate"], clone)
    dvc_metrics = json.loads((clone / "metrics" / "eval.json").read_text())["models"]
    for model, values in dagster_metrics.items():
        for key, value in values.items():
            assert dvc_metrics[model][key] == pytest.approx(value, abs=1e-4), (model, key)


def _tree_md5(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".gitignore"  # DVC's own ignore files are committed to git
    }


def test_dvc_push_pull_round_trip_through_the_default_remote(clone, tmp_path):
    """A teammate's fresh checkout gets the exact data of a run from the shared remote (`dvc push` / `dvc pull`)."""
    run_ok([dvc_executable(), "repro", "sequences"], clone)  # ingest -> validate -> sequences: the data stages
    run_ok(["git", "add", "-A"], clone)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data run"], clone)
    produced = {d: _tree_md5(clone / "data" / d) for d in ("raw", "sequences")}
    assert produced["sequences"] and produced["raw"]

    # what a Dagster run does per stage with MUFASA_DVC_PUSH=1: `dvc commit` + `dvc push` (DvcResource)
    from orchestration.defs.resources import DvcResource

    dvc = DvcResource(push=True, executable=dvc_executable())
    for stage in ("ingest", "validate", "sequences"):
        dvc.commit(clone, stage)
    storage = clone / ".dvc-storage"  # the default remote: `../.dvc-storage` relative to .dvc/config
    assert sum(1 for p in storage.rglob("*") if p.is_file()) >= len(produced["sequences"])

    teammate = tmp_path / "teammate"
    run_ok(["git", "clone", "-q", str(clone), str(teammate)], tmp_path)
    assert not _tree_md5(teammate / "data" / "sequences")  # data never travels through git
    assert not (teammate / ".dvc" / "cache").exists()
    # the teammate points the remote at the shared folder (a per-machine setting: .dvc/config.local)
    run_ok([dvc_executable(), "remote", "modify", "--local", "local", "url", str(storage)], teammate)
    run_ok([dvc_executable(), "pull", "--with-deps", "sequences"], teammate)
    for d, files in produced.items():
        assert _tree_md5(teammate / "data" / d) == files, d
    status = run_ok([dvc_executable(), "status", "sequences"], teammate)
    assert "up to date" in status.stdout, status.stdout
    # and an emptied remote makes a pull fail loudly instead of leaving the checkout half-filled silently
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    other = tmp_path / "other"
    run_ok(["git", "clone", "-q", str(clone), str(other)], tmp_path)
    run_ok([dvc_executable(), "remote", "modify", "--local", "local", "url", str(empty)], other)
    failed = subprocess.run(
        [dvc_executable(), "pull", "--with-deps", "sequences"], cwd=other, env=tool_env(), capture_output=True, text=True
    )
    assert failed.returncode != 0
