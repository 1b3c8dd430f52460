"""Run the ``data_checks`` GX suites on MUFASA's tables and turn failures into file/column/row problems."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from data_checks import (
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


def now_unix(override: int | None = None) -> int:
    return int(override) if override is not None else int(time.time())


def check_items(items: pd.DataFrame, *, now: int) -> SuiteResult:
    year = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).year
    return run_suite(items, items_suite(now_year=year))


# Rows per GX validation batch for the (long) interactions table: bounds the suite's temporaries to a few
# hundred MB whatever the table size (GX materialises boolean masks and copies per expectation).
CHUNK_ROWS = 2_000_000


def frame_chunks(df: pd.DataFrame, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Consecutive row slices of ``df`` (views; labels kept); one empty slice for an empty frame."""
    for start in range(0, max(len(df), 1), rows):
        yield df.iloc[start : start + rows]


def check_interactions(
    interactions: pd.DataFrame | Iterable[pd.DataFrame], *, now: int, item_ids: Iterable[int] | None
) -> SuiteResult:
    """The interactions suite on a frame, or on consecutive chunks of one (labels = rows of the whole table)."""
    chunks = frame_chunks(interactions) if isinstance(interactions, pd.DataFrame) else interactions
    check_ids = item_ids is not None
    if check_ids:
        known = np.unique(np.asarray(item_ids))  # once per table, not per chunk
        chunks = (with_unknown_ids(c, ["item_id"], known) for c in chunks)
    return run_suite_chunks(chunks, interactions_suite(now=now, check_item_ids=check_ids))


def check_sequences(summary: pd.DataFrame, *, item_ids: Iterable[int] | None) -> SuiteResult:
    if item_ids is not None:
        summary = with_unknown_ids(summary, ["valid_item_id", "test_item_id"], item_ids)
    return run_suite(summary, sequences_suite(check_item_ids=item_ids is not None))


def check_features(summary: pd.DataFrame, *, n_items: int, min_image_coverage: float) -> SuiteResult:
    return run_suite(summary, features_suite(n_items=n_items, min_image_coverage=min_image_coverage))


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
