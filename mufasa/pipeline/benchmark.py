"""The published comparison: MUFASA vs the reference SASRec, popularity and every ablation, over seeds.

Not part of the scheduled retrain. Uses the stored split and features (run the pipeline first) and retrains every
model per seed, the MFL included (:func:`mufasa.pipeline.evaluate.evaluate_all` with ``seed``). MUFASA and the
reference ``sasrec`` run on every seed; popularity and the ablations on the first ``ablation_seeds`` of them.

Both protocols are reported: history **unfiltered** (the headline; the standard for sequential models and
comparable with a reference library's sequential figures) and **filtered** (history items other than the target
removed; comparable with a reference library's popularity figure). MUFASA vs ``sasrec`` is also tested per user:
each user's NDCG@10, averaged over the seeds both ran, paired between the two models — a Wilcoxon signed-rank
test (two-sided) and a paired bootstrap 95 % interval of the mean difference.

``sasrec_seen_bias`` (the same SASRec scored with MUFASA's learned bias on consumed items) asks what MUFASA gains
beyond that bias; every model with per-user ranks gets the same paired test against MUFASA, on the seeds both ran.

Results (``<out>.json`` / ``.md`` / ``.png``, and every model's per-user test ranks in
``<out>.ranks.npz`` for the paired tests) are written after every (seed, model), so an interrupted run keeps what it
finished; ``resume=True`` reads them back and runs only the (seed, model) pairs still missing, and ``models``
restricts a run to some models (e.g. the ablations, on top of a finished headline). The CLI logs them to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mufasa.data.io import atomic_path, write_json, write_text
from mufasa.evaluation.report import bar_plot, metrics_table
from mufasa.evaluation.protocol import PROTOCOLS
from mufasa.pipeline.evaluate import ABLATIONS, evaluate_all, seeded_fused
from mufasa.pipeline.params import quiet
from mufasa.pipeline.paths import ProjectPaths

HEADLINE = ("mufasa", "sasrec")
MODEL_ORDER = ("mufasa", "sasrec", "sasrec_seen_bias", "popularity", *ABLATIONS)


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
    models: tuple[str, ...] | None = None,
    resume: bool = False,
) -> dict:
    """Train and score every model over ``seeds``; write and return the payload (see the module docstring).

    ``workers`` > 1 runs independent (seed, model) trainings in that many processes with one thread each (the
    same seeded results; faster on a few cores than one process using them all, since small models scale poorly).
    ``models`` (default: all of ``MODEL_ORDER``) restricts the run; ``resume`` keeps what ``<out>.json`` and
    ``<out>.ranks.npz`` already hold (written by a run of the same parameters) and runs only what is missing.
    """
    wanted = tuple(MODEL_ORDER) if models is None else tuple(models)
    unknown = sorted(set(wanted) - set(MODEL_ORDER))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}: choose from {list(MODEL_ORDER)}")
    params = dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, baselines=("popularity", "sasrec"), ablations=tuple(ABLATIONS)),
    )
    out = Path(out)
    per_seed, ranks, earlier = _load_previous(params, out) if resume else ({}, {}, {})
    started = time.perf_counter() - float(earlier.get("seconds", 0.0))
    payload: dict = earlier
    # The headline pair first over every seed, then the rest over the first seeds: an interrupted run has the
    # comparison that matters most. Written after every step, so it keeps every seed it finished.
    steps = [(seed, (m,)) for seed in seeds for m in HEADLINE if m in wanted]
    steps += [(seed, (m,)) for seed in seeds[:ablation_seeds] for m in MODEL_ORDER if m not in HEADLINE and m in wanted]
    steps = [(seed, m) for seed, m in steps if m[0] not in per_seed.get(seed, {})]

    def collect(seed: int, results: dict) -> None:
        nonlocal payload
        per_seed.setdefault(seed, {}).update({name: r["protocols"] for name, r in results.items()})
        ranks.setdefault(seed, {}).update({name: r["ranks"] for name, r in results.items()})
        if progress:
            progress(seed, {name: r["test"] for name, r in results.items()})
        payload = _write(params, per_seed, ranks, out, time.perf_counter() - started, earlier)

    if not steps:  # nothing left to train: rewrite the tables from what is stored (e.g. after a report change)
        return _write(params, per_seed, ranks, out, float(earlier.get("seconds", 0.0)), earlier) if per_seed else {}
    # The MFL is retrained once per seed and its vectors shared by every model of that seed.
    todo = sorted({seed for seed, _ in steps})
    if workers <= 1:
        fused = {seed: _fused(params, paths, seed, None) for seed in todo}
        for seed, step_models in steps:
            collect(*_step(params, paths, seed, step_models, fused[seed], None))
        return payload
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    quiet_params = quiet(params)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        fits = {seed: pool.submit(_fused, quiet_params, paths, seed, 1) for seed in todo}
        fused = {seed: f.result() for seed, f in fits.items()}
        futures = [pool.submit(_step, quiet_params, paths, seed, m, fused[seed], 1) for seed, m in steps]
        for future in as_completed(futures):
            collect(*future.result())
    return payload


def _ranks_path(out: Path) -> Path:
    return out.with_suffix(".ranks.npz")


def _budget(params) -> dict:
    """The two headline models' training settings, as plain JSON (what a resumed run must share)."""
    return json.loads(json.dumps({"mufasa": dataclasses.asdict(params.train_sal.train),
                                  "sasrec": dataclasses.asdict(params.evaluate.sasrec.train)}, default=str))


