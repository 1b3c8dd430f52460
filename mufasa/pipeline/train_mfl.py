"""The ``train_mfl`` stage: fit the multimodal fusion layer on frozen item features; write fused vectors.

Inputs: ``data/features/`` (text, image + mask, side), ``data/raw/items.parquet`` (genres, for the
genre-mixing sampler and the projection plot) and ``data/sequences/train.parquet`` (the collaborative space is
built from the TRAIN split only, so validation/test events never leak into the item vectors).

Outputs: ``data/fused/items.npy`` (N, out_dim) unit rows in ``items.parquet`` order; ``models/mfl/model.pt``
(state dict) + ``config.json``; ``reports/mfl/{curves,projection}.png``; ``metrics/mfl.json`` (diagnostics).
Checkpoints go to ``checkpoints/train_mfl/<inputs hash>/`` and are removed once the stage succeeds, so a killed
run resumes where it stopped and a finished one never resumes stale state.

``train_mfl.nproc`` > 1 trains with DDP under torchrun (:func:`mufasa.pipeline.data_parallel.data_parallel_stage`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mufasa.data.io import atomic_path, file_md5, read_parquet, tree_md5, write_json
from mufasa.data.sequences import read_train_sequences
from mufasa.data.vocab import ItemVocab
from mufasa.pipeline.data_parallel import data_parallel_stage
from mufasa.pipeline.features import read_features, save_npy
from mufasa.pipeline.paths import ProjectPaths
from mufasa.training import distributed
from mufasa.training.common import MetricsCallback

if TYPE_CHECKING:
    from mufasa.models.fusion import FusionConfig
    from mufasa.training.mfl_trainer import MFLTrainConfig, MFLTrainResult


def primary_genres(items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Primary (first-listed) genre id per item (-1 where none) and the genre names."""
    first = items["genres"].fillna("").astype(str).str.split("|").str[0]
    codes, names = pd.factorize(first.where(first != "", None), sort=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _inputs_hash(paths: ProjectPaths, cfg_json: str) -> str:
    h = hashlib.md5(cfg_json.encode())
    for p in (paths.features_dir / "text.npy", paths.features_dir / "side.npy", paths.sequences_dir / "train.parquet"):
        h.update(file_md5(p).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FittedMFL:
    fusion_cfg: FusionConfig
    train_cfg: MFLTrainConfig
    cfg_json: str  # what config.json records (and the checkpoint folder's hash covers)
    result: MFLTrainResult
    genres: np.ndarray  # (N,) primary genre id per item
    genre_names: list[str]
    checkpoint_dir: Path | None


def fit_mfl(params, paths: ProjectPaths, seed: int | None = None, on_metrics=None, checkpoint: bool = True) -> FittedMFL:
    """Train the fusion layer on the stored features and TRAIN split; nothing is written but the checkpoint.

    ``seed`` (benchmark use) replaces ``train_mfl.train.seed``, so a seeded comparison counts MFL's own variance.
    ``checkpoint=False`` (in-memory benchmark and tuning fits) trains without a resumable checkpoint.
    """
    from mufasa.pipeline.params import mfl_configs
    from mufasa.training.mfl_trainer import collaborative_space, train_mfl

    items = read_parquet(paths.raw_items)
    feats = read_features(paths.features_dir)
    index = feats["index"]
    if not np.array_equal(index["item_id"].to_numpy(), items["item_id"].to_numpy()):
        raise ValueError(f"{paths.features_dir}/index.parquet does not follow {paths.raw_items}: rerun features")
    fusion_cfg, train_cfg = mfl_configs(
        params, side_dim=feats["side"].shape[1], text_dim=feats["text"].shape[1], image_dim=feats["image"].shape[1]
    )
    if seed is not None:
        train_cfg = dataclasses.replace(train_cfg, seed=seed)
    vocab = ItemVocab(items["item_id"].to_numpy())
    _, offsets, train_items, _ = read_train_sequences(paths.sequences_dir / "train.parquet")
    collab, collab_mask = collaborative_space(
        offsets,
        vocab.to_index(train_items),
        vocab.n_items,
        dim=fusion_cfg.collab_dim,
        window=params.train_mfl.collab_window,
        seed=train_cfg.seed,
    )
    genres, genre_names = primary_genres(items)

    cfg_json = json.dumps(
        {"enabled": True, "fusion": dataclasses.asdict(fusion_cfg), "train": dataclasses.asdict(train_cfg),
         "collab_window": params.train_mfl.collab_window},
        sort_keys=True,
        default=str,
    )
    ckpt_dir = paths.checkpoint_dir("train_mfl", _inputs_hash(paths, cfg_json)) if checkpoint else None
    result = train_mfl(
        fusion_cfg,
        train_cfg,
        feats["text"],
        feats["image"],
        index["has_image"].to_numpy(),
        feats["side"],
        collab,
        collab_mask,
        genres,
        checkpoint_dir=ckpt_dir,
        on_metrics=on_metrics,
    )

    return FittedMFL(fusion_cfg, train_cfg, cfg_json, result, genres, genre_names, ckpt_dir)


def run_train_mfl(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    cfg = params.train_mfl
    nproc = cfg.nproc if cfg.enabled else 1  # MFL off trains nothing
    return data_parallel_stage("train_mfl", nproc, cfg.train.get("device", "auto"), _train_mfl, params, paths, on_metrics)


def _train_mfl(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    from mufasa.pipeline.stages import StageResult
    from mufasa.training.diagnostics import plot_fused_projection, plot_training_curves

    fused_path = paths.fused_items
    model_dir = paths.mfl_model_dir
    if not params.train_mfl.enabled:
        items = read_parquet(paths.raw_items, columns=["item_id"])
        if not distributed.is_main():  # under torchrun: one writer
            return StageResult("train_mfl", {}, info={"rank": distributed.rank()})
        # MFL off (ablation / ID-only SAL): zero-width fused vectors keep every output and DVC stage in place.
        save_npy(np.zeros((len(items), 0), dtype=np.float32), fused_path)
        with atomic_path(model_dir) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps({"enabled": False}) + "\n")
        write_json({"enabled": 0.0}, paths.metrics_dir / "mfl.json")
        return StageResult("train_mfl", {"fused": fused_path, "config": model_dir / "config.json"}, {}, {"enabled": False})

    fitted = fit_mfl(params, paths, on_metrics=on_metrics)
    fusion_cfg, train_cfg, result = fitted.fusion_cfg, fitted.train_cfg, fitted.result

    if not distributed.is_main():  # DDP: rank 0 writes the outputs
        return StageResult("train_mfl", {}, info={"rank": distributed.rank()})
    save_npy(result.fused.astype(np.float32), fused_path)
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        (tmp / "config.json").write_text(fitted.cfg_json + "\n")
    reports = paths.reports_dir / "mfl"
    reports.mkdir(parents=True, exist_ok=True)
    curves = plot_training_curves(result.history, reports / "curves.png")
    projection = plot_fused_projection(result.fused, fitted.genres, fitted.genre_names, reports / "projection.png")
    diagnostics = {k: float(v) for k, v in result.diagnostics.items()}
    write_json(diagnostics, paths.metrics_dir / "mfl.json")
    shutil.rmtree(fitted.checkpoint_dir, ignore_errors=True)

    metrics = {**{f"diag_{k}": v for k, v in diagnostics.items()}, "epochs_run": float(result.epochs_run)}
    if result.history:
        metrics.update({f"final_{k}": float(v) for k, v in result.history[-1].items() if isinstance(v, (int, float))})
    outputs = {"fused": fused_path, "model": model_dir / "model.pt", "config": model_dir / "config.json"}
    info = {
        "resumed_from": result.resumed_from,
        "device": str(next(result.model.parameters()).device),
        "hashes": {"fused": tree_md5(fused_path)},
        "genres": fitted.genre_names,
    }
    return StageResult(
        "train_mfl",
        outputs,
        metrics,
        {"fusion": dataclasses.asdict(fusion_cfg), "train": dataclasses.asdict(train_cfg)},
        info,
        artifacts=(curves, projection, model_dir / "model.pt", model_dir / "config.json"),
    )
