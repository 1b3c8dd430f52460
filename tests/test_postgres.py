"""Shared services on a real PostgreSQL (no mocks): an MLflow tracking server with a PostgreSQL backend store and
a proxied artifact root, Dagster run/event storage on PostgreSQL (deploy/dagster-postgres.yaml), and a full
``retrain`` against both that registers and promotes a model. Plus the tracking-URI precedence (fast, no server).

PostgreSQL comes from Debian's packages through scripts/postgres.sh (.ci/run starts it before ``make test``).
Without it these tests skip, except in CI (``CI=true``), where a missing server is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from mufasa.config import TrackingConfig
from mufasa.pipeline.tracking import Tracker, default_tracking_uri
from tests.helpers import free_port, stop_process_group, wait_for_http
from tests.conftest import REPO, synthetic_params_dict

SCRIPT = REPO / "scripts" / "postgres.sh"
BIN = Path(sys.executable).parent


# --- tracking URI: environment > params.yaml tracking.uri > ./mlflow (SQLite) -----------------------------------


def _write_tracking(root: Path, **tracking) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict(tracking={"experiment": "t", **tracking})))


def test_sqlite_in_the_project_stays_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write_tracking(tmp_path)
    expected = f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    assert default_tracking_uri(tmp_path) == expected
    tracker = Tracker.for_project(tmp_path)
    assert tracker.tracking_uri == expected
    assert tracker.artifact_root == (tmp_path / "mlflow" / "artifacts").resolve()
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["tracking"]
    assert shipped.get("uri") is None  # the shipped params keep ./mlflow


def test_params_uri_points_at_a_server_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write_tracking(tmp_path, uri="http://127.0.0.1:5001")
    tracker = Tracker.for_project(tmp_path, "t")
    assert tracker.tracking_uri == "http://127.0.0.1:5001"
    assert tracker.artifact_root is None  # the server decides where artifacts go
    assert tracker._url("1", "abc").startswith("http://127.0.0.1:5001/#/experiments/1/runs/abc")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.7:5000")
    assert default_tracking_uri(tmp_path) == "http://10.0.0.7:5000"
    assert Tracker.for_project(tmp_path).tracking_uri == "http://10.0.0.7:5000"


def test_a_database_uri_keeps_artifacts_in_the_project_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = "postgresql+psycopg2://u:p@127.0.0.1:5433/mlflow"
    _write_tracking(tmp_path, uri=uri)
    tracker = Tracker.for_project(tmp_path)
    assert (tracker.tracking_uri, tracker.artifact_root) == (uri, (tmp_path / "mlflow" / "artifacts").resolve())
    explicit = Tracker.for_project(tmp_path, config=TrackingConfig(uri=uri, artifact_root="shared/art"))
    assert explicit.artifact_root == (tmp_path / "shared" / "art").resolve()


def test_dagster_postgres_is_the_release_of_the_pinned_dagster():
    import dagster
    import dagster_postgres

    # Dagster libraries number 0.X.Y where core is 1.(X-16).Y; a mismatched pair breaks instance loading.
    core = dagster.__version__.split(".")
    lib = dagster_postgres.__version__.split(".")
    assert (lib[0], int(lib[1]) - 16, lib[2]) == ("0", int(core[1]), core[2]), (dagster.__version__, lib)


# --- the real services -----------------------------------------------------------------------------------------


def _postgres_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"))


def _script(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True, timeout=600)


def _exports(stdout: str) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in stdout.splitlines() if line.startswith("export "))
    return dict(pairs)


@pytest.fixture(scope="session")
def postgres():
    """The script's server (started if it is not running; stopped afterwards only then), with two fresh databases
    for this session, dropped at the end. Yields the connection settings."""
    import psycopg2

    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if not _postgres_installed() and not in_ci:
        pytest.skip("PostgreSQL is not installed (Debian: `scripts/postgres.sh install` as root); CI installs it")
    was_running = _script("status").returncode == 0
    started = _script("start")
    if started.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start failed ({started.returncode}):\n{started.stderr}")
    env = _exports(started.stdout)
    suffix = uuid.uuid4().hex[:10]
    dbs = {key: f"mufasa_test_{suffix}_{key}" for key in ("mlflow", "dagster", "direct")}
    admin = psycopg2.connect(f"{env['MUFASA_PG_URL']}/{env['DAGSTER_PG_DB']}")
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in dbs.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            **env,
            "dbs": dbs,
            "url": lambda key: f"{env['MUFASA_PG_URL']}/{dbs[key]}",  # libpq (psycopg2.connect)
            # SQLAlchemy (MLflow): a bare postgresql:// means psycopg 3 since SQLAlchemy 2.1; we ship psycopg2
            "sqlalchemy_url": lambda key: env["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[0] + f"/{dbs[key]}",
        }
    finally:
        with admin.cursor() as cur:
            for name in dbs.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        if not was_running:
            _script("stop")


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """``mlflow server`` on 127.0.0.1 with the PostgreSQL backend store and artifacts proxied into a temp folder."""

    port, artifacts, log_path = free_port(), tmp_path / "mlflow-artifacts", tmp_path / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres["sqlalchemy_url"]("mlflow"),
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # no GenAI job runner (7 huey workers): nothing here uses it, and the machine may have 2 cores
        cwd=tmp_path, env=dict(env, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # the first start creates the schema (alembic migrations)
        wait_for_http(f"{url}/health", proc, log_path, 120, "mlflow server")
        yield url, artifacts, log_path
    finally:
        stop_process_group(proc)
        log.close()


@pytest.mark.slow
def test_a_direct_database_uri_tracks_into_postgresql(postgres, tmp_path, monkeypatch):
    """No server: ``tracking.uri`` is the database itself; artifacts land in the project, not the cwd."""
    import psycopg2

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "proj"
    root.mkdir()
    _write_tracking(root, uri=postgres["sqlalchemy_url"]("direct"))
    tracker = Tracker.for_project(root, "direct")
    report = tmp_path / "report.json"
    report.write_text("{}")
    with tracker.stage_run("ingest", "pg-direct") as run:
        run.log_metrics({"rows": 3.0})
        run.log_artifact(report)
    assert list((root / "mlflow" / "artifacts").rglob("report.json"))
    assert not (tmp_path / "mlruns").exists()
    with psycopg2.connect(postgres["url"]("direct")) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.name, r.status, m.value FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
                    "WHERE m.key = 'rows'")
        assert cur.fetchall() == [("ingest", "FINISHED", 3.0)]


@pytest.mark.slow
def test_retrain_on_shared_services_registers_and_promotes(postgres, mlflow_server, project, tmp_path, monkeypatch):
    import pandas as pd
    import psycopg2
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster_postgres import PostgresRunStorage
    from mlflow import MlflowClient

    from mufasa.pipeline.registry import load_recommender

    server, artifacts, server_log = mlflow_server
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    # The project points at the server through params.yaml (tracking.uri), nothing in the environment.
    project.params.write_text(yaml.safe_dump(synthetic_params_dict(tracking={"experiment": "mufasa", "uri": server})))
    # Run config: the temp project as root; no `dvc commit` (DVC is tested in test_dvc/test_e2e_dagster).
    run_config = tmp_path / "run_config.yaml"
    run_config.write_text(yaml.safe_dump(
        {"resources": {"project": {"config": {"root": str(project.root)}}, "dvc": {"config": {"enabled": False}}}}
    ))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    dagster_env = {
        "DAGSTER_HOME": str(home),
        **{f"DAGSTER_PG_{k}": postgres[f"DAGSTER_PG_{k}"] for k in ("HOST", "PORT", "USERNAME", "PASSWORD")},
        "DAGSTER_PG_DB": postgres["dbs"]["dagster"],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(dagster_env, MLFLOW_DISABLE_TELEMETRY="true", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "orchestration.definitions", "-j", "retrain",
         "-c", str(run_config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, (
        f"retrain failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\nserver:\n{server_log.read_text()[-2000:]}"
    )

    # Dagster: the run lives in PostgreSQL run storage, SUCCESS, with its event log there too.
    for key, value in dagster_env.items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        runs = instance.get_runs()
        assert [(r.job_name, r.status) for r in runs] == [("retrain", DagsterRunStatus.SUCCESS)]
        run_id = runs[0].run_id
    with psycopg2.connect(postgres["url"]("dagster")) as conn, conn.cursor() as cur:
        cur.execute("SELECT pipeline_name, status FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("retrain", "SUCCESS")
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,),
        )
        assert cur.fetchone()[0] >= 9  # every asset of the pipeline

    # MLflow, through the server: mufasa-sal registered, the gate promoted it to champion.
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    champion = client.get_model_version_by_alias("mufasa-sal", "champion")
    assert champion.tags["gate.decision"] == "promoted"
    assert "challenger" in champion.aliases
    experiment = client.get_experiment_by_name("mufasa")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    stage_runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mufasa.pipeline_run` = '{run_id}'"
    )
    assert {"ingest", "train_mfl", "train_sal", "evaluate", "gate"} <= {r.info.run_name for r in stage_runs}

    # MLflow, in PostgreSQL itself: the runs, the registered version and its alias.
    with psycopg2.connect(postgres["url"]("mlflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, status FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
        rows = dict(cur.fetchall())
        assert rows["gate"] == "FINISHED" and rows[f"pipeline-{run_id}"] == "FINISHED"
        cur.execute("SELECT version FROM registered_model_aliases WHERE name = 'mufasa-sal' AND alias = 'champion'")
        assert cur.fetchone() == (int(champion.version),)

    # The model's files went through the server into its artifact destination, and load back from there.
    assert any(p.name == "MLmodel" for p in artifacts.rglob("MLmodel"))
    rec = load_recommender(server, "models:/mufasa-sal@champion")
    items = rec.vocab.item_ids[:5].tolist()
    out = rec.predict(None, pd.DataFrame({"item_ids": [items]}), {"k": 3})
    assert len(out["item_ids"][0]) == 3
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # using_store restored the environment
