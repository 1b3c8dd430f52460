"""MLflow tracking adapter: one parent run per pipeline run, one nested run per stage.

The store defaults to the project's ``mlflow/`` folder (SQLite backend ``mlflow/mlflow.db``, artifacts under
``mlflow/artifacts``); ``params.yaml`` ``tracking.uri`` or, above it, ``MLFLOW_TRACKING_URI`` points it at a shared
MLflow server (``http://...``) or a database (``postgresql://...``). A pipeline run is identified by a
key (the Dagster run id, or ``MUFASA_PIPELINE_RUN`` for the CLI/DVC path), stored as the tag
``mufasa.pipeline_run`` on the parent run, so every stage of one pipeline run nests under the same parent even
when the stages run in separate processes (as under ``dvc repro``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mufasa.config import TrackingConfig

PIPELINE_TAG = "mufasa.pipeline_run"
STAGE_TAG = "mufasa.stage"
ROLE_TAG = "mufasa.role"  # "pipeline" on parent runs, "stage" on nested ones


def _is_main_rank() -> bool:
    """False in torchrun workers other than rank 0 (``RANK``): a DDP stage is tracked once, by rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


_DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}  # SQLAlchemy stores, e.g. postgresql+psycopg2


def is_database_uri(uri: str) -> bool:
    """True for a direct SQLAlchemy backend store (``sqlite:///``, ``postgresql://``, ...), not a server."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in _DATABASE_SCHEMES


def project_tracking_config(root: Path) -> TrackingConfig:
    """The ``tracking`` section of ``<root>/params.yaml`` (defaults when the file or the section is absent).

    Only that section is read, so callers that have no parsed :class:`~mufasa.config.Params` at hand (``mufasa
    promote``, the Dagster resource) still honour ``tracking.uri``.
    """
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from mufasa.config import TrackingConfig

    path = Path(root) / "params.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    section = raw.get("tracking") if isinstance(raw, dict) else None
    try:
        return TypeAdapter(TrackingConfig).validate_python(section or {})
    except ValidationError as exc:
        raise ValueError(f"{path}: tracking: {exc}") from exc


def store_root(root: Path) -> Path:
    """The project whose local store (``mlflow/``) a run in ``root`` logs to: ``root`` itself, except in a DVC
    experiment executor's copy.

    ``dvc exp run --temp`` and queued experiments (``--queue`` + ``dvc queue start``) run the stages in a copy of
    the project under ``<project>/.dvc/tmp/exps/<tmp>/``, which holds no ``mlflow/`` (git-ignored) and is deleted
    afterwards; DVC passes the original project's root to every stage as ``DVC_ROOT`` (it overrides the
    executor's own root with the parent repo's: ``dvc/repo/experiments/queue/base.py``). Runs there belong in the
    original project's store, so for a ``root`` inside ``<DVC_ROOT>/.dvc/tmp/exps/`` this is ``DVC_ROOT``. Any
    other ``DVC_ROOT`` (``dvc repro``, a workspace ``dvc exp run``: the root itself) changes nothing.
    """
    root = Path(root).resolve()
    parent = os.environ.get("DVC_ROOT")
    if parent:
        parent_root = Path(parent).resolve()
        if root.is_relative_to(parent_root / ".dvc" / "tmp" / "exps") and (parent_root / "dvc.yaml").is_file():
            return parent_root
    return root


def default_tracking_uri(root: Path, config: TrackingConfig | None = None) -> str:
    """The project's MLflow store, first found of:

    1. ``MLFLOW_TRACKING_URI`` (the environment: one shell, one CI job);
    2. ``tracking.uri`` of ``config`` (default: read from ``<root>/params.yaml``): a server or a database URI;
    3. the project's SQLite store ``mlflow/mlflow.db`` under :func:`store_root` (``root``, or the original
       project when ``root`` is a DVC temporary/queued experiment's copy).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    configured = (config if config is not None else project_tracking_config(root)).uri
    if configured:
        return configured
    return f"sqlite:///{store_root(root) / 'mlflow' / 'mlflow.db'}"


class TrackingUnavailable(RuntimeError):
    """The tracking server or database cannot be reached (after bounded retries), or a call to it failed."""


