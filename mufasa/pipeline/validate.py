"""The ``validate`` stage: re-check the stored raw tables with the GX suites and write the report.

The interactions table is checked one Parquet batch at a time, so memory stays bounded at any size. Writes
``reports/validation/raw.json``; raises (exit 2, naming file, column and rows) when a suite fails.
:func:`check_raw` is the non-raising form the Dagster asset checks use. Every run also renders both suites as GX
Data Docs pages (``reports/validation/data_docs/``), logged to the stage's MLflow run even when a suite fails.
"""

from __future__ import annotations

from data_checks import SuiteResult
from mufasa.config import IngestConfig, Params
from mufasa.data.io import iter_parquet_frames, read_parquet, write_json
from mufasa.data.readers import TableSource
from mufasa.pipeline import validation
from mufasa.pipeline.inputs import require_raw
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult

__all__ = ["check_raw", "validate"]


def check_raw(cfg: IngestConfig, paths: ProjectPaths, write_report: bool = True, run_name: str = "validate",
              ) -> tuple[StageResult, dict[str, tuple[SuiteResult, TableSource]]]:
    """Run the items and interactions suites on the stored raw tables and (``write_report``) write the report;
    never raises on a failed suite: callers decide (:func:`validate` raises, the Dagster check reports and,
    with ``write_report=False``, writes no report). Either way both validations become Data Docs pages of a
    run named ``run_name`` (git-ignored HTML: never part of ``dvc.lock``)."""
    require_raw(paths)
    items = read_parquet(paths.raw_items)
    now = validation.now_unix(cfg.now)
    docs = validation.docs_run(paths, run_name)
    items_result = validation.check_items(
        items, now=now, docs=docs, asset=validation.asset_name(paths.raw_items, paths)
    )
    # The interactions table is read and checked one batch at a time: memory stays bounded at any size.
    chunks = iter_parquet_frames(paths.raw_interactions, validation.CHUNK_ROWS)
    inter_result = validation.check_interactions(
        chunks, now=now, item_ids=items["item_id"], docs=docs,
        asset=validation.asset_name(paths.raw_interactions, paths),
    )
    report = {"interactions": inter_result.to_dict(), "items": items_result.to_dict()}
    if write_report:
        write_json(report, paths.validation_report)
    results = {
        "interactions": (inter_result, TableSource(str(paths.raw_interactions), "parquet")),
        "items": (items_result, TableSource(str(paths.raw_items), "parquet")),
    }
    metrics = {
        "interactions_expectations_failed": float(len(inter_result.failures)),
        "items_expectations_failed": float(len(items_result.failures)),
    }
    info = {"report": report, "data_docs": {k: _relative(r.data_docs, paths) for k, (r, _) in results.items()}}
    return StageResult("validate", {"report": paths.validation_report}, metrics, {}, info), results


def _relative(page, paths: ProjectPaths) -> str | None:
    return None if page is None else str(page.relative_to(paths.root))


def validate(cfg: IngestConfig, paths: ProjectPaths, stage_run=None) -> StageResult:
    """Re-check the stored raw tables with the GX suites; write the report; log the Data Docs pages to
    ``stage_run``; raise if any suite fails."""
    result, suites = check_raw(cfg, paths)
    validation.log_data_docs(stage_run, (r for r, _ in suites.values()))
    validation.raise_for(suites.values())
    return result


def run(params: Params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return validate(params.ingest, paths, stage_run)
