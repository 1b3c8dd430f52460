"""The ``evaluate`` stage: MUFASA against its baselines and ablations, same split, same run.

Every model is scored with the full-ranking leave-one-out protocol of :mod:`mufasa.evaluation.protocol` on the
test split (histories = train + validation event). Baselines and ablations are trained here on the same
training histories; ablations with MUFASA's objective and budget (``train_sal.train``):

- ``popularity``: training-set item counts;
- ``sasrec``: the reference SASRec (:mod:`mufasa.models.sasrec`: ID-only, RecBole's settings and early
  stopping, ``evaluate.sasrec``), the baseline the gate demands MUFASA beats;
- ``mfl_off``: SAL on ID embeddings only; ``dense_attention``: MUFASA with dense causal attention instead of the
  sparse branches; ``window_only`` / ``no_selection`` / ``no_compression``: SAL with branches removed.

Outputs: ``metrics/eval.json`` (DVC metrics; per model, test and validation), ``reports/eval.md`` (table) and
``reports/eval.png`` (bar plot of test NDCG@10).
"""

from __future__ import annotations

from mufasa.data.io import write_json, write_text
from mufasa.evaluation.protocol import PopularityScorer, evaluate
from mufasa.evaluation.report import bar_plot, metrics_table
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.train_sal import SALScorer, load_inputs, load_model, train_sasrec, train_variant

ABLATIONS: dict[str, dict] = {
    "mfl_off": {"use_fused": False},
    "dense_attention": {"attention": "dense"},
    "window_only": {"use_compressed": False, "use_selected": False},
    "no_selection": {"use_selected": False},
    "no_compression": {"use_compressed": False},
}


def evaluate_all(params, paths: ProjectPaths, on_metrics=None, seed: int | None = None) -> dict[str, dict]:
    """{model name: {"test": metrics, "valid": metrics}} for MUFASA (from ``models/sal``), baselines, ablations.

    ``seed`` (benchmark use) retrains MUFASA too instead of loading the stored model, with that seed for every
    trained model.
    """
    cfg = params.evaluate
    inputs = load_inputs(paths)
    data, n = inputs.data, inputs.data.n_items
    if seed is not None:
        params = _with_seed(params, seed)

    def score(scorer) -> dict[str, dict]:
        kw = {"ks": tuple(cfg.ks), "filter_history": cfg.filter_history, "batch_size": cfg.batch_size}
        return {"test": evaluate(scorer, data.test, n, **kw), "valid": evaluate(scorer, data.valid, n, **kw)}

    def trained(name: str, **overrides) -> dict[str, dict]:
        use_fused = overrides.pop("use_fused", True)
        prefix = f"{name}/"
        cb = (lambda step, m: on_metrics(step, {prefix + k: v for k, v in m.items()})) if on_metrics else None
        _, _, result = train_variant(params, inputs, paths.root, name, on_metrics=cb, use_fused=use_fused, **overrides)
        return score(SALScorer(result.model))

    results: dict[str, dict] = {}
    if seed is None:
        results["mufasa"] = score(SALScorer(load_model(paths.root / "models" / "sal", inputs.fused)))
    else:
        results["mufasa"] = trained("mufasa")
    if "popularity" in cfg.baselines:
        results["popularity"] = score(PopularityScorer(data.train, n))
    if "sasrec" in cfg.baselines:
        cb = (lambda step, m: on_metrics(step, {f"sasrec/{k}": v for k, v in m.items()})) if on_metrics else None
        results["sasrec"] = score(SALScorer(train_sasrec(params, inputs, paths.root, on_metrics=cb)[2].model))
    for name in cfg.ablations:
        results[name] = trained(name, **ABLATIONS[name])
    return results


def _with_seed(params, seed: int):
    import dataclasses

    sal = params.train_sal
    new_sal = dataclasses.replace(sal, train={**sal.train, "seed": seed})
    return dataclasses.replace(params, train_sal=new_sal)


def run_evaluate(params, paths: ProjectPaths, on_metrics=None):
    from mufasa.pipeline.stages import StageResult

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
    write_json(payload, paths.metrics_dir / "eval.json")
    table = metrics_table(payload["models"], title=f"Test split, full ranking, filter_history={cfg.filter_history}")
    write_text(table, paths.reports_dir / "eval.md")
    plot = bar_plot(payload["models"], paths.reports_dir / "eval.png")
    metrics = {f"{name}_{k}": v for name, r in payload["models"].items() for k, v in r.items() if k != "n_users"}
    return StageResult(
        "evaluate",
        {"metrics": paths.metrics_dir / "eval.json", "table": paths.reports_dir / "eval.md", "plot": plot},
        metrics,
        {"filter_history": cfg.filter_history, "baselines": list(cfg.baselines), "ablations": list(cfg.ablations)},
        {"table": table},
        artifacts=(paths.reports_dir / "eval.md", plot, paths.metrics_dir / "eval.json"),
    )
