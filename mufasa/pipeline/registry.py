"""MLflow registry: the SAL recommender as a pyfunc, the gated ``challenger`` -> ``champion`` promotion, rollback.

The logged model is self-contained: the SAL state dict (loaded with ``weights_only=True``, never unpickled
code), its config, the fused MFL item matrix (the item tower's output) and the item table (ids, titles), plus
this package as code. Input: a DataFrame with ``item_ids`` (list of item ids, oldest first) and optionally
``timestamps`` (Unix seconds); param ``k``. Output: ``item_ids`` and ``scores`` of the top-k next items.

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

CHALLENGER, CHAMPION = "challenger", "champion"


class SALRecommender(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: histories of item ids in, top-k item ids out."""

    def load_context(self, context) -> None:
        from mufasa.pipeline.sal_model import SALScorer, load_model

        art = context.artifacts
        fused = np.load(art["fused"], allow_pickle=False)
        self.model = load_model(Path(art["model_dir"]), fused if fused.shape[1] > 0 else None)
        items = pd.read_parquet(art["items"])
        self.vocab = ItemVocab(items["item_id"].to_numpy())
        self.titles = items["title"].astype(str).to_numpy()
        self.scorer = SALScorer(self.model)

    def histories(self, item_ids: list, timestamps: list | None = None, *, drop_unknown: bool = False) -> Histories:
        seqs, stamps = [], []
        for i, ids in enumerate(item_ids):
            ids = np.asarray(ids, dtype=np.int64)
            ts = np.asarray(timestamps[i], dtype=np.int64) if timestamps is not None else np.arange(len(ids))
            if drop_unknown:
                known = np.isin(ids, self.vocab.item_ids)
                ids, ts = ids[known], ts[known]
            seqs.append(self.vocab.to_index(ids))  # KeyError names unknown ids
            stamps.append(ts)
        lengths = [len(s) for s in seqs]
        if min(lengths, default=1) == 0:
            raise ValueError("every history needs at least one known item")
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        return Histories(
            np.arange(len(seqs), dtype=np.int64), offsets, np.concatenate(seqs), np.concatenate(stamps)
        )

    def score(self, histories: Histories) -> torch.Tensor:
        return self.scorer.score(histories)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        ts = model_input["timestamps"].tolist() if "timestamps" in model_input else None
        scores = self.score(self.histories(model_input["item_ids"].tolist(), ts))
        top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1)
        return pd.DataFrame(
            {
                "item_ids": [self.vocab.to_ids(row + 1).tolist() for row in top.indices.numpy()],
                "scores": [row.tolist() for row in top.values.numpy()],
            }
        )


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
    """Point MLflow's fluent API (log_model, models:/ URIs) at ``uri`` for the block, then restore everything.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to the environment; left in place, every
    later tracker in the process (and its subprocesses) would silently write to this store.
    """
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
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


def log_and_register(run_id: str, tracking_uri: str, name: str, model_dir: Path, fused: Path, items: Path,
                     example: pd.DataFrame, tags: dict[str, str] | None = None) -> Registered:
    """Log the pyfunc into ``run_id`` and register it under ``name`` as a new version carrying ``tags``.

    The version is created with its tags in one registry call (``mlflow.register_model(..., tags=...)``), so no
    version ever exists without its gate decision; aliases are set separately (:func:`record_decision`).
    """
    from mlflow.models import infer_signature

    artifacts = {"model_dir": str(model_dir), "fused": str(fused), "items": str(items)}
    with using_store(tracking_uri), mlflow.start_run(run_id=run_id):
        rec = SALRecommender()
        rec.load_context(type("Ctx", (), {"artifacts": artifacts})())
        output = rec.predict(None, example, {"k": 10})
        signature = infer_signature(example, output, params={"k": 10})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=rec,
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            code_paths=[str(Path(mufasa.__file__).parent)],
        )
        version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    return Registered(name, str(version.version), run_id)


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


def load_recommender(tracking_uri: str, uri: str) -> SALRecommender:
    with using_store(tracking_uri):
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()


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
