"""Run a suite against a pandas frame with an ephemeral GX context and return plain results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import pandas as pd

from data_checks.context import dataframe_batch_definition

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


def run_suite(df: pd.DataFrame, suite: gx.ExpectationSuite) -> SuiteResult:
    """Validate ``df`` against ``suite``; failing rows are reported by their labels in ``df.index``."""
    batch = dataframe_batch_definition().get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES})
    checks = []
    for r in result.results:
        kwargs = r.expectation_config.kwargs
        info = r.exception_info or {}
        error = info.get("exception_message") if info.get("raised_exception") else None
        res = r.result or {}
        checks.append(
            CheckResult(
                expectation=r.expectation_config.type,
                column=kwargs.get("column") or kwargs.get("column_A"),
                success=bool(r.success),
                unexpected_count=int(res.get("unexpected_count") or 0),
                unexpected_index=tuple(res.get("partial_unexpected_index_list") or ())[:EXAMPLES],
                unexpected_values=tuple(res.get("partial_unexpected_list") or ())[:EXAMPLES],
                observed=res.get("observed_value"),
                error=error,
                description=r.expectation_config.description,
            )
        )
    return SuiteResult(suite=suite.name, success=bool(result.success), n_rows=len(df), checks=tuple(checks))
