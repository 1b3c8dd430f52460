"""Run a suite against a pandas frame with an ephemeral GX context and return plain results.

Given a :class:`~data_checks.docs.DocsTarget`, each validation is also stored and rendered as a GX Data Docs page
(:mod:`data_checks.docs`); :attr:`SuiteResult.data_docs` is that page.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd

from data_checks.context import dataframe_batch_definition
from data_checks.docs import PAGE_EXAMPLES, ROW, DocsTarget
from data_checks.suites import reported_column

# Enough example rows to locate a problem, few enough that a 20M-row table does not ship its failures around.
EXAMPLES = 5


@dataclass(frozen=True)
class CheckResult:
    """One expectation's outcome."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    column: str | None
    success: bool
    unexpected_count: int = 0
    unexpected_index: tuple[Any, ...] = ()  # example frame-index labels of failing rows
    unexpected_values: tuple[Any, ...] = ()
    observed: Any = None
    error: str | None = None  # the expectation itself could not run (e.g. the column is missing)
    description: str | None = None  # what a failure means, from the suite


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    n_rows: int
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)
    # The GX Data Docs page of this validation (of its first failing chunk, else its first chunk); not part of
    # to_dict(): the JSON reports are DVC metrics and must not change with every run's page name.
    data_docs: Path | None = None

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.success)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "n_rows": self.n_rows,
            "n_expectations": len(self.checks),
            "n_failed": len(self.failures),
            "failures": [
                {
                    "expectation": c.expectation,
                    "column": c.column,
                    "unexpected_count": c.unexpected_count,
                    "examples": [_plain(v) for v in c.unexpected_values],
                    "error": c.error,
                    "description": c.description,
                }
                for c in self.failures
            ],
        }


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def _row_label(entry: Any) -> Any:
    """The row label of one ``partial_unexpected_index_list`` entry (``{column: value, ROW: label}``)."""
    return entry.get(ROW) if isinstance(entry, dict) else entry


def _publish(docs: DocsTarget, result, batch: str) -> Path | None:
    """The validation's Data Docs page, or None with a warning: the pages are a view of the result, so a site
    that cannot be written (full disk, read-only folder) never fails the validation itself."""
    try:
        return docs.publish(result, batch)
    except Exception as exc:  # noqa: BLE001 - GX raises many kinds; the warning names it
        warnings.warn(
            f"GX Data Docs: the page of suite {result.suite_name!r} ({batch}) was not written in "
            f"{docs.run.site.site_dir}: {type(exc).__name__}: {exc}",
            stacklevel=3,
        )
        return None


def run_suite(
    df: pd.DataFrame, suite: gx.ExpectationSuite, docs: DocsTarget | None = None, batch: str = "all rows"
) -> SuiteResult:
    """Validate ``df`` against ``suite``; failing rows are reported by their labels in ``df.index``.

    With ``docs``, the validation is stored and rendered as a Data Docs page named after ``batch``.
    """
    frame = df.copy(deep=False)  # no data copied: only the index is renamed, for GX to report rows by it
    frame.index = df.index.rename(ROW)
    batch_data = dataframe_batch_definition().get_batch(batch_parameters={"dataframe": frame})
    result = batch_data.validate(
        suite,
        result_format={
            "result_format": "SUMMARY",
            "partial_unexpected_count": max(EXAMPLES, PAGE_EXAMPLES),
            "unexpected_index_column_names": [ROW],
        },
    )
    checks = []
    for r in result.results:
        kwargs = r.expectation_config.kwargs
        info = r.exception_info or {}
        error = info.get("exception_message") if info.get("raised_exception") else None
        res = r.result or {}
        checks.append(
            CheckResult(
                expectation=r.expectation_config.type,
                column=reported_column(kwargs.get("column") or kwargs.get("column_A")),
                success=bool(r.success),
                unexpected_count=int(res.get("unexpected_count") or 0),
                unexpected_index=tuple(
                    _row_label(e) for e in (res.get("partial_unexpected_index_list") or ())[:EXAMPLES]
                ),
                unexpected_values=tuple(res.get("partial_unexpected_list") or ())[:EXAMPLES],
                observed=res.get("observed_value"),
                error=error,
                description=r.expectation_config.description,
            )
        )
    page = _publish(docs, result, batch) if docs is not None else None
    return SuiteResult(
        suite=suite.name, success=bool(result.success), n_rows=len(df), checks=tuple(checks), data_docs=page
    )


