"""The published comparison: MUFASA vs the reference SASRec, popularity and every ablation, over seeds.

Not part of the scheduled retrain. Uses the stored split and features (run the pipeline first) and retrains every
model per seed, the MFL included (:func:`mufasa.pipeline.evaluate.evaluate_all` with ``seed``). MUFASA and the
reference ``sasrec`` run on every seed; popularity and the ablations on the first ``ablation_seeds`` of them.

Both protocols are reported: history **unfiltered** (the headline; the standard for sequential models and
comparable with a reference library's sequential figures) and **filtered** (history items other than the target
removed; comparable with a reference library's popularity figure). MUFASA vs ``sasrec`` is also tested per user:
each user's NDCG@10, averaged over the seeds both ran, paired between the two models — a Wilcoxon signed-rank
test (two-sided) and a paired bootstrap 95 % interval of the mean difference.

Results (``<out>.json`` / ``.md`` / ``.png``) are written after every seed, so an interrupted run keeps the seeds
it finished; the CLI logs them to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mufasa.data.io import write_json, write_text
from mufasa.evaluation.report import bar_plot, metrics_table
from mufasa.evaluation.protocol import PROTOCOLS
from mufasa.pipeline.evaluate import ABLATIONS, evaluate_all, seeded_fused
from mufasa.pipeline.params import quiet
from mufasa.pipeline.paths import ProjectPaths

HEADLINE = ("mufasa", "sasrec")
MODEL_ORDER = ("mufasa", "sasrec", "popularity", *ABLATIONS)


def ndcg_at(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of 0-based target ranks (one relevant item)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def paired_test(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of per-user scores ``a`` vs ``b``: mean difference, bootstrap 95 % CI, Wilcoxon p."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length 1-d score arrays, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    nonzero = diff[diff != 0]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return {
        "mean_diff": float(diff.mean()),
        "ci95_low": float(np.quantile(boot, 0.025)),
        "ci95_high": float(np.quantile(boot, 0.975)),
        "wilcoxon_p": p,
        "n_users": float(len(diff)),
        "users_better": float((diff > 0).sum()),
        "users_worse": float((diff < 0).sum()),
    }


def _fused(params, paths: ProjectPaths, seed: int, threads: int | None):
    if threads is not None:
        torch.set_num_threads(threads)
    return seeded_fused(params, paths, seed)


def _step(params, paths: ProjectPaths, seed: int, models: tuple[str, ...], fused, threads: int | None):
    if threads is not None:
        torch.set_num_threads(threads)
    return seed, evaluate_all(params, paths, seed=seed, models=models, fused=fused)


def run_benchmark(
    params,
    paths: ProjectPaths,
    seeds: list[int],
    out: Path,
    progress=None,
    ablation_seeds: int = 3,
    workers: int = 1,
) -> dict:
    """Train and score every model over ``seeds``; write and return the payload (see the module docstring).

    ``workers`` > 1 runs independent (seed, model) trainings in that many processes with one thread each (the
    same seeded results; faster on a few cores than one process using them all, since small models scale poorly).
    """
    params = dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, baselines=("popularity", "sasrec"), ablations=tuple(ABLATIONS)),
    )
    per_seed: dict[int, dict] = {}
    ranks: dict[int, dict] = {}
    started = time.perf_counter()
    payload: dict = {}
    # The headline pair first over every seed, then the rest over the first seeds: an interrupted run has the
    # comparison that matters most. Written after every step, so it keeps every seed it finished.
    steps = [(seed, (m,)) for seed in seeds for m in HEADLINE]
    steps += [(seed, (m,)) for seed in seeds[:ablation_seeds] for m in MODEL_ORDER if m not in HEADLINE]

    def collect(seed: int, results: dict) -> None:
        nonlocal payload
        per_seed.setdefault(seed, {}).update({name: r["protocols"] for name, r in results.items()})
        ranks.setdefault(seed, {}).update({name: r["ranks"] for name, r in results.items() if name in HEADLINE})
        if progress:
            progress(seed, {name: r["test"] for name, r in results.items()})
        if all(m in ranks.get(s, {}) for s in per_seed for m in HEADLINE):
            payload = _write(params, per_seed, ranks, Path(out), time.perf_counter() - started)

    # The MFL is retrained once per seed and its vectors shared by every model of that seed.
    if workers <= 1:
        fused = {seed: _fused(params, paths, seed, None) for seed in seeds}
        for seed, models in steps:
            collect(*_step(params, paths, seed, models, fused[seed], None))
        return payload
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    quiet_params = quiet(params)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        fits = {seed: pool.submit(_fused, quiet_params, paths, seed, 1) for seed in seeds}
        fused = {seed: f.result() for seed, f in fits.items()}
        futures = [pool.submit(_step, quiet_params, paths, seed, models, fused[seed], 1) for seed, models in steps]
        for future in as_completed(futures):
            collect(*future.result())
    return payload


def _write(params, per_seed: dict[int, dict], ranks: dict[int, dict], out: Path, seconds: float) -> dict:
    seeds = sorted(per_seed)
    tables, mean_std, seeds_of = {}, {}, {}
    for protocol in PROTOCOLS:
        combined: dict[str, dict[str, list[float]]] = {}
        for name in MODEL_ORDER:
            ran = [s for s in seeds if name in per_seed[s]]
            if not ran:
                continue
            seeds_of[name] = ran
            metrics = [k for k in per_seed[ran[0]][name][protocol] if k != "n_users"]
            combined[name] = {k: [per_seed[s][name][protocol][k] for s in ran] for k in metrics}
        mean_std[protocol] = {
            n: {k: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0] for k, v in m.items()}
            for n, m in combined.items()
        }
        tables[protocol] = combined
    significance = {}
    for protocol in PROTOCOLS:
        per_user = {m: np.mean([ndcg_at(ranks[s][m][protocol]) for s in seeds if m in ranks[s]], axis=0)
                    for m in HEADLINE}
        significance[protocol] = paired_test(per_user["mufasa"], per_user["sasrec"])
    payload = {
        "seeds": seeds,
        "seeds_per_model": seeds_of,
        "protocol": {"split": "test", "full_ranking": True, "leave_one_out": True, "ties": "pessimistic"},
        "budget": {"mufasa": params.train_sal.train, "sasrec": params.evaluate.sasrec.train},
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "mean_std": mean_std,
        "significance_mufasa_vs_sasrec_ndcg@10": significance,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "seconds": seconds,
    }
    write_json(payload, out.with_suffix(".json"))
    write_text(_markdown(tables, significance, seeds_of), out.with_suffix(".md"))
    bar_plot(tables["unfiltered"], out.with_suffix(".png"))
    return payload


def _markdown(tables: dict, significance: dict, seeds_of: dict) -> str:
    lines = [
        "# MUFASA vs the reference SASRec and ablations",
        "",
        "Test split, leave-one-out by time, every user ranked against all items, pessimistic ties; mean ± std over "
        "seeds (each model's seeds: " + "; ".join(f"{n} {s}" for n, s in seeds_of.items()) + ").",
        "",
    ]
    for protocol in PROTOCOLS:
        sig = significance[protocol]
        title = f"History {protocol}" + (" (headline)" if protocol == "unfiltered" else "")
        lines += [metrics_table(tables[protocol], title=title)]
        lines += [
            f"MUFASA − sasrec, per-user NDCG@10 averaged over seeds ({int(sig['n_users'])} users): "
            f"{sig['mean_diff']:+.4f} (95 % CI {sig['ci95_low']:+.4f} … {sig['ci95_high']:+.4f}), "
            f"Wilcoxon signed-rank p = {sig['wilcoxon_p']:.3g}; better for {int(sig['users_better'])} users, "
            f"worse for {int(sig['users_worse'])}.",
            "",
        ]
    return "\n".join(lines)


def summary_json(payload: dict) -> str:
    return json.dumps(payload["mean_std"], indent=2)
