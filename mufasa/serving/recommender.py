"""The SAL recommender as an MLflow pyfunc: histories of item ids in, the top-k next items out.

Built by MLflow from :mod:`mufasa.serving.sal_pyfunc` (models from code) and filled by :meth:`load_context` from
the logged artifacts: the SAL state dict (loaded with ``weights_only=True``), its config, the fused MFL item
matrix and the item table (ids, titles).

The request is a history, not a user id: SAL is a sequence model, so it serves any user — one who arrived after
training included — from the events the caller sends (``mufasa recommend --user ID`` reads them from the
ingested interactions; ``--payload`` prints the request it sends). The schema (:data:`SIGNATURE`):

- input columns ``item_ids`` (list of item ids, oldest first; required) and ``timestamps`` (Unix seconds, same
  length; optional, positions are used when absent);
- params ``k`` (how many items, default 10) and ``drop_unknown`` (default false: ids outside the model's
  catalogue are an error; true: they are skipped, as ``mufasa recommend`` does for items added since training);
- output columns ``item_ids``, ``scores`` and ``titles`` of the top-k items, best first.

Requests the schema lets through but the model cannot answer (unknown items, no known item left, mismatched
timestamps, ``k`` < 1) raise ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: the scoring server answers
400 with the message, never a 500 with a stack trace.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from mufasa.data.vocab import ItemVocab
from mufasa.evaluation.protocol import Histories

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec(Array(DataType.long), "item_ids"),
        ColSpec(Array(DataType.long), "timestamps", required=False),
    ]),
    outputs=Schema([
        ColSpec(Array(DataType.long), "item_ids"),
        ColSpec(Array(DataType.double), "scores"),
        ColSpec(Array(DataType.string), "titles"),
    ]),
    params=ParamSchema([ParamSpec("k", DataType.long, 10), ParamSpec("drop_unknown", DataType.boolean, False)]),
)

_SHOWN = 10  # unknown ids named in an error


def _bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


class SALRecommender(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: histories of item ids in, top-k item ids (with scores and titles) out."""

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
        """The protocol's :class:`Histories` of ``item_ids`` (rows of item ids); bad rows raise a 400-mapped
        ``MlflowException`` naming the row."""
        seqs, stamps = [], []
        for i, ids in enumerate(item_ids):
            ids = np.asarray(ids if ids is not None else [], dtype=np.int64)
            row_ts = timestamps[i] if timestamps is not None else None
            ts = np.asarray(row_ts, dtype=np.int64) if row_ts is not None else np.arange(len(ids), dtype=np.int64)
            if len(ts) != len(ids):
                raise _bad_request(f"row {i}: {len(ids)} item_ids but {len(ts)} timestamps (one per item)")
            known = np.isin(ids, self.vocab.item_ids)
            if drop_unknown:
                ids, ts = ids[known], ts[known]
            elif not known.all():
                unknown = ids[~known]
                raise _bad_request(
                    f"row {i}: {len(unknown)} item id(s) not in the model's catalogue of {len(self.vocab.item_ids)} "
                    f"items: {unknown[:_SHOWN].tolist()}{' ...' if len(unknown) > _SHOWN else ''} "
                    "(send params {\"drop_unknown\": true} to skip them)"
                )
            if len(ids) == 0:
                raise _bad_request(f"row {i}: the history holds no item the model knows; send at least one")
            seqs.append(self.vocab.to_index(ids))
            stamps.append(ts)
        if not seqs:
            raise _bad_request("the request holds no history (no rows)")
        offsets = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
        return Histories(
            np.arange(len(seqs), dtype=np.int64), offsets, np.concatenate(seqs), np.concatenate(stamps)
        )

    def score(self, histories: Histories) -> torch.Tensor:
        return self.scorer.score(histories)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", 10))
        if k < 1:
            raise _bad_request(f"param k must be at least 1, got {k}")
        ts = model_input["timestamps"].tolist() if "timestamps" in model_input else None
        histories = self.histories(
            model_input["item_ids"].tolist(), ts, drop_unknown=bool(params.get("drop_unknown", False))
        )
        scores = self.score(histories)
        top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1)
        rows = top.indices.numpy()  # column c scores the item of items.parquet row c (index c + 1)
        return pd.DataFrame(
            {
                "item_ids": [self.vocab.to_ids(row + 1).tolist() for row in rows],
                "scores": [row.tolist() for row in top.values.double().numpy()],
                "titles": [self.titles[row].tolist() for row in rows],
            }
        )
