"""Blocking asset checks: the GX suites of ``data_checks/`` on the stored tables.

A failed check stops every downstream asset of the run. Each check puts its numbers (rows, expectations run,
failures with example values) in metadata, and links the GX Data Docs page of its validation (``data_docs``: a
``file://`` URL the UI opens; ``data_docs_path``: the page relative to the project; ``data_docs_index``: the site's
index of recent validations). The raw-table checks run the DVC ``validate`` stage's function, so
its report is written and recorded in ``dvc.lock`` exactly as ``dvc repro`` would.
"""


from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    asset_check,
    multi_asset_check,
)

from data_checks import SuiteResult
from mufasa.pipeline import features as features_stage
from mufasa.pipeline import sequences as sequences_stage
from mufasa.pipeline import train_mfl as train_mfl_stage
from mufasa.pipeline import validate as validate_stage
from mufasa.pipeline.validation import problems_of
from orchestration.defs.assets import (
    FUSED_ITEM_VECTORS,
    REGISTERED_MODEL,
    ITEM_FEATURES,
    RAW_INTERACTIONS,
    RAW_ITEMS,
    USER_SEQUENCES,
)
from orchestration.defs.resources import MufasaProject


def _run_name(context: AssetCheckExecutionContext) -> str:
    """The GX run name of a check's validation: the Dagster run it belongs to."""
    return f"dagster-{context.run.run_id[:8]}"


def _docs_metadata(result: SuiteResult, root: Path) -> dict:
    """Links to the validation's Data Docs page and the site's index (none when no page was built)."""
    page = result.data_docs
    if page is None:
        return {}
    index = next((p / "index.html" for p in page.parents if (p / "index.html").is_file()), None)
    meta = {"data_docs": MetadataValue.url(page.as_uri())}
    try:
        meta["data_docs_path"] = MetadataValue.path(str(page.relative_to(root)))
    except ValueError:
        meta["data_docs_path"] = MetadataValue.path(str(page))
    if index is not None:
        meta["data_docs_index"] = MetadataValue.url(index.as_uri())
    return meta


def _result(result: SuiteResult, source, check_name: str, asset_key, root: Path) -> AssetCheckResult:
    problems = [str(p) for p in problems_of(result, source)]
    return AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=result.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "rows": result.n_rows,
            "expectations": len(result.checks),
            "failed_expectations": len(result.failures),
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            **_docs_metadata(result, root),
        },
        description=None if result.success else "; ".join(problems)[:2000],
    )


@multi_asset_check(
    specs=[
        AssetCheckSpec("interactions_suite", asset=RAW_INTERACTIONS, blocking=True),
        AssetCheckSpec("items_suite", asset=RAW_ITEMS, blocking=True),
    ],
    name="raw_data_suites",
)
def raw_data_suites(context: AssetCheckExecutionContext, project: MufasaProject) -> Iterator[AssetCheckResult]:
    """GX interactions + items suites on ``data/raw`` (what the DVC ``validate`` stage runs). No report is written
    and nothing is committed to DVC (the ``ingest`` asset runs the validate stage and records it); the Data Docs
    pages of this check's run (git-ignored, outside DVC) are linked in the metadata."""
    _, results = validate_stage.check_raw(
        project.params().ingest, project.paths, write_report=False, run_name=_run_name(context)
    )
    inter, inter_src = results["interactions"]
    items, items_src = results["items"]
    root = project.paths.root
    yield _result(inter, inter_src, "interactions_suite", RAW_INTERACTIONS, root)
    yield _result(items, items_src, "items_suite", RAW_ITEMS, root)


@asset_check(asset=USER_SEQUENCES, name="sequences_suite", blocking=True)
def sequences_suite(context: AssetCheckExecutionContext, project: MufasaProject) -> AssetCheckResult:
    """GX sequences suite on the stored split: time order, every event in one split, no leakage."""
    from mufasa.data.readers import TableSource

    result = sequences_stage.check_sequences(project.paths, run_name=_run_name(context))
    source = TableSource(str(project.paths.sequences_dir), "parquet")
    return _result(result, source, "sequences_suite", USER_SEQUENCES, project.paths.root)


@asset_check(asset=ITEM_FEATURES, name="features_suite", blocking=True)
def features_suite(context: AssetCheckExecutionContext, project: MufasaProject) -> AssetCheckResult:
    """GX features suite on the stored features: one row per item, finite, unit titles, mask agreement."""
    from mufasa.data.readers import TableSource

    coverage = project.params().features.min_image_coverage
    result = features_stage.check_features(project.paths, min_image_coverage=coverage, run_name=_run_name(context))
    source = TableSource(str(project.paths.features_dir), "parquet")
    return _result(result, source, "features_suite", ITEM_FEATURES, project.paths.root)


@asset_check(asset=FUSED_ITEM_VECTORS, name="fused_space_not_collapsed", blocking=True)
def fused_space_not_collapsed(context: AssetCheckExecutionContext, project: MufasaProject) -> AssetCheckResult:
    """The fused space keeps structure: effective rank and title-neighbour overlap well above collapse/chance."""
    health = train_mfl_stage.fused_space_health(project.paths)
    return AssetCheckResult(
        passed=health["passed"],
        severity=AssetCheckSeverity.ERROR,
        metadata={k: v for k, v in health.items() if k != "passed" and not isinstance(v, str)},
        description=health.get("reason"),
    )


@asset_check(asset=REGISTERED_MODEL, name="promotion_gate")
def promotion_gate(context: AssetCheckExecutionContext, project: MufasaProject) -> AssetCheckResult:
    """Fails (ERROR) when the gate refused to promote the new version: visible in the UI, never silent."""
    import json

    path = project.paths.gate_metrics
    if not path.is_file():
        return AssetCheckResult(passed=False, description=f"{path} missing: the gate did not run")
    gate = json.loads(path.read_text())
    return AssetCheckResult(
        passed=bool(gate["passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={  # the decision only: the version number is the registered_model asset's metadata
            "candidate_key": str(gate.get("candidate_key")),
            "compared_with_champion": str(gate.get("compared_with_champion")),
            "reasons": MetadataValue.md("\n".join(f"- {r}" for r in gate["reasons"])),
        },
        description=f"candidate {gate.get('candidate_key')}: {gate['decision']}",
    )


CHECKS = [raw_data_suites, sequences_suite, features_suite, fused_space_not_collapsed, promotion_gate]
