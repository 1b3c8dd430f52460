"""The ``gate`` stage: decide whether the trained SAL recommender may become ``champion``; register only when asked.

Steps: re-evaluate the current ``champion`` (if any) on the same test split in this run; apply
:func:`mufasa.evaluation.gate.decide` with the ``gate`` thresholds to the ``evaluate`` stage's results; write the
decision to ``metrics/gate.json`` and ``reports/run_report.md``. Only with ``register=True`` (the Dagster
``retrain`` asset, ``mufasa stage gate --register``) is the pyfunc logged into this stage's MLflow run and
registered as a new version created together with its decision tags (one registry call: no version ever exists
without them), ``challenger`` pointed at it and, only on a pass, ``champion``.

Why registration is opt-in: ``dvc repro`` and ``dvc exp run`` run this stage too, and an experiment must never
register a version or move ``champion`` (promotion belongs to the Dagster retrain and ``mufasa promote``). The
files this stage writes are the decision alone (no version number, no resulting champion), so they, and the
``dvc.lock`` entry that records them, are the same whether or not registration happened: a Dagster run that
registered and a ``dvc repro`` that did not leave the same lock.

A refusal is not an exception here (the decision, and a registration when asked, are real and wanted); callers
turn it into a failure: the CLI exits 3 (unless told ``--no-fail-on-refusal``, as ``dvc.yaml`` does so that a
refused experiment is still recorded), the Dagster ``promotion_gate`` check fails.

Outages: every registry step runs inside :func:`registry_phase`, so an unreachable registry is one
:class:`~mufasa.pipeline.tracking.TrackingUnavailable` that says what state it left (nothing registered, or a
version registered with its decision whose aliases a rerun sets). A version carries ``gate.candidate_key`` (a
digest of the model files, the evaluation and the gate rule): a rerun of the same candidate finds it and
completes it with the recorded outcome instead of registering a duplicate, and a run that only records reuses
that outcome too (the same candidate always gets the same decision).
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager

from mufasa.data.io import file_md5, read_json, tree_md5, write_json
from mufasa.evaluation.gate import decide
from mufasa.evaluation.protocol import evaluate
from mufasa.pipeline.datasets import data_version_table, stage_datasets
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult
from mufasa.pipeline.sal_model import load_inputs


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


def candidate_key(paths: ProjectPaths, cfg) -> str:
    """What identifies one gating: the model files, the fused vectors, the catalogue, the evaluation, the rule."""
    import hashlib

    parts = [tree_md5(paths.sal_model_dir), file_md5(paths.fused_items), file_md5(paths.raw_items),
             file_md5(paths.eval_metrics), json.dumps(dataclasses.asdict(cfg), sort_keys=True)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@contextmanager
def registry_phase(uri: str, what: str, state: str):
    """Turn a registry outage during ``what`` into one clear error that says what state the registry is in."""
    from mufasa.pipeline.tracking import TrackingUnavailable, is_outage, redact

    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        if not is_outage(exc):
            raise
        raise TrackingUnavailable(
            f"the model registry at {redact(uri)} failed while {what} ({type(exc).__name__}); {state}."
        ) from exc


def _decision_record(cfg, key: str, recorded: dict) -> dict:
    """What ``metrics/gate.json`` holds: the decision and its evidence, never the registry's state after it.

    ``recorded`` is a fresh decision or the ``gate.outcome`` tag of an already registered version (versions
    registered before registration was opt-in also carry ``version``/``champion``/``previous_champion``).
    """
    record = {
        "model": cfg.model_name,
        "candidate_key": key,
        "passed": bool(recorded["passed"]),
        "decision": "promote" if recorded["passed"] else "refuse",
        "metric": recorded["metric"],
        "candidate": recorded["candidate"],
        "reasons": list(recorded["reasons"]),
        "checks": recorded["checks"],
        "compared_with_champion": recorded.get("compared_with_champion", recorded.get("previous_champion")),
    }
    if f"champion_{recorded['metric']}" in recorded:
        record[f"champion_{recorded['metric']}"] = recorded[f"champion_{recorded['metric']}"]
    return record


def run_gate(params, paths: ProjectPaths, stage_run, register: bool = False):
    """Decide, record the decision, and, with ``register``, register the version and set the aliases."""
    from mufasa.pipeline import registry

    if stage_run is None or not getattr(stage_run, "tracking_uri", ""):
        raise RuntimeError(
            "the gate compares with the registered champion in MLflow: run it with tracking on (not --no-track)"
        )
    uri, cfg = stage_run.tracking_uri, params.gate
    eval_path = paths.eval_metrics
    if not eval_path.is_file():
        raise FileNotFoundError(f"{eval_path} not found: run the evaluate stage first")
    evaluation = read_json(eval_path)
    results = evaluation["models"]

    inputs = load_inputs(paths)
    key = candidate_key(paths, cfg)
    with registry_phase(uri, "reading the registry", "nothing was registered; champion unchanged"):
        existing = registry.find_candidate(uri, cfg.model_name, key)
        previous = registry.alias_version(uri, cfg.model_name, registry.CHAMPION)
    if existing is not None:
        # This candidate was gated and registered before (a rerun after a failure part-way, or a DVC run of the
        # candidate a Dagster retrain registered): its recorded decision stands; never register a duplicate.
        with registry_phase(uri, "reading the registry", "nothing was registered; champion unchanged"):
            recorded = registry.version_tags(uri, cfg.model_name, existing)
        record = _decision_record(cfg, key, json.loads(recorded["gate.outcome"]))
    else:
        champion_metrics = None
        if previous is not None:
            with registry_phase(uri, "loading the champion", "nothing was registered; champion unchanged"):
                champion = registry.load_recommender(uri, f"models:/{cfg.model_name}@{registry.CHAMPION}")
            scorer = registry.CrossVocabScorer(champion, inputs.data.vocab)
            champion_metrics = evaluate(
                scorer, inputs.data.test, inputs.data.n_items, ks=tuple(params.evaluate.ks),
                filter_history=params.evaluate.filter_history,
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
        fresh = {
            "passed": decision.passed, "metric": cfg.metric, "candidate": decision.candidate,
            "reasons": list(decision.reasons), "checks": decision.checks, "compared_with_champion": previous,
        }
        if champion_metrics is not None:
            fresh["champion_" + cfg.metric] = float(champion_metrics[cfg.metric])
        record = _decision_record(cfg, key, fresh)
        if register:
            tags = {
                **decision.as_tags(),
                "gate.previous_champion": previous or "none",
                "gate.run_id": stage_run.run_id,
                registry.CANDIDATE_TAG: key,
                "gate.outcome": json.dumps(record, sort_keys=True),
            }
            card = registry.model_card(
                cfg.model_name, record, results, evaluation.get("protocol", {}),
                data_version_table(stage_datasets("gate", paths), paths.root), stage_run.run_id, stage_run.url,
            )
            with registry_phase(uri, "registering the model", "no version was created; champion unchanged"):
                existing = registry.log_and_register(
                    stage_run.run_id,
                    uri,
                    cfg.model_name,
                    paths.sal_model_dir,
                    paths.fused_items,
                    paths.raw_items,
                    input_example(inputs),
                    tags=tags,
                    description=card,
                ).version
    if register:
        with registry_phase(
            uri, "setting the aliases",
            f"version {existing} is registered with its decision; champion is unchanged unless the alias was set. "
            "Rerun `mufasa stage gate --register` to complete it (the same version is reused)",
        ):
            registry.record_decision(uri, cfg.model_name, existing, promote=record["passed"])
        champion = existing if record["passed"] else previous
    else:
        champion = previous  # nothing moved
    write_json(record, paths.gate_metrics)
    report = write_run_report(paths, record)
    metrics = {"passed": float(record["passed"]), "candidate": record["candidate"], "registered": float(register)}
    if existing is not None:
        metrics["version"] = float(existing)
    if "champion_" + cfg.metric in record:
        metrics["champion_" + cfg.metric] = record["champion_" + cfg.metric]
    info = {**record, "registered": register, "version": existing, "previous_champion": previous,
            "champion": champion}
    pngs = tuple(p for p in _REPORT_PLOTS if (paths.reports_dir / p).is_file())
    return StageResult(
        "gate",
        {"gate": paths.gate_metrics, "report": report},
        metrics,
        {"gate": dataclasses.asdict(cfg)},
        info,
        artifacts=(report, *(paths.reports_dir / p for p in pngs)),
    )


_REPORT_PLOTS = ("eval.png", "mfl/curves.png", "mfl/projection.png", "sal/curves.png")


def write_run_report(paths: ProjectPaths, record: dict):
    """``reports/run_report.md``: the evaluation table, the gate decision and its reasons, the plots.

    Like ``metrics/gate.json`` it holds the decision only (no version number): whether the candidate was then
    registered is the registry's record (the version's ``gate.*`` tags), not this report's.
    """
    from mufasa.data.io import write_text

    table = (paths.eval_table).read_text() if (paths.eval_table).is_file() else ""
    compared = record["compared_with_champion"]
    verdict = "**promote**: it may become champion" if record["passed"] else "**refused**: it may not become champion"
    lines = [
        "# MUFASA retrain report",
        "",
        f"**Gate:** candidate `{record['candidate_key']}` ({record['metric']} {record['candidate']:.4f}) {verdict} "
        f"of {record['model']} (compared with "
        + (f"champion version {compared})." if compared is not None else "no champion: none was registered).")
        + " Registering it and moving the aliases is `mufasa stage gate --register`'s (the Dagster retrain's) "
        "work; `dvc repro` and `dvc exp run` only record the decision.",
        "",
        *[f"- {r}" for r in record["reasons"]],
        "",
        "## Evaluation",
        "",
        table,
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in _REPORT_PLOTS if (paths.reports_dir / p).is_file()],
        "",
    ]
    return write_text("\n".join(lines), paths.run_report)


def run(params, paths: ProjectPaths, on_metrics=None, stage_run=None, *, register: bool = False) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`); ``register``: see the module."""
    return run_gate(params, paths, stage_run, register=register)
