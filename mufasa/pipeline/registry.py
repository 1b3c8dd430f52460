"""MLflow registry: the SAL recommender as a pyfunc, the gated ``challenger`` -> ``champion`` promotion, rollback.

The logged model is self-contained and holds no pickled Python object: it is logged from code
(:mod:`mufasa.serving.sal_pyfunc`, MLflow's models-from-code), with the SAL state dict (loaded with
``weights_only=True``), its config, the fused MFL item matrix (the item tower's output) and the item table (ids,
titles) as artifacts and this package as code. Its signature (:data:`mufasa.serving.recommender.SIGNATURE`) is
the request schema the scoring server enforces (``mlflow models serve -m models:/mufasa-sal@champion``).
Each version's description is its model card (:func:`model_card`): data version, metrics, gate decision, report.

Aliases, never stages: every registered version becomes ``challenger``; ``champion`` moves only when the gate
passes (or by hand with ``mufasa promote --version N``). The decision and its reasons are tags on the version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

import mufasa
from mufasa.data.vocab import ItemVocab
from mufasa.evaluation.protocol import Histories
from mufasa.serving.recommender import SIGNATURE, SALRecommender

__all__ = ["CHALLENGER", "CHAMPION", "CrossVocabScorer", "Registered", "SALRecommender", "alias_version",
           "find_candidate", "load_pyfunc", "load_recommender", "log_and_register", "model_card", "promote",
           "record_decision", "using_store"]

CHALLENGER, CHAMPION = "challenger", "champion"


class CrossVocabScorer:
    """Scores the current split with a registered model whose catalogue may differ (e.g. an older champion):
    history items it does not know are dropped, and items it cannot score rank last."""

    def __init__(self, rec: SALRecommender, current: ItemVocab):
        self.rec, self.current = rec, current
        known = np.isin(current.item_ids, rec.vocab.item_ids)
        self.cols_current = np.flatnonzero(known)
        self.cols_rec = rec.vocab.to_index(current.item_ids[known]) - 1

    def score(self, histories: Histories) -> torch.Tensor:
        ids = [self.current.to_ids(histories.user(u)[0]) for u in range(len(histories))]
        ts = [histories.user(u)[1] for u in range(len(histories))]
        own = self.rec.score(self.rec.histories(ids, ts, drop_unknown=True))
        out = torch.full((len(histories), self.current.n_items), float("-inf"))
        out[:, torch.as_tensor(self.cols_current)] = own[:, torch.as_tensor(self.cols_rec)]
        return out


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str


@contextmanager
def using_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model``, which has no client form) at ``uri`` for the block, then restore
    what the environment said before.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to the environment; left in place, every
    later tracker in the process (and its subprocesses) would silently write to this store. On exit the URIs
    are unset (``set_tracking_uri(None)``) and the two variables get their previous values back, so MLflow
    resolves exactly what it resolved before (an explicitly set URI is also in the variable). Public API only.
    """
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


CANDIDATE_TAG = "gate.candidate_key"  # what was gated: digest of the model files, the evaluation and the rule


def find_candidate(tracking_uri: str, name: str, key: str) -> str | None:
    """The version already registered for candidate ``key`` (a gate rerun completes it instead of duplicating)."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client(tracking_uri).search_model_versions(f"name='{name}' and tags.`{CANDIDATE_TAG}`='{key}'")
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    return str(min(int(v.version) for v in found)) if found else None


MODEL_CODE = Path(__file__).resolve().parents[1] / "serving" / "sal_pyfunc.py"


def log_and_register(run_id: str, tracking_uri: str, name: str, model_dir: Path, fused: Path, items: Path,
                     example: pd.DataFrame, tags: dict[str, str] | None = None,
                     description: str | None = None) -> Registered:
    """Log the pyfunc into ``run_id`` (from code: :data:`MODEL_CODE`) and register it under ``name`` as a new
    version carrying ``tags`` and ``description`` (the model card).

    The version is created with its tags and card in one registry call (``MlflowClient.create_model_version``),
    so no version ever exists without its gate decision; aliases are set separately (:func:`record_decision`).
    """
    from mlflow.exceptions import MlflowException

    artifacts = {"model_dir": str(model_dir), "fused": str(fused), "items": str(items)}
    # Inside using_store for the registry call too: MLflow's SQL registry resolves a ``models:/<model_id>``
    # source through the process-wide tracking URI, not the client's (a TODO in its sqlalchemy_store).
    with using_store(tracking_uri):
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                signature=SIGNATURE,
                input_example=(example, {"k": 10}),
                code_paths=[str(Path(mufasa.__file__).parent)],
            )
        client = _client(tracking_uri)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = client.create_model_version(
            name, info.model_uri, run_id=run_id, tags=tags or {}, description=description, model_id=info.model_id
        )
    return Registered(name, str(version.version), run_id)


def model_card(name: str, outcome: dict, results: dict, protocol: dict, datasets: str, run_id: str,
               run_url: str | None) -> str:
    """The Markdown description of a registered version: what it was trained and tested on (``datasets``: the
    data version table), how it scored against the baselines (``results``: ``metrics/eval.json`` models), the
    gate's decision with its reasons, and where the run report is (an artifact of gate run ``run_id``)."""
    from mufasa.evaluation.report import metrics_table

    report = f"runs:/{run_id}/run_report.md"
    lines = [
        f"# {name}: model card",
        "",
        "SAL user encoder over the MFL-fused item vectors; input: a user's history of item ids (and timestamps); "
        "output: the top-k next items.",
        "",
        "## Data version",
        "",
        datasets,
        "## Metrics (test split)",
        "",
        f"Protocol: {', '.join(f'{k}={v}' for k, v in sorted(protocol.items())) or 'see metrics/eval.json'}.",
        "",
        metrics_table(results),
        # The card describes a registered version: a passing decision was acted on (it became champion).
        f"## Gate decision: **{'promoted' if outcome['passed'] else 'refused'}**",
        "",
        f"On {outcome['metric']} (candidate {outcome['candidate']:.4f}); previous champion: "
        f"{outcome.get('compared_with_champion', outcome.get('previous_champion')) or 'none'}.",
        "",
        *[f"- {r}" for r in outcome["reasons"]],
        "",
        "## Run report",
        "",
        f"`{report}` (artifact of the gate run `{run_id}`)" + (f"; run: {run_url}" if run_url else ""),
        "",
    ]
    return "\n".join(lines)


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    return dict(_client(tracking_uri).get_model_version(name, version).tags)


