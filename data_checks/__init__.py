"""Great Expectations (GX Core 1.x) suites for MUFASA's tables, and a runner.

One builder function per table in :mod:`data_checks.suites`; :func:`data_checks.runner.run_suite` validates a
pandas frame against a suite and returns plain results; :mod:`data_checks.docs` renders each validation as GX
Data Docs. This package imports only GX and pandas: the pipeline
(``mufasa.pipeline.validation``), the DVC ``validate`` stage and the Dagster asset checks all call it, so every
path validates the same way.
"""

from data_checks.docs import DataDocsSite, DocsRun, DocsTarget
from data_checks.runner import CheckResult, SuiteResult, run_suite, run_suite_chunks
from data_checks.suites import (
    SUITES,
    features_suite,
    interactions_suite,
    items_suite,
    sequences_suite,
    with_unknown_ids,
)

__all__ = [
    "SUITES",
    "CheckResult",
    "DataDocsSite",
    "DocsRun",
    "DocsTarget",
    "SuiteResult",
    "features_suite",
    "interactions_suite",
    "items_suite",
    "run_suite",
    "run_suite_chunks",
    "sequences_suite",
    "with_unknown_ids",
]
