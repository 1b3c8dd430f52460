"""The ``evaluate`` stage: MUFASA against its baselines and ablations, same split, same run.

Every model is scored with the full-ranking leave-one-out protocol of :mod:`mufasa.evaluation.protocol` on the
test split (histories = train + validation event). Baselines and ablations are trained here on the same
training histories; ablations with MUFASA's objective and budget (``train_sal.train``):

- ``popularity``: training-set item counts;
- ``copy_oracle``: copies what followed the best-matching earlier moment of each history
  (:mod:`mufasa.evaluation.oracle`), the reference for long-range recall on data with planted replays;
- ``sasrec``: the reference SASRec (:mod:`mufasa.models.sasrec`: ID-only, RecBole's settings and early
  stopping, ``evaluate.sasrec``), the baseline the gate demands MUFASA beats;
- ``sasrec_seen_bias``: the same SASRec scored with MUFASA's learned bias on items already consumed
  (``seen_bias``): what MUFASA gains beyond that bias (a benchmark model: ``mufasa benchmark --model
  sasrec_seen_bias``; not an ``evaluate.baselines`` choice);
- ``mfl_off``: SAL on ID embeddings only; ``dense_attention``: MUFASA with dense causal attention instead of the
  sparse branches; ``window_only`` / ``no_selection`` / ``no_compression``: SAL with branches removed;
  ``no_seen_bias``: MUFASA without the learned score bias on items already consumed.

Outputs: ``metrics/eval.json`` (DVC metrics; per model, test and validation), ``reports/eval.md`` (table) and
``reports/eval.png`` (bar plot of test NDCG@10).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mufasa.data.io import write_json, write_text
from mufasa.evaluation.oracle import CopyOracleScorer
from mufasa.evaluation.protocol import PopularityScorer, evaluate, evaluate_protocols
from mufasa.evaluation.report import bar_plot, metrics_table
from mufasa.pipeline.params import with_seed
from mufasa.pipeline.mfl_model import fit_mfl
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult
from mufasa.pipeline.sal_model import SALScorer, load_inputs, load_model, train_sasrec, train_variant

# Each ablation is a replace of MUFASA's model config (train_sal.model), trained with MUFASA's objective and budget.
ABLATIONS: dict[str, dict] = {
    "mfl_off": {"item_feature_dim": 0, "use_id_embedding": True},  # ID embeddings only: no fused vectors
    "dense_attention": {"attention": "dense"},
    "window_only": {"use_compressed": False, "use_selected": False},
    "no_selection": {"use_selected": False},
    "no_compression": {"use_compressed": False},
    "no_seen_bias": {"seen_bias": False},  # scores without the learned bias on items the user already consumed
}

# The reference SASRec as it is, and scored with MUFASA's seen-item bias (a replace of evaluate.sasrec.model).
SASREC_VARIANTS: dict[str, dict] = {"sasrec": {}, "sasrec_seen_bias": {"seen_bias": True}}


def seeded_fused(params, paths: ProjectPaths, seed: int) -> np.ndarray | None:
    """The MFL's fused item vectors retrained in memory with ``seed`` (None when MFL is off)."""
    if not params.train_mfl.enabled:
        return None
    return fit_mfl(params, paths, seed=seed, checkpoint=False).result.fused.astype(np.float32)


