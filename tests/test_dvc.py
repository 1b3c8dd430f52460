"""DVC: `dvc repro` runs the stages in a fresh clone, a second one does nothing, and a Dagster run leaves
`dvc.lock` current (`dvc status` clean)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, synthetic_params_dict

pytestmark = pytest.mark.slow


def _dvc() -> str:
    for candidate in (shutil.which("dvc"), REPO / ".venv-dvc" / "bin" / "dvc"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("dvc not found: `make setup` installs it in .venv-dvc")


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stage `python` = this venv
    return env


def _run(args, cwd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def clone(tmp_path) -> Path:
    """A fresh git clone of the working tree (tracked + new files, no ignored outputs), on small synthetic data."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    dest = tmp_path / "clone"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict()))
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], dest)
    return dest


def test_dvc_repro_in_a_fresh_clone_then_nothing_to_do(clone):
    first = _run([_dvc(), "repro"], clone)
    for stage in ("ingest", "validate", "sequences"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (clone / "data" / "sequences" / "test.parquet").is_file()
    metrics = yaml.safe_load((clone / "metrics" / "sequences.json").read_text())
    assert metrics["n_test"] == synthetic_params_dict()["ingest"]["synthetic"]["n_users"]
    second = _run([_dvc(), "repro"], clone)
    assert "Running stage" not in second.stdout
    status = _run([_dvc(), "status"], clone)
    assert "up to date" in status.stdout


def test_dagster_run_leaves_dvc_lock_current(clone):
    code = (
        "from orchestration.definitions import defs; "
        "r = defs.resolve_job_def('retrain').execute_in_process(raise_on_error=False); "
        "raise SystemExit(0 if r.success else 1)"
    )
    env_dvc = str(Path(_dvc()).parent)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=clone,
        env=dict(_env(), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env_dvc}{os.pathsep}{os.environ['PATH']}",
                 PYTHONPATH=str(clone), MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = _run([_dvc(), "status"], clone)
    assert "up to date" in status.stdout, status.stdout
    repro = _run([_dvc(), "repro"], clone)
    assert "Running stage" not in repro.stdout
