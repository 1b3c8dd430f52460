"""Run the ``data_checks`` GX suites on MUFASA's tables and turn failures into file/column/row problems."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

import pandas as pd

from data_checks import SuiteResult, features_suite, interactions_suite, items_suite, run_suite, sequences_suite
from mufasa.data.readers import TableSource
from mufasa.data.schema import DataValidationError, Problem


def now_unix(override: int | None = None) -> int:
    return int(override) if override is not None else int(time.time())


def check_items(items: pd.DataFrame, *, now: int) -> SuiteResult:
    year = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).year
    return run_suite(items, items_suite(now_year=year))


def check_interactions(interactions: pd.DataFrame, *, now: int, item_ids: Iterable[int] | None) -> SuiteResult:
    return run_suite(interactions, interactions_suite(now=now, item_ids=item_ids))


def check_sequences(summary: pd.DataFrame, *, item_ids: Iterable[int] | None) -> SuiteResult:
    return run_suite(summary, sequences_suite(item_ids=item_ids))


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
