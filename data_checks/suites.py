"""Expectation suites, one builder per table.

Builders take the few facts a rule needs that are not in the table itself (the current time for "no future
timestamps", the known item ids for referential integrity), so the suites stay pure and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from data_checks.context import context

# Referential integrity ("every item_id is in the items table") is checked on a derived column
# ``<column>__unknown`` that holds the value where it is NOT in the reference set and null elsewhere, with
# ``expect_column_values_to_be_null``: failures still name the rows and the offending ids. An
# ``expect_column_values_to_be_in_set`` with the catalogue as its value set is equivalent, but GX serialises the
# value set (pydantic) for every metric it resolves: with 50k items that cost ~30 s per suite on 20M events.
UNKNOWN_SUFFIX = "__unknown"


def unknown_column(column: str) -> str:
    return column + UNKNOWN_SUFFIX


def with_unknown_ids(df: pd.DataFrame, columns: Iterable[str], known: Iterable[int] | np.ndarray) -> pd.DataFrame:
    """A shallow copy of ``df`` (no data copied) plus ``<column>__unknown`` for each of ``columns``."""
    known = np.asarray(known)
    out = df.copy(deep=False)
    for col in columns:
        if col not in df.columns:
            continue  # the suite's column-exists expectation reports it
        values = df[col]
        bad = values.notna() & ~values.isin(known)
        out[unknown_column(col)] = values.where(bad).astype("Int64" if values.dtype.kind in "iuf" else "object")
    return out


def reported_column(column: str | None) -> str | None:
    """The source column a check is about (derived ``<column>__unknown`` columns report as ``<column>``)."""
    return column.removesuffix(UNKNOWN_SUFFIX) if column else column


# Release years outside this range are data errors in every catalogue we know of (cinema starts in the 1880s).
MIN_YEAR = 1870


def interactions_suite(*, now: int, check_item_ids: bool = False) -> gx.ExpectationSuite:
    """Interactions: ids present and integral, timestamps in [0, now], every item known to the items table.

    With ``check_item_ids`` the frame must carry ``item_id__unknown`` (see :func:`with_unknown_ids`).
    """
    context()  # GX builds suites only inside an active context
    suite = gx.ExpectationSuite(name="interactions")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the table has no rows"))
    for col in ("user_id", "item_id", "timestamp"):
        suite.add_expectation(gxe.ExpectColumnToExist(column=col, description="required column is missing"))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col, description="missing (null) values"))
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(
                column=col, type_list=["int64", "Int64"], description="values are not 64-bit integers"
            ))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value=0,
            max_value=int(now),
            description=f"timestamp is negative or in the future (after {int(now)})",
        ))
    if check_item_ids:
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeNull(
                column=unknown_column("item_id"),
                description="item_id names an item that is not in the items table",
            )
        )
    return suite


def items_suite(*, now_year: int) -> gx.ExpectationSuite:
    """Items: unique integral ids, non-empty titles, plausible years."""
    context()  # GX builds suites only inside an active context
    suite = gx.ExpectationSuite(name="items")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the table has no rows"))
    for col in ("item_id", "title", "genres"):
        suite.add_expectation(gxe.ExpectColumnToExist(column=col, description="required column is missing"))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="item_id", description="missing (null) item id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(
            column="item_id", type_list=["int64", "Int64"], description="item ids are not 64-bit integers"
        ))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="item_id", description="duplicate item id"))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="title", description="missing (null) title"))
    # Titles are the semantic anchor of the fusion layer: an empty one leaves an item without an anchor.
    suite.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1, description="empty title"))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="year",
            min_value=MIN_YEAR,
            max_value=int(now_year) + 5,
            description=f"implausible release year (outside {MIN_YEAR}..{int(now_year) + 5})",
        )
    )
    return suite


def sequences_suite(*, check_item_ids: bool = False) -> gx.ExpectationSuite:
    """Leave-one-out split, checked on its per-user summary (``mufasa.data.sequences.split_summary``).

    - order: each training history is non-decreasing in time (``train_min_step >= 0``);
    - completeness: every event lands in exactly one split (``n_split == n_events``);
    - no leakage: the validation target is at/after the last training event and the test target at/after the
      validation target; at most one validation and one test target per user;
    - with ``check_item_ids``: targets name known items (``valid_item_id__unknown``/``test_item_id__unknown``).
    """
    context()  # GX builds suites only inside an active context
    suite = gx.ExpectationSuite(name="sequences")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the table has no rows"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="user_id", description="a user appears twice in the summary"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="train_min_step", min_value=0, description="training history is not in time order"
        ))
    suite.add_expectation(gxe.ExpectColumnPairValuesToBeEqual(
            column_A="n_split", column_B="n_events", description="events lost or duplicated by the split"
        ))
    for col in ("n_valid", "n_test"):
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
                column=col, min_value=0, max_value=1, description="more than one target per user"
            ))
    suite.add_expectation(gxe.ExpectColumnPairValuesToBeEqual(
            column_A="n_valid", column_B="n_test", description="a user has a validation target but no test target"
        ))
    suite.add_expectation(
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="valid_ts",
            column_B="train_last_ts",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            description="leakage: validation target is older than a training event",
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="test_ts",
            column_B="valid_ts",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            description="leakage: test target is older than the validation target",
        )
    )
    if check_item_ids:
        for col in ("valid_item_id", "test_item_id"):
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeNull(
                    column=unknown_column(col), description="target item is not in the items table"
                )
            )
    return suite


def features_suite(*, n_items: int, min_image_coverage: float = 0.0) -> gx.ExpectationSuite:
    """Item features, checked on their per-item summary (``mufasa.pipeline.features.feature_summary``).

    One row per item, no NaN/inf in any modality, unit-norm title embeddings, an image mask that agrees with
    the image features, and image coverage at least ``min_image_coverage``.
    """
    context()
    suite = gx.ExpectationSuite(name="features")
    suite.add_expectation(
        gxe.ExpectTableRowCountToEqual(value=int(n_items), description="feature rows do not match the item count")
    )
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="item_id", description="duplicate item id"))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="n_nonfinite", min_value=0, max_value=0, description="NaN or inf in an item's features"
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="text_norm", min_value=0.999, max_value=1.001, description="title embedding is not unit-norm"
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(
            column="image_mask_consistent",
            value_set=[True],
            description="image mask disagrees with the features (masked-in zero vector or masked-out data)",
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnMeanToBeBetween(
            column="has_image",
            min_value=float(min_image_coverage),
            max_value=1.0,
            description=f"image coverage below features.min_image_coverage={min_image_coverage}",
        )
    )
    return suite


SUITES: dict[str, Callable[..., gx.ExpectationSuite]] = {
    "interactions": interactions_suite,
    "items": items_suite,
    "sequences": sequences_suite,
    "features": features_suite,
}
