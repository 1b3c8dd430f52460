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
- output columns ``item_ids``, ``scores`` and ``titles`` of the top-k items, best first; with param ``explain``
  (default false) also ``explanation``, a JSON string: the past blocks of the history that the selection branch
  weighted most at the last event (``blocks``: item ids, titles, first/last timestamp, weight, layer) and the
  branch gates per layer (``gates``: window, compressed, selected, mean over heads) — see :meth:`explain`.

Requests the schema lets through but the model cannot answer (unknown items, no known item left, mismatched
timestamps, ``k`` < 1) raise ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: the scoring server answers
400 with the message, never a 500 with a stack trace.
"""

from __future__ import annotations

import json
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
        ColSpec(DataType.string, "explanation", required=False),
    ]),
    params=ParamSchema([ParamSpec("k", DataType.long, 10), ParamSpec("drop_unknown", DataType.boolean, False),
                        ParamSpec("explain", DataType.boolean, False)]),
)
EXPLAINED_BLOCKS = 3  # past blocks an explanation lists

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
        out = pd.DataFrame(
            {
                "item_ids": [self.vocab.to_ids(row + 1).tolist() for row in rows],
                "scores": [row.tolist() for row in top.values.double().numpy()],
                "titles": [self.titles[row].tolist() for row in rows],
            }
        )
        if params.get("explain", False):
            out["explanation"] = [json.dumps(e) for e in self.explain(histories, recommended=rows + 1)]
        return out

    def explain(self, histories: Histories, n_blocks: int = EXPLAINED_BLOCKS,
                recommended: np.ndarray | None = None) -> list[dict]:
        """Per history: the ``n_blocks`` past blocks the selection branch weighted most at the last event (over
        layers and heads, each block at its best weight) and the branch gates of every layer (mean over heads).
        With ``recommended`` (rows of item indices), ``because`` says for each recommended item which listed
        block holds the item most like it (cosine of the model's item embeddings), or -1 when none is listed.

        The blocks are those :meth:`~mufasa.models.sal.SALModel.explain_last` reports for the events the model
        scores (the last ``max_len``); a block's weight is its share of the selection softmax over all candidate
        blocks. A dense-attention model has no selection branch: a 400.
        """
        from mufasa.training.sal_trainer import pad_sequences

        model = self.model
        if model.config.attention != "sparse":
            raise _bad_request("this model uses dense attention: it has no selection branch to explain")
        device = model.position.weight.device
        explained = []
        for u in range(len(histories)):
            items, stamps = histories.user(u)
            batch = pad_sequences(histories.offsets, histories.items, histories.timestamps, np.array([u]),
                                  model.config.max_len, with_targets=False).to(device)
            first = len(items) - batch.items.shape[1]  # history index of the first scored event
            layers = model.explain_last(batch.items, batch.timestamps)
            best: dict[tuple[int, int], tuple[float, int]] = {}
            for layer_no, layer in enumerate(layers):
                starts, ends = layer["block_start"][0].cpu(), layer["block_end"][0].cpu()
                weights = layer["block_weight"][0].cpu()
                for start, end, weight in zip(starts.flatten().tolist(), ends.flatten().tolist(),
                                              weights.flatten().tolist()):
                    if start >= 0 and weight > best.get((start, end), (-1.0, 0))[0]:
                        best[(start, end)] = (weight, layer_no)
            blocks = []
            for (start, end), (weight, layer_no) in sorted(best.items(), key=lambda kv: -kv[1][0])[:n_blocks]:
                idx = self.vocab.to_ids(items[first + start : first + end]).tolist()
                blocks.append({
                    "item_ids": idx,
                    "titles": self.titles[items[first + start : first + end] - 1].tolist(),
                    "first_timestamp": int(stamps[first + start]),
                    "last_timestamp": int(stamps[first + end - 1]),
                    "weight": round(float(weight), 4),
                    "layer": layer_no,
                })
            gates = [dict(zip(("window", "compressed", "selected"),
                              [round(float(g), 4) for g in layer["gates"][0].mean(dim=0).tolist()]))
                     for layer in layers]
            entry = {"blocks": blocks, "gates": gates}
            if recommended is not None:
                entry["because"] = self._closest_block(recommended[u], [
                    items[first + start : first + end]
                    for (start, end), _ in sorted(best.items(), key=lambda kv: -kv[1][0])[:n_blocks]])
            explained.append(entry)
        return explained

    def _closest_block(self, recommended: np.ndarray, blocks: list[np.ndarray]) -> list[int]:
        if not blocks:
            return [-1] * len(recommended)
        with torch.no_grad():
            table = torch.nn.functional.normalize(self.model.item_embeddings().float().cpu(), dim=1)
        rec = table[torch.as_tensor(recommended, dtype=torch.long)]  # (k, D)
        best = torch.stack([(rec @ table[torch.as_tensor(b, dtype=torch.long)].T).max(dim=1).values
                            for b in blocks], dim=1)  # (k, n_blocks)
        return best.argmax(dim=1).tolist()
