"""The ``train_sal`` stage: train MUFASA's user encoder (SAL) on the training histories; write the model.

Inputs: ``data/sequences/`` (train histories; validation targets for early stopping), ``data/raw/items.parquet``
(the item vocabulary) and ``data/fused/items.npy`` (MFL vectors). Outputs: ``models/sal/model.pt`` (state dict) +
``config.json``, ``metrics/sal.json`` (the best validation row) and ``reports/sal/curves.png`` (with the
validation NDCG@10 that early stopping follows). Checkpoints live in ``checkpoints/train_sal/<variant>/`` and are
removed on success, so a killed run resumes and a finished one never resumes stale state.
``train_sal.nproc`` > 1 trains with DDP under torchrun (:func:`mufasa.pipeline.data_parallel.data_parallel_stage`).
Loading, fitting and scoring live in :mod:`mufasa.pipeline.sal_model` (evaluation and the gate use them too).
"""

from __future__ import annotations

import dataclasses

from mufasa.data.io import tree_md5, write_json
from mufasa.pipeline.data_parallel import data_parallel_stage
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult
from mufasa.pipeline.sal_model import load_inputs, save_model, train_variant
from mufasa.training import distributed
from mufasa.training.common import MetricsCallback
from mufasa.training.diagnostics import history_series, plot_training_curves


def run_train_sal(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    cfg = params.train_sal
    device = cfg.train.device
    return data_parallel_stage("train_sal", cfg.nproc, device, _train_sal, params, paths, on_metrics)


def _train_sal(params, paths: ProjectPaths, on_metrics: MetricsCallback | None = None):
    inputs = load_inputs(paths)
    model_cfg, train_cfg, result = train_variant(params, inputs, paths.root, "mufasa", on_metrics=on_metrics)
    if not distributed.is_main():  # DDP: rank 0 writes the outputs
        return StageResult("train_sal", {}, info={"rank": distributed.rank()})
    folder = save_model(result.model, model_cfg, train_cfg, paths.sal_model_dir)
    best = {k: float(v) for k, v in result.best.items() if isinstance(v, (int, float))}
    write_json(best, paths.sal_metrics)
    reports = paths.sal_reports
    reports.mkdir(parents=True, exist_ok=True)
    curves = plot_training_curves(result.history, reports / "curves.png", criterion="val_ndcg@10", mode="max")
    write_json(history_series(result.history), paths.sal_history)
    metrics = {**{f"best_{k}": v for k, v in best.items()}, "epochs_run": float(result.epochs_run),
               "steps_run": float(result.steps_run)}
    info = {
        "resumed_from": result.resumed_from,
        "uses_fused": inputs.fused is not None,
        "hashes": {"model": tree_md5(folder / "model.pt")},
    }
    return StageResult(
        "train_sal",
        {"model": folder / "model.pt", "config": folder / "config.json"},
        metrics,
        # budget: the step budget resolved from the data size (steps an epoch, evaluation period, warm-up, cap)
        {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
         "budget": dataclasses.asdict(result.budget)},
        info,
        artifacts=(curves, folder / "config.json"),
    )


def run(params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return run_train_sal(params, paths, on_metrics)
