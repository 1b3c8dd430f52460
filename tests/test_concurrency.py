"""One pipeline run at a time per checkout: the project lock (mufasa.pipeline.lock), its CLI and Dagster wiring,
and two real retrains started at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mufasa.pipeline.lock import ENV_HELD, LOCK_NAME, ProjectLocked, holder, project_lock
from tests.conftest import REPO, dvc_executable, run_ok, tool_env

HOLD = """
import sys, time
from mufasa.pipeline.lock import project_lock
with project_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _start_holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_across_processes_names_the_holder_and_dies_with_it(tmp_path):
    holder_proc = _start_holder(tmp_path)
    try:
        with pytest.raises(ProjectLocked, match=rf"held by pid {holder_proc.pid} .*'test holder'"):
            with project_lock(tmp_path, "second"):
                pass
        started = time.perf_counter()
        with pytest.raises(ProjectLocked):
            with project_lock(tmp_path, "second", timeout=0.5):  # waits, then gives up
                pass
        assert time.perf_counter() - started >= 0.4
        assert holder(tmp_path)["pid"] == holder_proc.pid
    finally:
        holder_proc.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
        holder_proc.wait()
    with project_lock(tmp_path, "after the crash"):  # no stale lock after kill -9
        assert holder(tmp_path)["what"] == "after the crash"
    assert (tmp_path / LOCK_NAME).exists()


def test_lock_is_reentrant_in_process_and_passed_to_child_processes(tmp_path):
    child = f"from mufasa.pipeline.lock import project_lock\nwith project_lock({str(tmp_path)!r}, 'child'):\n  print('ok')"
    with project_lock(tmp_path, "outer"):
        with project_lock(tmp_path, "inner"):  # a Dagster run's stages take it again
            assert os.environ[ENV_HELD] == str(tmp_path.resolve())
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr  # e.g. torchrun workers
        # a process that did NOT inherit the marker is refused
        env = {k: v for k, v in os.environ.items() if k != ENV_HELD}
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             env=dict(env, PYTHONPATH=str(REPO)))
        assert out.returncode != 0 and "ProjectLocked" in out.stderr
    assert ENV_HELD not in os.environ
    with project_lock(tmp_path, "free again"):
        pass


def test_stage_cli_refuses_to_start_while_another_run_holds_the_lock(project):
    holder_proc = _start_holder(project.root)
    try:
        proc = subprocess.run([sys.executable, "-m", "mufasa.cli", "stage", "ingest", "--root", str(project.root),
                               "--no-track"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        holder_proc.send_signal(signal.SIGKILL)
        holder_proc.wait()
    assert proc.returncode == 4, proc.stderr
    assert "not started" in proc.stderr and f"pid {holder_proc.pid}" in proc.stderr
    assert not project.raw_interactions.exists()  # nothing written


def test_dagster_instance_queues_retrains_one_at_a_time():
    from dagster import DagsterInstance

    from orchestration.definitions import defs

    job = defs.resolve_job_def("retrain")
    assert job.tags.get("mufasa/pipeline") == "retrain"
    instance = DagsterInstance.from_config(str(REPO / ".dagster"))
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "mufasa/pipeline", "limit": 1} in [dict(limit) for limit in limits]


RETRAIN = """
from orchestration.definitions import defs
defs.resolve_job_def("retrain").execute_in_process()
print("RETRAIN-OK")
"""


@pytest.mark.slow
def test_two_retrains_started_at_once_one_runs_the_other_fails_clearly(clone):
    """Both start together; exactly one holds the lock and finishes; the registry and DVC data stay consistent."""
    env_dvc = str(Path(dvc_executable()).parent)
    env = dict(tool_env(), PYTHONPATH=str(clone), MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env_dvc}{os.pathsep}{os.environ['PATH']}")
    env.pop(ENV_HELD, None)
    procs = [subprocess.Popen([sys.executable, "-c", RETRAIN], cwd=clone, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    ok = [i for i, p in enumerate(procs) if p.returncode == 0 and "RETRAIN-OK" in outs[i][0]]
    assert len(ok) == 1, [o[1][-2000:] for o in outs]
    refused = outs[1 - ok[0]][1]
    assert "ProjectLocked" in refused and "one pipeline run at a time" in refused, refused[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='mufasa-sal'")
    assert len(versions) == 1  # one registration, from the run that held the lock
    assert int(client.get_model_version_by_alias("mufasa-sal", "champion").version) == int(versions[0].version)
    status = run_ok([dvc_executable(), "status"], clone)
    assert "up to date" in status.stdout, status.stdout  # data and dvc.lock agree: nothing half-written