def _missing(exc) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at; None when the model or the alias does not exist. An unreachable registry
    raises (it must never read as "no champion")."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def model_location(tracking_uri: str, uri: str) -> str:
    """Where the files of ``uri`` are: a registry URI (``models:/name@alias``, ``models:/name/3``) becomes its
    version's download URI, asked of the registry at ``tracking_uri``; anything else is returned as is.

    Resolved here with an explicit client because MLflow 3.17's ``download_artifacts(registry_uri=...)`` drops
    the registry URI for ``models:/`` URIs and asks the process-wide registry instead."""
    import re

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        return uri
    name, alias, number = match.groups()
    client = _client(tracking_uri)
    version = client.get_model_version_by_alias(name, alias).version if alias else number
    return client.get_model_version_download_uri(name, str(version))


def _download(tracking_uri: str, uri: str, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=model_location(tracking_uri, uri), dst_path=dst, tracking_uri=tracking_uri,
        registry_uri=tracking_uri,
    ))


def pickled_artifacts(local: Path) -> dict[str, str] | None:
    """The artifact paths of a version registered before the recommender was logged from code (a pickled
    ``python_model.pkl`` of the code of its day, which later code may not unpickle); ``None`` for a current one."""
    from mlflow.models import Model

    flavor = Model.load(str(local)).flavors.get("python_function", {})
    if "model_code_path" in flavor or "python_model" not in flavor:
        return None
    return {name: str(local / spec["path"]) for name, spec in flavor.get("artifacts", {}).items()}


def load_pyfunc(tracking_uri: str, uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load ``uri`` (``models:/name@alias``, ``models:/name/3``, ``runs:/...``) from the store at
    ``tracking_uri`` as MLflow serves it: ``predict`` enforces the signature. Downloaded with explicit URIs
    (no process-wide MLflow state), then loaded from the local copy. A pickled version of older code is refused
    with a clear ``MlflowException`` instead of a failed unpickling."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="mufasa-model-") as tmp:
        local = _download(tracking_uri, uri, tmp)
        if pickled_artifacts(local) is not None:
            raise MlflowException.invalid_parameter_value(
                f"{uri} was registered before the recommender was logged from code: it is a pickled "
                "python_model.pkl of older code, which this code cannot load or serve. Point the alias at a version "
                "registered since (`mufasa promote --version N`) or register one (`mufasa stage gate`)."
            )
        return mlflow.pyfunc.load_model(str(local))  # load_context reads every artifact into memory


def load_recommender(tracking_uri: str, uri: str) -> SALRecommender:
    """The :class:`SALRecommender` behind ``uri``, for in-process scoring of whole splits (the gate's champion
    re-evaluation); requests from people go through :func:`load_pyfunc` and its schema.

    A version pickled by older code is rebuilt from its own weights and tables (never unpickled), so the gate
    can still compare a candidate with a champion registered before models-from-code."""
    import tempfile
    from types import SimpleNamespace

    with tempfile.TemporaryDirectory(prefix="mufasa-model-") as tmp:
        local = _download(tracking_uri, uri, tmp)
        legacy = pickled_artifacts(local)
        if legacy is None:
            return mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
        rec = SALRecommender()
        rec.load_context(SimpleNamespace(artifacts=legacy))
        return rec


def record_decision(tracking_uri: str, name: str, version: str, promote: bool) -> None:
    """Point ``challenger`` (and, when promoted, ``champion``) at ``version``; idempotent, so a rerun after a
    failure part-way completes it. ``champion`` moves last: until it does, the previous champion serves."""
    client = _client(tracking_uri)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)


def promote(tracking_uri: str, name: str, version: str, reason: str = "manual") -> str | None:
    """Point ``champion`` at ``version`` (rollback or manual promotion); returns the previous champion."""
    client = _client(tracking_uri)
    client.get_model_version(name, version)  # raises a clear MlflowException if it does not exist
    previous = alias_version(tracking_uri, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "gate.manual_promotion", f"{reason} (previous champion: {previous})")
    return previous