# Expectations that judge each row on its own, so a table passes iff every chunk of it passes. Suites with
# whole-column rules (uniqueness, means, exact row counts) must see the whole table: run_suite, not chunks.
ROW_WISE = frozenset(
    {
        "expect_column_to_exist",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_value_lengths_to_be_between",
        "expect_column_pair_values_to_be_equal",
        "expect_column_pair_values_a_to_be_greater_than_b",
    }
)
ROW_COUNT = "expect_table_row_count_to_be_between"  # checked on the total count


def run_suite_chunks(
    chunks: Iterable[pd.DataFrame], suite: gx.ExpectationSuite, docs: DocsTarget | None = None
) -> SuiteResult:
    """Validate a table given as consecutive chunks (bounded memory) against a row-wise ``suite``.

    Each chunk's index must hold its rows' labels in the whole table (e.g. the global row position), so failures
    name the same rows as :func:`run_suite` on the whole frame would. Counts are summed, the first
    :data:`EXAMPLES` failing rows kept, and the row-count rule is judged on the total. An empty iterable is an
    empty table. With ``docs``, each chunk is a Data Docs page of the same run (batch ``rows <first>-<last>``);
    the result links the first failing chunk's page.
    """
    kinds = [e.expectation_type for e in suite.expectations]
    not_row_wise = sorted({k for k in kinds if k not in ROW_WISE and k != ROW_COUNT})
    if not_row_wise:
        raise ValueError(f"suite {suite.name!r} has whole-table expectations {not_row_wise}: use run_suite")
    merged: list[CheckResult] | None = None
    n_rows = 0
    first_page = failed_page = None
    for chunk in chunks:
        if len(chunk) == 0 and n_rows:
            continue
        rows = f"rows {chunk.index[0]}-{chunk.index[-1]}" if len(chunk) else "no rows"
        part = run_suite(chunk, suite, docs, batch=rows)
        first_page = first_page or part.data_docs
        failed_page = failed_page or (None if part.success else part.data_docs)
        n_rows += part.n_rows
        merged = list(part.checks) if merged is None else [_merge(a, b) for a, b in zip(merged, part.checks)]
    if merged is None:  # no chunk at all: validate an empty frame (columns unknown)
        return run_suite(pd.DataFrame(), suite, docs, batch="no rows")
    rule = next((e for e in suite.expectations if e.expectation_type == ROW_COUNT), None)
    if rule is not None:
        low, high = rule.min_value, rule.max_value
        ok = (low is None or n_rows >= low) and (high is None or n_rows <= high)
        merged = [
            dataclasses.replace(c, success=ok, observed=n_rows) if c.expectation == ROW_COUNT else c for c in merged
        ]
    return SuiteResult(
        suite=suite.name, success=all(c.success for c in merged), n_rows=n_rows, checks=tuple(merged),
        data_docs=failed_page or first_page,
    )


def _merge(a: CheckResult, b: CheckResult) -> CheckResult:
    if a.expectation != b.expectation or a.column != b.column:
        raise RuntimeError(f"chunk results out of order: {a.expectation}/{a.column} vs {b.expectation}/{b.column}")
    return dataclasses.replace(
        a,
        success=a.success and b.success,
        unexpected_count=a.unexpected_count + b.unexpected_count,
        unexpected_index=(a.unexpected_index + b.unexpected_index)[:EXAMPLES],
        unexpected_values=(a.unexpected_values + b.unexpected_values)[:EXAMPLES],
        observed=a.observed if a.observed is not None else b.observed,
        error=a.error or b.error,
    )