def _load_previous(params, out: Path) -> tuple[dict[int, dict], dict[int, dict], dict]:
    """What an earlier run wrote to ``out`` (per-seed metrics, headline ranks, payload); nothing if absent.

    Refuses a file written under a different training budget: resuming would mix two configurations in one table.
    """
    path = out.with_suffix(".json")
    if not path.exists():
        return {}, {}, {}
    from mufasa.data.io import read_json

    earlier = read_json(path)
    def differs(old: dict, now: dict) -> list[str]:  # the settings the file records (progress is cosmetic)
        return sorted(f"{m}.{k}" for m in set(old) | set(now) for k in old.get(m, {})
                      if k != "progress" and old[m][k] != now.get(m, {}).get(k))

    changed = differs(earlier.get("budget") or {}, _budget(params)) if earlier.get("budget") is not None else []
    if changed:
        raise ValueError(f"{path}: written under another training budget than params.yaml's "
                         f"({', '.join(changed)}); rerun without --resume (or use another --out)")
    per_seed = {int(s): dict(models) for s, models in earlier.get("per_seed", {}).items()}
    ranks: dict[int, dict] = {}
    if _ranks_path(out).exists():
        with np.load(_ranks_path(out)) as stored:
            for key in stored.files:  # "<seed>/<model>/<protocol>"
                seed, model, protocol = key.split("/")
                ranks.setdefault(int(seed), {}).setdefault(model, {})[protocol] = stored[key]
    return per_seed, ranks, earlier


def _write(params, per_seed: dict[int, dict], ranks: dict[int, dict], out: Path, seconds: float,
           earlier: dict | None = None) -> dict:
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
    # The paired test over the seeds where both headline models have per-user ranks (all of them, unless the
    # headline came from a file written before ranks were kept: then its test is carried over as it was).
    paired = _paired_with_mufasa(ranks)
    headline_seeds = [s for s in seeds if all(m in per_seed[s] for m in HEADLINE)]
    significance = {}
    if "sasrec" in paired and paired["sasrec"][PROTOCOLS[0]]["seeds"] == headline_seeds:
        significance = paired["sasrec"]
    elif earlier and earlier.get("significance_mufasa_vs_sasrec_ndcg@10"):
        significance = earlier["significance_mufasa_vs_sasrec_ndcg@10"]
    flat = {f"{s}/{m}/{p}": np.asarray(r) for s, by_model in ranks.items() for m, by_protocol in by_model.items()
            for p, r in by_protocol.items()}
    if flat:
        with atomic_path(_ranks_path(out)) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **flat)
    payload = {
        "seeds": seeds,
        "seeds_per_model": seeds_of,
        "protocol": {"split": "test", "full_ranking": True, "leave_one_out": True, "ties": "pessimistic"},
        "budget": _budget(params),
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "mean_std": mean_std,
        "significance_mufasa_vs_sasrec_ndcg@10": significance,
        "paired_vs_mufasa_ndcg@10": paired,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "seconds": seconds,
    }
    write_json(payload, out.with_suffix(".json"))
    write_text(_markdown(tables, significance, seeds_of, paired), out.with_suffix(".md"))
    bar_plot(tables["unfiltered"], out.with_suffix(".png"))
    return payload


