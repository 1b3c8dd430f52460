"""The project's Dagster instance without the Makefile: a plain `dagster dev` / `dagster job execute` from the
project root (DAGSTER_HOME unset) gets the run queue (one retrain at a time) and keeps its runs in `.dagster/`,
exactly the instance `make run` / `make ui` (DAGSTER_HOME=.dagster) get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO
from tests.helpers import free_port, stop_process_group, wait_for_http

RETRAIN_LIMIT = {"key": "mufasa/pipeline", "limit": 1}


def _project_copy(root: Path) -> Path:
    """The instance files of the project (nothing else is read to build the instance)."""
    (root / ".dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", root / "dagster.yaml")
    shutil.copy(REPO / ".dagster" / "dagster.yaml", root / ".dagster" / "dagster.yaml")
    return root


def _cli_instance(monkeypatch, cwd: Path):
    """The instance Dagster's CLI (`dagster dev`, `dagster job execute`) builds in ``cwd`` with DAGSTER_HOME unset."""
    from dagster._cli.utils import get_possibly_temporary_instance_for_cli

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(cwd)
    return get_possibly_temporary_instance_for_cli("test")


def _sqlite_file(storage) -> str:
    return os.path.realpath(storage._conn_string.removeprefix("sqlite:///"))  # noqa: SLF001 (no public accessor)


def _storage_dirs(instance) -> dict[str, str]:
    """Where the instance keeps runs, event logs, schedules, artifacts and compute logs (absolute)."""
    return {
        "runs": _sqlite_file(instance.run_storage),
        "events": os.path.realpath(instance.event_log_storage._base_dir),
        "schedules": _sqlite_file(instance.schedule_storage),
        "artifacts": os.path.realpath(instance.storage_directory()),
        "compute_logs": os.path.realpath(instance.compute_log_manager._base_dir),
    }


def test_a_plain_dagster_cli_in_the_project_root_gets_the_project_instance(tmp_path, monkeypatch):
    root = _project_copy(tmp_path / "project")
    with _cli_instance(monkeypatch, root) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert RETRAIN_LIMIT in [dict(limit) for limit in limits]
        assert not instance.telemetry_enabled
        dirs = _storage_dirs(instance)
        assert all(Path(d).is_relative_to(root / ".dagster") for d in dirs.values()), dirs


def test_without_the_root_file_the_cli_falls_back_to_a_temporary_instance_with_no_queue_limit(tmp_path, monkeypatch):
    """What the root dagster.yaml fixes (and why this test can fail): no file, no limit, storage deleted on exit."""
    root = _project_copy(tmp_path / "project")
    (root / "dagster.yaml").unlink()
    with _cli_instance(monkeypatch, root) as instance:
        assert not instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert ".tmp_dagster_home_" in _storage_dirs(instance)["runs"]


def test_the_makefile_instance_and_the_plain_cli_instance_are_the_same(tmp_path, monkeypatch):
    """`make` sets DAGSTER_HOME=.dagster (reads .dagster/dagster.yaml); a plain CLI reads ./dagster.yaml: same
    settings, same storage files."""
    from dagster import DagsterInstance

    root = _project_copy(tmp_path / "project")
    with _cli_instance(monkeypatch, root) as plain:
        plain_dirs, plain_queue = _storage_dirs(plain), plain.get_concurrency_config().run_queue_config
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".dagster"))
    with DagsterInstance.get() as made:
        assert _storage_dirs(made) == plain_dirs
        queue = made.get_concurrency_config().run_queue_config
        assert queue.tag_concurrency_limits == plain_queue.tag_concurrency_limits
        assert queue.max_concurrent_runs == plain_queue.max_concurrent_runs
    home = yaml.safe_load((REPO / ".dagster" / "dagster.yaml").read_text())
    plain_cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert {k: plain_cfg[k] for k in home} == home  # every setting of the Makefile's file is in the root file


_INSTANCE_QUERY = "{ instance { runQueuingSupported runQueueConfig { tagConcurrencyLimitsYaml } info } }"


@pytest.mark.slow
def test_dagster_dev_without_dagster_home_queues_retrains_and_keeps_its_runs(clone, tmp_path):
    """`dagster dev` as a user starts it in the project root, DAGSTER_HOME unset: the webserver's instance has the
    retrain limit and stores in the project's .dagster/ (kept after it stops)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(PYTHONPATH=str(clone), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port, log_path = free_port(), tmp_path / "dagster_dev.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["dagster", "dev", "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the daemon and code server stop with it
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/server_info", proc, log_path, 240, "dagster dev")
            answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": _INSTANCE_QUERY}, timeout=60)
            instance = answer.json()["data"]["instance"]
        finally:
            stop_process_group(proc)
    assert instance["runQueuingSupported"]
    assert RETRAIN_LIMIT in yaml.safe_load(instance["runQueueConfig"]["tagConcurrencyLimitsYaml"])
    assert "tmp_dagster_home" not in instance["info"].split("run_storage:")[1].split("\n\n")[0]
    assert (clone / ".dagster" / "history" / "runs.db").is_file()  # the runs stay in the project after it stops
    assert not list(clone.glob(".tmp_dagster_home_*"))  # dagster's temporary folder is gone; nothing else kept there
