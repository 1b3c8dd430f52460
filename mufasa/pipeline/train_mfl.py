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
import json
import shutil

import numpy as np
import torch

from mufasa.data.io import atomic_path, load_npy, read_parquet, save_npy, tree_md5, write_json
from mufasa.pipeline.data_parallel import data_parallel_stage
from mufasa.pipeline.mfl_model import fit_mfl
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult
from mufasa.training import distributed
from mufasa.training.common import MetricsCallback
from mufasa.training.diagnostics import history_series, plot_fused_projection, plot_training_curves
from mufasa.training.diagnostics import effective_rank, knn_overlap


def run_train_mfl(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    cfg = params.train_mfl
    nproc = cfg.nproc if cfg.enabled else 1  # MFL off trains nothing
    return data_parallel_stage("train_mfl", nproc, cfg.train.device, _train_mfl, params, paths, on_metrics)


def _train_mfl(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
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
        write_json({"enabled": 0.0}, paths.mfl_metrics)
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
    reports = paths.mfl_reports
    reports.mkdir(parents=True, exist_ok=True)
    curves = plot_training_curves(result.history, reports / "curves.png")
    write_json(history_series(result.history), paths.mfl_history)
    projection = plot_fused_projection(result.fused, fitted.genres, fitted.genre_names, reports / "projection.png")
    diagnostics = {k: float(v) for k, v in result.diagnostics.items()}
    write_json(diagnostics, paths.mfl_metrics)
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


# Collapse guards for the fused space. A collapsed space has effective rank ~1 and title-neighbour overlap at
# chance level; a healthy one (measured on ML-100k: rank ~45 of 64, overlap ~0.17 vs chance 0.006) is far above.
MIN_FUSED_EFFECTIVE_RANK = 4.0
MIN_TITLE_OVERLAP_OVER_CHANCE = 3.0


def fused_space_health(paths: ProjectPaths) -> dict:
    """Effective rank and title-neighbour preservation of the stored fused vectors, with a pass/fail verdict."""
    fused = load_npy(paths.fused_items)
    if fused.shape[1] == 0:
        return {"passed": True, "reason": "MFL disabled (zero-width fused vectors)", "n_items": len(fused)}
    text = load_npy(paths.feature_file("text.npy"))
    k = min(10, len(fused) - 1)
    chance = k / max(1, len(fused) - 1)
    rank = effective_rank(fused)
    overlap = knn_overlap(text, fused, k)
    finite = bool(np.isfinite(fused).all())
    passed = finite and rank >= MIN_FUSED_EFFECTIVE_RANK and overlap >= MIN_TITLE_OVERLAP_OVER_CHANCE * chance
    reason = None if passed else (
        f"fused space unhealthy: finite={finite}, effective rank {rank:.2f} (min {MIN_FUSED_EFFECTIVE_RANK}), "
        f"title kNN overlap {overlap:.3f} (min {MIN_TITLE_OVERLAP_OVER_CHANCE * chance:.3f})"
    )
    return {
        "passed": passed,
        "reason": reason,
        "n_items": len(fused),
        "effective_rank": float(rank),
        "title_knn_overlap": float(overlap),
        "knn_chance": float(chance),
    }


def run(params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return run_train_mfl(params, paths, on_metrics)