def tracking_timeout(config: TrackingConfig | None = None) -> float:
    """Seconds of retries before a tracking outage fails a stage: ``MUFASA_TRACKING_TIMEOUT`` or
    ``tracking.timeout_s`` (default 30)."""
    raw = os.environ.get("MUFASA_TRACKING_TIMEOUT")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise ValueError(f"MUFASA_TRACKING_TIMEOUT must be a number of seconds, got {raw!r}") from None
    return float(config.timeout_s) if config is not None else 30.0


def bound_mlflow_http(timeout: float) -> None:
    """Bound MLflow's own HTTP retries (its defaults retry for minutes) unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout))))


def redact(uri: str) -> str:
    """``uri`` without a password (``user:***@host``)."""
    import re

    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the store could not be reached, not that a request was bad."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        name = type(exc).__name__
        if name in {"OperationalError", "InterfaceError"}:  # SQLAlchemy / DB-API: server down, refused
            return True
        text = str(exc)
        if any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def probe(uri: str, timeout: float) -> None:
    """Reach the store of ``uri`` within ``timeout`` seconds (retries with backoff), or raise
    :class:`TrackingUnavailable` naming it. A local SQLite store needs no probe."""
    import time

    if not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return
    start, attempt, delay, last = time.monotonic(), 0, 0.5, None
    while True:
        attempt += 1
        left = timeout - (time.monotonic() - start)
        try:
            if uri.startswith(("http://", "https://")):
                import requests

                requests.get(uri.rstrip("/") + "/health", timeout=max(0.5, min(5.0, left)))
            else:
                import sqlalchemy

                engine = sqlalchemy.create_engine(uri, connect_args=_connect_timeout(uri, left))
                try:
                    with engine.connect():
                        pass
                finally:
                    engine.dispose()
            return
        except Exception as exc:  # noqa: BLE001 - every failure to connect is an outage here
            last = exc
        elapsed = time.monotonic() - start
        if elapsed + delay > timeout:
            break
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    cause = f"{type(last).__name__}: {str(last).splitlines()[0][:200] if str(last) else ''}"
    raise TrackingUnavailable(
        f"the MLflow tracking store {redact(uri)} cannot be reached ({cause}); gave up after {attempt} attempt(s) "
        f"in {time.monotonic() - start:.1f} s (limit {timeout:g} s: MUFASA_TRACKING_TIMEOUT or tracking.timeout_s). "
        "Start the server or database (README \"Shared services\"), or unset MLFLOW_TRACKING_URI and tracking.uri "
        "to use the project's own ./mlflow store."
    ) from last


def _connect_timeout(uri: str, left: float) -> dict:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    seconds = max(1, int(min(5.0, left)))
    return {"connect_timeout": seconds} if scheme in {"postgresql", "mysql"} else {}


def new_pipeline_key() -> str:
    return os.environ.get("MUFASA_PIPELINE_RUN") or f"cli-{uuid.uuid4().hex[:12]}"


@dataclass
class StageRun:
    """What a caller gets inside :meth:`Tracker.stage_run`: logs to one run through an explicit client.

    A failed logging call never stops the stage: the first failure is kept in ``tracking_error`` (with a warning),
    later calls are skipped, and the caller reports it once the stage's outputs are safely written.
    """

    run_id: str
    parent_run_id: str
    experiment_id: str
    url: str | None
    tracking_uri: str = ""
    tracking_error: str | None = None

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _guarded(self, what: str, call) -> None:
        if self.tracking_error is not None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - tracking must never take the stage's work down with it
            self.tracking_error = f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            import warnings

            warnings.warn(f"MLflow {self.tracking_error}; the stage goes on without tracking", stacklevel=3)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if batch:
            self._guarded("logging metrics", lambda: self._client().log_batch(self.run_id, metrics=batch))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, _short(v)) for k, v in _flatten(params).items()]
        if batch:
            self._guarded("logging params", lambda: self._client().log_batch(self.run_id, params=batch))

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self._guarded(f"logging {artifact_file}", lambda: self._client().log_dict(self.run_id, obj, artifact_file))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._guarded(
            f"logging {Path(path).name}",
            lambda: self._client().log_artifact(self.run_id, str(path), artifact_path=artifact_path),
        )

    def log_inputs(self, datasets: list) -> None:
        """Record ``datasets`` (:class:`mlflow.entities.DatasetInput`) as the run's dataset inputs."""
        if datasets:
            self._guarded("logging dataset inputs", lambda: self._client().log_inputs(self.run_id, datasets=datasets))

    def set_tags(self, tags: dict[str, str]) -> None:
        def call():
            client = self._client()
            for k, v in tags.items():
                client.set_tag(self.run_id, k, str(v))

        self._guarded("setting tags", call)


def metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / : `` and spaces: ``ndcg@10`` -> ``ndcg_at_10``."""
    return name.replace("@", "_at_")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text[:6000]  # MLflow caps param values


def source_tags(root: Path | None) -> dict[str, str]:
    """MLflow's source tags for a run of the project at ``root``: the git commit (``mlflow.source.git.commit``,
    what the MLflow UI links), whether tracked files differ from it (``mufasa.git.dirty``), and the entry point.
    Outside a git checkout (or without git) only the entry point is recorded."""
    import subprocess

    tags = {"mlflow.source.type": "PROJECT", "mlflow.source.name": "mufasa"}
    if root is None:
        return tags

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return tags
    status = git("status", "--porcelain", "--untracked-files=no")
    tags["mlflow.source.git.commit"] = commit.strip()
    tags["mufasa.git.dirty"] = "unknown" if status is None else str(bool(status.strip())).lower()
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch.strip() != "HEAD":
        tags["mlflow.source.git.branch"] = branch.strip()
    return tags


class Tracker:
    """Opens MLflow runs in the configured store; one instance per process is enough."""

    def __init__(
        self, tracking_uri: str, experiment: str = "mufasa", artifact_root: Path | None = None,
        timeout: float | None = None, root: Path | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.root = root  # the project: its git commit and dirty state tag every run
        self.experiment = experiment
        self.timeout = tracking_timeout() if timeout is None else timeout
        if artifact_root is None and tracking_uri.startswith("sqlite:///"):
            # Local SQLite store: artifacts beside the DB, never in ./mlruns of whatever the cwd happens to be.
            artifact_root = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
        self.artifact_root = artifact_root

    @classmethod
    def for_project(cls, root: Path, experiment: str = "mufasa", config: TrackingConfig | None = None) -> Tracker:
        """The store of :func:`default_tracking_uri`; ``config`` defaults to ``<root>/params.yaml`` ``tracking``.

        A database URI other than SQLite (e.g. ``postgresql://``) keeps new experiments' artifacts in
        ``tracking.artifact_root`` (default ``<root>/mlflow/artifacts``), never in ``./mlruns`` of the cwd; a
        server (``http://``) stores them where it was told to (``mlflow server --artifacts-destination``).
        """
        config = config if config is not None else project_tracking_config(root)
        uri = default_tracking_uri(root, config)
        artifact_root = None
        if is_database_uri(uri):
            # relative to the original project in a DVC experiment's copy (the copy is deleted afterwards)
            if config.artifact_root:
                artifact_root = (store_root(root) / config.artifact_root).resolve()  # an absolute path stays
            elif not uri.startswith("sqlite:"):
                artifact_root = (store_root(root) / "mlflow" / "artifacts").resolve()
        return cls(uri, experiment, artifact_root, timeout=tracking_timeout(config), root=Path(root))

    def _experiment_id(self) -> str:
        from mlflow import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root is not None else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _parent_run(self, experiment_id: str, pipeline_key: str) -> str:
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_key}' and tags.`{ROLE_TAG}` = 'pipeline'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        run = client.create_run(
            experiment_id, run_name=f"pipeline-{pipeline_key}",
            tags={PIPELINE_TAG: pipeline_key, ROLE_TAG: "pipeline", **source_tags(self.root)},
        )
        return run.info.run_id

    def _url(self, experiment_id: str, run_id: str) -> str | None:
        server = self.tracking_uri.rstrip("/") if self.tracking_uri.startswith(("http://", "https://")) else None
        base = os.environ.get("MUFASA_MLFLOW_UI_URL") or server or "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"

    @contextmanager
    def stage_run(self, stage: str, pipeline_key: str, tags: dict[str, str] | None = None) -> Iterator[StageRun]:
        """A nested MLflow run for ``stage`` under the parent run of ``pipeline_key``.

        The run ends FINISHED, or FAILED with the exception text as a tag when the body raises. In a torchrun
        worker other than rank 0 it is a no-op run (nothing is logged).
        """
        if not _is_main_rank():
            yield _NullRun("", "", "", None)
            return
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        # Fail fast, before any work: an unreachable store is retried with backoff for at most self.timeout s.
        bound_mlflow_http(self.timeout)
        probe(self.tracking_uri, self.timeout)
        try:
            experiment_id = self._experiment_id()
            parent = self._parent_run(experiment_id, pipeline_key)
            client = MlflowClient(self.tracking_uri)
            run = client.create_run(
                experiment_id,
                run_name=stage,
                tags={
                    MLFLOW_PARENT_RUN_ID: parent,
                    PIPELINE_TAG: pipeline_key,
                    ROLE_TAG: "stage",
                    STAGE_TAG: stage,
                    **source_tags(self.root),
                    **(tags or {}),
                },
            )
        except Exception as exc:
            if is_outage(exc):
                raise TrackingUnavailable(
                    f"the MLflow tracking store {redact(self.tracking_uri)} failed while opening the run of stage "
                    f"'{stage}' ({type(exc).__name__}); the stage did not start"
                ) from exc
            raise
        handle = StageRun(
            run.info.run_id, parent, experiment_id, self._url(experiment_id, run.info.run_id), self.tracking_uri
        )

        def quietly(call) -> None:  # closing the run must not hide the stage's own outcome
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                if handle.tracking_error is None:
                    handle.tracking_error = f"closing the run failed: {type(exc).__name__}"

        try:
            yield handle
        except BaseException as exc:
            quietly(lambda: client.set_tag(run.info.run_id, "mufasa.failure", f"{type(exc).__name__}: {exc}"[:5000]))
            quietly(lambda: client.set_terminated(run.info.run_id, status="FAILED"))
            quietly(lambda: client.set_tag(parent, "mufasa.failed_stage", stage))
            quietly(lambda: client.set_terminated(parent, status="FAILED"))
            raise
        else:
            status = "FINISHED" if handle.tracking_error is None else "FAILED"
            quietly(lambda: client.set_terminated(run.info.run_id, status=status))

            def close_parent():
                # The parent reflects the latest stage: a later failure turns it FAILED again.
                if client.get_run(parent).data.tags.get("mufasa.failed_stage") is None:
                    client.set_terminated(parent, status="FINISHED")

            quietly(close_parent)

    def record_pipeline_failure(self, pipeline_key: str, reason: str) -> str:
        """Mark the parent run of ``pipeline_key`` FAILED with ``reason`` (created if no stage ever started)."""
        if not _is_main_rank():
            return ""
        from mlflow import MlflowClient


        experiment_id = self._experiment_id()
        parent = self._parent_run(experiment_id, pipeline_key)
        client = MlflowClient(self.tracking_uri)
        client.set_tag(parent, "mufasa.failure", reason[:5000])
        client.set_terminated(parent, status="FAILED")
        return parent

    def log_stage_result(self, run: StageRun, result) -> None:
        """Log a :class:`~mufasa.pipeline.result.StageResult`: params, metrics, info as JSON, artifacts, and the
        tables the stage read as dataset inputs with their DVC hashes (:mod:`mufasa.pipeline.datasets`)."""
        run.log_params(result.params)
        if self.root is not None and run.run_id:
            from mufasa.pipeline.datasets import dataset_input, stage_datasets
            from mufasa.pipeline.paths import ProjectPaths

            versions = stage_datasets(result.stage, ProjectPaths(self.root))
            run.log_inputs([dataset_input(v, self.root) for v in versions])
        run.log_metrics(result.metrics)
        if result.info:
            run.log_dict(json.loads(json.dumps(result.info, default=str)), f"{result.stage}_info.json")
        for path in result.artifacts:
            if Path(path).exists():
                run.log_artifact(Path(path))


class NullTracker(Tracker):
    """Tracks nothing (tests, or ``--no-track``): same interface, no store."""

    def __init__(self) -> None:
        super().__init__("", "none")

    @contextmanager
    def stage_run(self, stage: str, pipeline_key: str, tags: dict[str, str] | None = None) -> Iterator[StageRun]:
        yield _NullRun("", "", "", None)

    def log_stage_result(self, run: StageRun, result) -> None:
        return None

    def record_pipeline_failure(self, pipeline_key: str, reason: str) -> str:
        return ""


class _NullRun(StageRun):
    def log_metrics(self, metrics, step=None):  # noqa: D102
        return None

    def log_params(self, params):  # noqa: D102
        return None

    def log_dict(self, obj, artifact_file):  # noqa: D102
        return None

    def log_artifact(self, path, artifact_path=None):  # noqa: D102
        return None

    def set_tags(self, tags):  # noqa: D102
        return None

    def log_inputs(self, datasets):  # noqa: D102
        return None
