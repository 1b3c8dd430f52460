"""End to end as a user runs it: `dagster dev` on 127.0.0.1, `retrain` launched through the GraphQL API, then a
registered champion in MLflow and a clean `dvc status`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster_graphql import DagsterGraphQLClient
from mlflow import MlflowClient

from tests.helpers import free_port, stop_process_group, wait_for_http
from tests.conftest import dvc_executable, run_ok

pytestmark = pytest.mark.slow


@pytest.fixture
def dagster_dev(clone, tmp_path):
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}",
        PYTHONPATH=str(clone),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{Path(dvc_executable()).parent}{os.pathsep}{os.environ['PATH']}",
    )
    log = open(tmp_path / "dagster_dev.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "orchestration.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the daemon and code server stop with it
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", proc, tmp_path / "dagster_dev.log", 180, "dagster dev")
        yield port, clone, tmp_path / "dagster_dev.log"
    finally:
        stop_process_group(proc)
        log.close()


def test_retrain_through_graphql_registers_a_champion_and_leaves_dvc_clean(dagster_dev):
    port, clone, log = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution("retrain")
    deadline, status = time.time() + 900, None
    while time.time() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{log.read_text()[-4000:]}"

    mlflow = MlflowClient(f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}")
    champion = mlflow.get_model_version_by_alias("mufasa-sal", "champion")
    assert champion.tags["gate.decision"] == "promoted"
    runs = mlflow.search_runs(
        [mlflow.get_experiment_by_name("mufasa").experiment_id], filter_string=f"tags.`mufasa.pipeline_run` = '{run_id}'"
    )
    assert {"ingest", "train_sal", "gate"} <= {r.info.run_name for r in runs}
    status_out = run_ok([dvc_executable(), "status"], clone)
    assert "up to date" in status_out.stdout, status_out.stdout