def _paired_with_mufasa(ranks: dict[int, dict]) -> dict[str, dict]:
    """Per model with per-user ranks: MUFASA − model, each user's NDCG@10 averaged over the seeds both ran,
    paired (Wilcoxon + bootstrap interval), per protocol."""
    out: dict[str, dict] = {}
    names = sorted({m for by_model in ranks.values() for m in by_model} - {"mufasa"}, key=MODEL_ORDER.index)
    for name in names:
        both = sorted(s for s, by_model in ranks.items() if "mufasa" in by_model and name in by_model)
        if not both:
            continue
        out[name] = {
            protocol: {**paired_test(np.mean([ndcg_at(ranks[s]["mufasa"][protocol]) for s in both], axis=0),
                                     np.mean([ndcg_at(ranks[s][name][protocol]) for s in both], axis=0)),
                       "seeds": both}
            for protocol in PROTOCOLS
        }
    return out


def _paired_table(paired: dict[str, dict], protocol: str) -> list[str]:
    rows = []
    for name, by_protocol in paired.items():
        sig = by_protocol[protocol]
        rows.append(f"| {name} | {sig['seeds']} | {sig['mean_diff']:+.4f} | {sig['ci95_low']:+.4f} … "
                    f"{sig['ci95_high']:+.4f} | {sig['wilcoxon_p']:.3g} | "
                    f"{int(sig['users_better'])} / {int(sig['users_worse'])} |")
    if not rows:
        return []
    return ["Paired per user (MUFASA − model, each user's NDCG@10 averaged over the seeds both ran; bootstrap "
            "95 % interval, two-sided Wilcoxon signed-rank; users where MUFASA is better / worse):", "",
            "| model | seeds | MUFASA − model | 95 % CI | Wilcoxon p | better / worse |",
            "|---|---|---:|---|---:|---:|", *rows, ""]


def _same_seeds(table: dict, seeds_of: dict, metric: str = "ndcg@10") -> list[str]:
    """Each other model against MUFASA on the seeds both ran (the means above cover different seed sets)."""
    if "mufasa" not in table:
        return []
    mufasa = dict(zip(seeds_of["mufasa"], table["mufasa"][metric]))
    rows = []
    for name, values in table.items():
        if name == "mufasa":
            continue
        shared = [(s, v) for s, v in zip(seeds_of[name], values[metric]) if s in mufasa]
        if not shared:
            continue
        diffs = [v - mufasa[s] for s, v in shared]
        rows.append(f"| {name} | {[s for s, _ in shared]} | {np.mean([mufasa[s] for s, _ in shared]):.4f} | "
                    f"{np.mean([v for _, v in shared]):.4f} | {np.mean(diffs):+.4f} | "
                    f"{sum(d > 0 for d in diffs)}/{len(diffs)} |")
    if not rows:
        return []
    return [f"Against MUFASA on the same seeds ({metric}; the model − MUFASA, and on how many seeds the model was "
            "ahead):", "", "| model | seeds | MUFASA | model | difference | ahead |", "|---|---|---:|---:|---:|---:|",
            *rows, ""]


def _markdown(tables: dict, significance: dict, seeds_of: dict, paired: dict | None = None) -> str:
    lines = [
        "# MUFASA vs the reference SASRec and ablations",
        "",
        "Test split, leave-one-out by time, every user ranked against all items, pessimistic ties; mean ± std over "
        "seeds (each model's seeds: " + "; ".join(f"{n} {s}" for n, s in seeds_of.items()) + ").",
        "",
    ]
    for protocol in PROTOCOLS:
        sig = significance.get(protocol)
        title = f"History {protocol}" + (" (headline)" if protocol == "unfiltered" else "")
        lines += [metrics_table(tables[protocol], title=title)]
        lines += _same_seeds(tables[protocol], seeds_of)
        lines += _paired_table(paired or {}, protocol)
        if sig is None:
            lines += ["No paired test yet: MUFASA and sasrec have not both run on any seed.", ""]
            continue
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
