"""SAL models as the pipeline trains, saves, loads and scores them — shared by ``train_sal``, ``evaluate``,
``gate``, serving, the benchmark and the tuner (no stage owns it).

:func:`load_inputs` reads the split (``data/sequences/``), the item vocabulary (``data/raw/items.parquet``) and
the fused vectors (``data/fused/items.npy``; zero-width when MFL is off, then SAL runs on ID embeddings alone).
:func:`fit` trains any model of the SAL contract (MUFASA, an ablation, the reference SASRec) with early stopping
on validation NDCG@10; :func:`save_model` / :func:`load_model` write and rebuild ``models/sal/``;
:class:`SALScorer` is the evaluation protocol's scorer over a model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mufasa.data.io import atomic_path, load_npy, load_tensors, read_json
from mufasa.evaluation.protocol import EvalData, Histories, load_eval_data
from mufasa.models.sal import SALConfig, SALModel
from mufasa.pipeline.params import sal_configs, sasrec_configs
from mufasa.pipeline.paths import ProjectPaths
from mufasa.training import distributed
from mufasa.training.sal_trainer import score_users, train_sal

__all__ = ["SALInputs", "SALScorer", "fit", "load_inputs", "load_model", "save_model", "seqs_of", "train_sasrec",
           "train_variant"]


@dataclass(frozen=True)
class SALInputs:
    data: EvalData
    fused: np.ndarray | None  # (N, F) or None when MFL is off
    valid_targets: np.ndarray  # (U_train,) validation target index per training user, 0 = none


def load_inputs(paths: ProjectPaths) -> SALInputs:
    data = load_eval_data(paths.sequences_dir, paths.raw_items)
    fused = load_npy(paths.fused_items) if paths.fused_items.is_file() else None
    if fused is not None and fused.shape[0] != data.n_items:
        raise ValueError(f"{paths.fused_items} has {fused.shape[0]} rows for {data.n_items} items: rerun train_mfl")
    if fused is not None and fused.shape[1] == 0:
        fused = None
    row_of = pd.Series(np.arange(len(data.train)), index=data.train.user_ids)
    targets = np.zeros(len(data.train), dtype=np.int64)
    targets[row_of.loc[data.valid.histories.user_ids].to_numpy()] = data.valid.targets
    return SALInputs(data, fused, targets)


def seqs_of(h: Histories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return h.offsets, h.items, h.timestamps


def train_variant(params, inputs: SALInputs, root: Path, variant: str, on_metrics=None, **overrides):
    """Train one SAL variant (MUFASA, or an ablation: ``overrides`` replace fields of ``train_sal.model``) with
    ``train_sal``'s objective and budget. The fused vectors feed the model unless its ``item_feature_dim`` is 0."""
    overrides = dict(overrides)
    width = overrides.pop("item_feature_dim", 0 if inputs.fused is None else inputs.fused.shape[1])
    if width == 0:  # MFL off: ID embeddings are the items' only representation
        overrides["use_id_embedding"] = True
    model_cfg, train_cfg = sal_configs(params, n_items=inputs.data.n_items, item_feature_dim=width, **overrides)
    fused = inputs.fused if width > 0 else None
    result = fit(model_cfg, train_cfg, inputs, root, variant, fused, on_metrics)
    return model_cfg, train_cfg, result


def train_sasrec(params, inputs: SALInputs, root: Path, on_metrics=None, variant: str = "sasrec", **overrides):
    """Train the reference SASRec (``evaluate.sasrec``: ID-only, RecBole's settings) on the same split;
    ``overrides`` replace fields of its model config (e.g. ``seen_bias=True``)."""
    model_cfg, train_cfg = sasrec_configs(params, n_items=inputs.data.n_items)
    model_cfg = dataclasses.replace(model_cfg, **overrides)
    result = fit(model_cfg, train_cfg, inputs, root, variant, None, on_metrics)
    return model_cfg, train_cfg, result


def fit(model_cfg, train_cfg, inputs: SALInputs, root: Path, variant: str, fused=None, on_metrics=None):
    """Train ``model_cfg`` (SAL or SASRec) on the training histories, early-stopped on validation NDCG@10."""
    ckpt = ProjectPaths(root).checkpoint_dir("train_sal", variant)
    result = train_sal(
        model_cfg,
        train_cfg,
        seqs_of(inputs.data.train),
        inputs.valid_targets,
        item_features=fused,
        checkpoint_dir=ckpt,
        on_metrics=on_metrics,
    )
    if distributed.is_main():  # under DDP the checkpoint is rank 0's
        shutil.rmtree(ckpt, ignore_errors=True)
    return result


def save_model(model, model_cfg, train_cfg, folder: Path) -> Path:
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "config.json").write_text(
            json.dumps({"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}, indent=2)
            + "\n"
        )
    return folder


def load_model(folder: Path, fused: np.ndarray | None, device: str = "cpu"):
    """Rebuild a saved SAL model (state dict loaded with ``weights_only=True``)."""
    cfg = read_json(Path(folder) / "config.json")
    # models saved before selection groups existed selected per query block: keep their behaviour
    cfg["model"].setdefault("select_group", 1)
    model_cfg = SALConfig(**cfg["model"])
    feats = None
    if model_cfg.item_feature_dim > 0:
        if fused is None:
            raise ValueError(f"{folder} was trained with fused item vectors; none given")
        feats = torch.as_tensor(np.asarray(fused), dtype=torch.float32)
    model = SALModel(model_cfg, feats)
    state = load_tensors(Path(folder) / "model.pt")
    model.load_state_dict(state)
    return model.to(device).eval()


class SALScorer:
    """Evaluation :class:`~mufasa.evaluation.protocol.Scorer` over a SAL model."""

    def __init__(self, model, batch_size: int = 256):
        self.model = model
        self.batch_size = batch_size

    def score(self, histories: Histories) -> torch.Tensor:
        return score_users(self.model, seqs_of(histories), np.arange(len(histories)), self.batch_size)
