"""The published comparison: MUFASA vs baselines and every ablation, repeated over seeds (mean ± std).

Not part of the scheduled retrain (it trains 6 SAL variants per seed). Uses the stored split and fused item
vectors (run the pipeline first), retrains every model per seed with ``train_sal.train`` as the shared budget,
and writes ``<out>.json`` / ``.md`` / ``.png``; logs all three to MLflow when a tracker is given.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from mufasa.data.io import write_json, write_text
from mufasa.evaluation.report import bar_plot, metrics_table
from mufasa.pipeline.evaluate import ABLATIONS, evaluate_all
from mufasa.pipeline.paths import ProjectPaths

MODEL_ORDER = ("mufasa", "popularity", "sasrec", "mfl_off", "window_only", "no_selection", "no_compression")


def run_benchmark(params, paths: ProjectPaths, seeds: list[int], out: Path, progress=None) -> dict:
    params = dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, baselines=("popularity", "sasrec"), ablations=tuple(ABLATIONS)),
    )
    per_seed: dict[int, dict] = {}
    started = time.perf_counter()
    payload: dict = {}
    for seed in seeds:
        results = evaluate_all(params, paths, seed=seed)
        per_seed[seed] = {name: r["test"] for name, r in results.items()}
        if progress:
            progress(seed, per_seed[seed])
        # written after every seed: an interrupted comparison keeps the seeds it finished
        payload = _write(params, list(per_seed), per_seed, Path(out), time.perf_counter() - started)
    return payload


def _write(params, seeds: list[int], per_seed: dict[int, dict], out: Path, seconds: float) -> dict:
    names = [n for n in MODEL_ORDER if n in per_seed[seeds[0]]]
    metrics = [k for k in per_seed[seeds[0]]["mufasa"] if k != "n_users"]
    combined = {n: {k: [per_seed[s][n][k] for s in seeds] for k in metrics} for n in names}
    payload = {
        "seeds": seeds,
        "protocol": {"split": "test", "full_ranking": True, "filter_history": params.evaluate.filter_history},
        "budget": params.train_sal.train,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "mean_std": {n: {k: [float(torch.tensor(v).mean()), float(torch.tensor(v).std()) if len(v) > 1 else 0.0]
                         for k, v in m.items()} for n, m in combined.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "seconds": seconds,
    }
    write_json(payload, out.with_suffix(".json"))
    title = f"MovieLens-100k style run, test split, full ranking, seeds {seeds} (mean ± std)"
    write_text(metrics_table(combined, title=title), out.with_suffix(".md"))
    bar_plot(combined, out.with_suffix(".png"))
    return payload


def summary_json(payload: dict) -> str:
    return json.dumps(payload["mean_std"], indent=2)
