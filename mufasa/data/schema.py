"""The canonical tables every source is normalised into, and the error type for bad input.

Interactions (``data/raw/interactions.parquet``), one row per event, in source-file order:

| column    | type   | meaning                                                |
|-----------|--------|--------------------------------------------------------|
| user_id   | int64  | user identifier (any integer)                          |
| item_id   | int64  | item identifier; must exist in the items table         |
| timestamp | int64  | Unix seconds, >= 0 and not in the future               |
| rating    | float64| optional explicit feedback (kept, never required)      |

Items (``data/raw/items.parquet``), one row per item:

| column     | type   | meaning                                                        |
|------------|--------|----------------------------------------------------------------|
| item_id    | int64  | unique item identifier                                         |
| title      | string | non-empty title: the semantic anchor of the fusion layer       |
| genres     | string | ``|``-separated genre names (may be empty)                     |
| year       | Int64  | optional release year                                          |
| image_path | string | optional image path, relative to the configured image root     |

Any further item columns (extra text or categorical side information) are carried through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp")
OPTIONAL_INTERACTION_COLUMNS: tuple[str, ...] = ("rating",)
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title")
OPTIONAL_ITEM_COLUMNS: tuple[str, ...] = ("genres", "year", "image_path")
GENRE_SEPARATOR = "|"


@dataclass(frozen=True)
class Problem:
    """One violated rule: where (file, column, example rows) and what."""

    file: str
    column: str | None
    message: str
    rows: tuple[int, ...] = ()  # example 0-based data-row indices in ``file``
    row_label: str = "row"  # "line" where rows are reported as 1-based text-file lines
    examples: tuple[str, ...] = ()  # offending values, aligned with ``rows`` where known

    def __str__(self) -> str:
        where = f"{self.file}"
        if self.column is not None:
            where += f", column '{self.column}'"
        text = f"{where}: {self.message}"
        if self.rows:
            shown = ", ".join(
                f"{self.row_label} {r}" + (f" ({self.examples[i]!r})" if i < len(self.examples) else "")
                for i, r in enumerate(self.rows)
            )
            text += f" [e.g. {shown}]"
        return text


@dataclass
class DataValidationError(ValueError):
    """Raised when input data breaks the schema; lists every problem found (file, column, rows)."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{len(self.problems)} data problem(s):"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
