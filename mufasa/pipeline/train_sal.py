"""The ``train_sal`` stage, plus what evaluation and serving share with it: inputs, model IO, a scorer.

Inputs: ``data/sequences/`` (train histories; validation targets for early stopping), ``data/raw/items.parquet``
(the item vocabulary) and ``data/fused/items.npy`` (MFL vectors; zero-width when MFL is off, then SAL runs on ID
embeddings alone). Outputs: ``models/sal/model.pt`` (state dict) + ``config.json``, ``metrics/sal.json`` (the
best validation row) and ``reports/sal/curves.png``. Checkpoints live in ``checkpoints/train_sal/<variant>/``
and are removed on success, so a killed run resumes and a finished one never resumes stale state.
``train_sal.nproc`` > 1 trains with DDP under torchrun (:func:`mufasa.pipeline.data_parallel.data_parallel_stage`).
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

from mufasa.data.io import atomic_path, load_npy, load_tensors, read_json, tree_md5, write_json
from mufasa.evaluation.protocol import EvalData, Histories, load_eval_data
from mufasa.pipeline.paths import ProjectPaths
from mufasa.training import distributed
from mufasa.training.common import MetricsCallback


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


def train_variant(params, inputs: SALInputs, root: Path, variant: str, on_metrics=None, use_fused=True, **overrides):
    """Train one SAL variant (MUFASA or an ablation) with ``train_sal``'s objective and budget."""
    from mufasa.pipeline.params import sal_configs

    fused = inputs.fused if use_fused else None
    model_overrides = dict(overrides)
    if fused is None:
        model_overrides["use_id_embedding"] = True
    model_cfg, train_cfg = sal_configs(
        params,
        n_items=inputs.data.n_items,
        item_feature_dim=0 if fused is None else fused.shape[1],
        **model_overrides,
    )
    result = fit(model_cfg, train_cfg, inputs, root, variant, fused, on_metrics)
    return model_cfg, train_cfg, result


def train_sasrec(params, inputs: SALInputs, root: Path, on_metrics=None, variant: str = "sasrec"):
    """Train the reference SASRec (``evaluate.sasrec``: ID-only, RecBole's settings) on the same split."""
    from mufasa.pipeline.params import sasrec_configs

    model_cfg, train_cfg = sasrec_configs(params, n_items=inputs.data.n_items)
    result = fit(model_cfg, train_cfg, inputs, root, variant, None, on_metrics)
    return model_cfg, train_cfg, result


def fit(model_cfg, train_cfg, inputs: SALInputs, root: Path, variant: str, fused=None, on_metrics=None):
    """Train ``model_cfg`` (SAL or SASRec) on the training histories, early-stopped on validation NDCG@10."""
    from mufasa.training.sal_trainer import train_sal

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
    from mufasa.models.sal import SALConfig, SALModel

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
        from mufasa.training.sal_trainer import score_users

        return score_users(self.model, seqs_of(histories), np.arange(len(histories)), self.batch_size)


def run_train_sal(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    from mufasa.pipeline.data_parallel import data_parallel_stage

    cfg = params.train_sal
    device = cfg.train.get("device", "auto")
    return data_parallel_stage("train_sal", cfg.nproc, device, _train_sal, params, paths, on_metrics)


def _train_sal(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    from mufasa.pipeline.stages import StageResult
    from mufasa.training.diagnostics import plot_training_curves

    inputs = load_inputs(paths)
    model_cfg, train_cfg, result = train_variant(params, inputs, paths.root, "mufasa", on_metrics=on_metrics)
    if not distributed.is_main():  # DDP: rank 0 writes the outputs
        return StageResult("train_sal", {}, info={"rank": distributed.rank()})
    folder = save_model(result.model, model_cfg, train_cfg, paths.sal_model_dir)
    best = {k: float(v) for k, v in result.best.items() if isinstance(v, (int, float))}
    write_json(best, paths.metrics_dir / "sal.json")
    reports = paths.reports_dir / "sal"
    reports.mkdir(parents=True, exist_ok=True)
    curves = plot_training_curves(result.history, reports / "curves.png", criterion="val_ndcg@10", mode="max")
    metrics = {**{f"best_{k}": v for k, v in best.items()}, "epochs_run": float(result.epochs_run)}
    info = {
        "resumed_from": result.resumed_from,
        "uses_fused": inputs.fused is not None,
        "hashes": {"model": tree_md5(folder / "model.pt")},
    }
    return StageResult(
        "train_sal",
        {"model": folder / "model.pt", "config": folder / "config.json"},
        metrics,
        {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)},
        info,
        artifacts=(curves, folder / "config.json"),
    )