def evaluate_all(
    params,
    paths: ProjectPaths,
    on_metrics=None,
    seed: int | None = None,
    models: tuple[str, ...] | None = None,
    fused: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per model: ``{"test", "valid"}`` metrics under the configured protocol, ``"protocols"`` (test metrics with
    history ``unfiltered`` and ``filtered``) and ``"ranks"`` (per-user test ranks under both, for paired tests).

    MUFASA is loaded from ``models/sal``, baselines and ablations are trained here. ``seed`` (benchmark use)
    retrains everything with that seed instead, the MFL included (its fused vectors are rebuilt in memory), so the
    spread over seeds counts the MFL's own variance; ``fused`` supplies those vectors when the caller already has
    them (:func:`seeded_fused`, fitted once per seed by the benchmark). ``models`` restricts which models run
    (default: MUFASA, the configured baselines and ablations).
    """
    cfg = params.evaluate
    inputs = load_inputs(paths)
    data, n = inputs.data, inputs.data.n_items
    if seed is not None:
        params = with_seed(params, seed)
        if params.train_mfl.enabled and inputs.fused is not None:
            fused = seeded_fused(params, paths, seed) if fused is None else fused
            inputs = dataclasses.replace(inputs, fused=fused)
    wanted = set(models) if models is not None else {"mufasa", *cfg.baselines, *cfg.ablations}

    def score(scorer) -> dict[str, dict]:
        kw = {"ks": tuple(cfg.ks), "batch_size": cfg.batch_size}
        test = evaluate_protocols(scorer, data.test, n, **kw)  # both protocols, one scoring pass
        return {
            "test": test["filtered" if cfg.filter_history else "unfiltered"][0],
            "valid": evaluate(scorer, data.valid, n, filter_history=cfg.filter_history, **kw),
            "protocols": {p: metrics for p, (metrics, _) in test.items()},
            "ranks": {p: ranks for p, (_, ranks) in test.items()},
        }

    def trained(name: str, **overrides) -> dict[str, dict]:
        prefix = f"{name}/"
        cb = (lambda step, m: on_metrics(step, {prefix + k: v for k, v in m.items()})) if on_metrics else None
        variant = name if seed is None else f"{name}-seed{seed}"  # parallel benchmark workers: own checkpoints
        _, _, result = train_variant(params, inputs, paths.root, variant, on_metrics=cb, **overrides)
        return score(SALScorer(result.model))

    results: dict[str, dict] = {}
    if "mufasa" in wanted:
        if seed is None:
            results["mufasa"] = score(SALScorer(load_model(paths.sal_model_dir, inputs.fused)))
        else:
            results["mufasa"] = trained("mufasa")
    if "popularity" in wanted:
        results["popularity"] = score(PopularityScorer(data.train, n))
    if "copy_oracle" in wanted:
        results["copy_oracle"] = score(CopyOracleScorer(n))
    for name, overrides in SASREC_VARIANTS.items():
        if name not in wanted:
            continue
        cb = (lambda step, m, p=f"{name}/": on_metrics(step, {p + k: v for k, v in m.items()})) if on_metrics else None
        variant = name if seed is None else f"{name}-seed{seed}"
        model = train_sasrec(params, inputs, paths.root, on_metrics=cb, variant=variant, **overrides)[2].model
        results[name] = score(SALScorer(model))
    for name in ABLATIONS:
        if name in wanted:
            results[name] = trained(name, **ABLATIONS[name])
    return results


def run_evaluate(params, paths: ProjectPaths, on_metrics=None):

    results = evaluate_all(params, paths, on_metrics)
    cfg = params.evaluate
    payload = {
        "protocol": {
            "split": "test",
            "leave_one_out": True,
            "full_ranking": True,
            "filter_history": cfg.filter_history,
            "ties": "pessimistic",
        },
        "models": {name: r["test"] for name, r in results.items()},
        "valid": {name: r["valid"] for name, r in results.items()},
    }
    write_json(payload, paths.eval_metrics)
    table = metrics_table(payload["models"], title=f"Test split, full ranking, filter_history={cfg.filter_history}")
    write_text(table, paths.eval_table)
    plot = bar_plot(payload["models"], paths.eval_plot)
    metrics = {f"{name}_{k}": v for name, r in payload["models"].items() for k, v in r.items() if k != "n_users"}
    return StageResult(
        "evaluate",
        {"metrics": paths.eval_metrics, "table": paths.eval_table, "plot": plot},
        metrics,
        {"filter_history": cfg.filter_history, "baselines": list(cfg.baselines), "ablations": list(cfg.ablations)},
        {"table": table},
        artifacts=(paths.eval_table, plot, paths.eval_metrics),
    )


def run(params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return run_evaluate(params, paths, on_metrics)
