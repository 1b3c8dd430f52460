"""Run the ``data_checks`` GX suites on MUFASA's tables and turn failures into file/column/row problems.

Every check takes an optional :class:`~data_checks.DocsRun` (:func:`docs_run`): each validation then also becomes a
GX Data Docs page under ``reports/validation/data_docs/`` (:attr:`SuiteResult.data_docs`), which
:func:`log_data_docs` attaches to the stage's MLflow run.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from data_checks import (
    DataDocsSite,
    DocsRun,
    SuiteResult,
    features_suite,
    interactions_suite,
    items_suite,
    run_suite,
    run_suite_chunks,
    sequences_suite,
    with_unknown_ids,
)
from mufasa.data.readers import TableSource
from mufasa.data.schema import DataValidationError, Problem
from mufasa.pipeline.paths import ProjectPaths


def docs_run(paths: ProjectPaths, run_name: str) -> DocsRun:
    """A validation run named ``run_name`` (the stage, or the Dagster check) in the project's Data Docs site."""
    return DocsRun.start(DataDocsSite(paths.data_docs_dir, paths.validation_results_dir), run_name)


def asset_name(path, paths: ProjectPaths) -> str:
    """What a page says was validated: ``path`` relative to the project where it is inside it."""
    if str(path).startswith("<"):  # not a file, e.g. "<synthetic>"
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(paths.root))
    except ValueError:
        return str(path)


def log_data_docs(stage_run, results: Iterable[SuiteResult]) -> None:
    """Attach each result's Data Docs page to the stage's MLflow run (``data_docs/<suite>/``); before a failed
    suite raises, so a rejected input's pages are in the run too. ``stage_run`` None: not tracked."""
    if stage_run is None:
        return
    for result in results:
        if result.data_docs is not None and result.data_docs.is_file():
            stage_run.log_artifact(result.data_docs, f"data_docs/{result.suite}")


def now_unix(override: int | None = None) -> int:
    return int(override) if override is not None else int(time.time())


def check_items(items: pd.DataFrame, *, now: int, docs: DocsRun | None = None, asset: str = "items") -> SuiteResult:
    year = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).year
    return run_suite(items, items_suite(now_year=year), docs and docs.target(asset))


# Rows per GX validation batch for the (long) interactions table: bounds the suite's temporaries to a few
# hundred MB whatever the table size (GX materialises boolean masks and copies per expectation).
CHUNK_ROWS = 2_000_000


def frame_chunks(df: pd.DataFrame, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Consecutive row slices of ``df`` (views; labels kept); one empty slice for an empty frame."""
    for start in range(0, max(len(df), 1), rows):
        yield df.iloc[start : start + rows]


def check_interactions(
    interactions: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    now: int,
    item_ids: Iterable[int] | None,
    docs: DocsRun | None = None,
    asset: str = "interactions",
) -> SuiteResult:
    """The interactions suite on a frame, or on consecutive chunks of one (labels = rows of the whole table)."""
    chunks = frame_chunks(interactions) if isinstance(interactions, pd.DataFrame) else interactions
    check_ids = item_ids is not None
    if check_ids:
        known = np.unique(np.asarray(item_ids))  # once per table, not per chunk
        chunks = (with_unknown_ids(c, ["item_id"], known) for c in chunks)
    suite = interactions_suite(now=now, check_item_ids=check_ids)
    return run_suite_chunks(chunks, suite, docs and docs.target(asset))


def check_sequences(
    summary: pd.DataFrame, *, item_ids: Iterable[int] | None, docs: DocsRun | None = None,
    asset: str = "sequences (derived)",
) -> SuiteResult:
    if item_ids is not None:
        summary = with_unknown_ids(summary, ["valid_item_id", "test_item_id"], item_ids)
    return run_suite(summary, sequences_suite(check_item_ids=item_ids is not None), docs and docs.target(asset))


def check_features(
    summary: pd.DataFrame, *, n_items: int, min_image_coverage: float, docs: DocsRun | None = None,
    asset: str = "features (derived)",
) -> SuiteResult:
    suite = features_suite(n_items=n_items, min_image_coverage=min_image_coverage)
    return run_suite(summary, suite, docs and docs.target(asset))


def problems_of(result: SuiteResult, source: TableSource) -> list[Problem]:
    """Failures of ``result`` as problems that name ``source``'s file, the column and example source rows."""
    problems = []
    for check in result.failures:
        what = check.description or check.expectation
        if check.error:
            message = f"{what} ({check.error.splitlines()[0]})" if check.description is None else what
        elif check.unexpected_count:
            message = f"{what}: {check.unexpected_count} row(s) [{check.expectation}]"
        else:
            message = f"{what} [{check.expectation}; observed {check.observed!r}]"
        problems.append(
            source.problem(check.column, message, list(check.unexpected_index), list(check.unexpected_values))
        )
    return problems


def raise_for(results: Iterable[tuple[SuiteResult, TableSource]]) -> None:
    """Raise one :class:`DataValidationError` listing every failure of every suite, if any failed."""
    problems = [p for result, source in results for p in problems_of(result, source)]
    if problems:
        raise DataValidationError(problems)
