"""The ``gate`` stage: register the trained SAL recommender, compare, and promote only if the gate passes.

Steps: log the pyfunc into this stage's MLflow run and register it (alias ``challenger``); re-evaluate the
current ``champion`` (if any) on the same test split in this run; apply :func:`mufasa.evaluation.gate.decide`
with the ``gate`` thresholds to the ``evaluate`` stage's results; tag the version with the decision and its
reasons; move ``champion`` only on a pass. ``metrics/gate.json`` records the outcome. A refusal is not an
exception here (the registration and the tags are real and wanted); callers turn it into a failure: the CLI
exits 3, the Dagster ``promotion_gate`` check fails.
"""

from __future__ import annotations

import dataclasses

from mufasa.data.io import read_json, write_json
from mufasa.evaluation.gate import decide
from mufasa.evaluation.protocol import evaluate
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.train_sal import load_inputs


def input_example(inputs, n: int = 2):
    import pandas as pd

    h = inputs.data.test.histories
    rows = range(min(n, len(h)))
    return pd.DataFrame(
        {
            "item_ids": [inputs.data.vocab.to_ids(h.user(u)[0][-20:]).tolist() for u in rows],
            "timestamps": [h.user(u)[1][-20:].tolist() for u in rows],
        }
    )


def run_gate(params, paths: ProjectPaths, stage_run):
    from mufasa.pipeline import registry
    from mufasa.pipeline.stages import StageResult

    if stage_run is None or not getattr(stage_run, "tracking_uri", ""):
        raise RuntimeError("the gate registers the model in MLflow: run it with tracking on (not --no-track)")
    uri, cfg = stage_run.tracking_uri, params.gate
    eval_path = paths.metrics_dir / "eval.json"
    if not eval_path.is_file():
        raise FileNotFoundError(f"{eval_path} not found: run the evaluate stage first")
    results = read_json(eval_path)["models"]

    inputs = load_inputs(paths)
    previous = registry.alias_version(uri, cfg.model_name, registry.CHAMPION)
    champion_metrics = None
    if previous is not None:
        champion = registry.load_recommender(uri, f"models:/{cfg.model_name}@{registry.CHAMPION}")
        scorer = registry.CrossVocabScorer(champion, inputs.data.vocab)
        champion_metrics = evaluate(
            scorer, inputs.data.test, inputs.data.n_items, ks=tuple(params.evaluate.ks),
            filter_history=params.evaluate.filter_history,
        )
    reg = registry.log_and_register(
        stage_run.run_id,
        uri,
        cfg.model_name,
        paths.sal_model_dir,
        paths.fused_items,
        paths.raw_items,
        input_example(inputs),
    )
    decision = decide(
        results["mufasa"],
        popularity=results.get("popularity"),
        sasrec=results.get("sasrec"),
        champion=champion_metrics,
        metric=cfg.metric,
        min_gain_over_popularity=cfg.min_gain_over_popularity,
        min_gain_over_sasrec=cfg.min_gain_over_sasrec,
        max_regression_vs_champion=cfg.max_regression_vs_champion,
    )
    tags = {**decision.as_tags(), "gate.previous_champion": previous or "none", "gate.run_id": stage_run.run_id}
    registry.record_decision(uri, cfg.model_name, reg.version, tags, promote=decision.passed)
    outcome = {
        "passed": decision.passed,
        "decision": tags["gate.decision"],
        "model": cfg.model_name,
        "version": reg.version,
        "previous_champion": previous,
        "champion": reg.version if decision.passed else previous,
        "metric": cfg.metric,
        "candidate": decision.candidate,
        "reasons": list(decision.reasons),
        "checks": decision.checks,
    }
    write_json(outcome, paths.metrics_dir / "gate.json")
    report = write_run_report(paths, outcome)
    metrics = {"passed": float(decision.passed), "candidate": decision.candidate, "version": float(reg.version)}
    if champion_metrics is not None:
        metrics["champion_" + cfg.metric] = float(champion_metrics[cfg.metric])
    pngs = tuple(p for p in _REPORT_PLOTS if (paths.reports_dir / p).is_file())
    return StageResult(
        "gate",
        {"gate": paths.metrics_dir / "gate.json", "report": report},
        metrics,
        {"gate": dataclasses.asdict(cfg)},
        outcome,
        artifacts=(report, *(paths.reports_dir / p for p in pngs)),
    )


_REPORT_PLOTS = ("eval.png", "mfl/curves.png", "mfl/projection.png", "sal/curves.png")


def write_run_report(paths: ProjectPaths, outcome: dict):
    """``reports/run_report.md``: the evaluation table, the gate decision and its reasons, the plots."""
    from mufasa.data.io import write_text

    table = (paths.reports_dir / "eval.md").read_text() if (paths.reports_dir / "eval.md").is_file() else ""
    lines = [
        "# MUFASA retrain report",
        "",
        f"**Gate:** {outcome['model']} version {outcome['version']} **{outcome['decision']}**; champion is "
        f"version {outcome['champion']} (was {outcome['previous_champion']}).",
        "",
        *[f"- {r}" for r in outcome["reasons"]],
        "",
        "## Evaluation",
        "",
        table,
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in _REPORT_PLOTS if (paths.reports_dir / p).is_file()],
        "",
    ]
    return write_text("\n".join(lines), paths.reports_dir / "run_report.md")
