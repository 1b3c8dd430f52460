"""Every class of bad input is rejected with the file, the column and example rows named, and the previous
valid output of ``ingest`` is left byte-for-byte untouched."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mufasa.data.schema import DataValidationError
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline.params import load_params
from mufasa.pipeline.paths import ProjectPaths
from tests.conftest import write_files_params

ITEMS_CSV = "item_id,title,genres,year\n1,Star Wars,Sci-Fi|Action,1977\n2,Toy Story,Animation,1995\n3,Heat,Crime,1995\n"
INTER_CSV = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{i},{1_000_000 + 10 * u + i}\n" for u in (1, 2) for i in (1, 2, 3)
)


def _setup(root: Path, inter: str | bytes = INTER_CSV, items: str | bytes = ITEMS_CSV, name="in", **files):
    folder = root / "data" / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, content in (("interactions.csv", inter), ("items.csv", items)):
        path = folder / fname
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    write_files_params(
        root, f"data/input/{name}/interactions.csv", f"data/input/{name}/items.csv", image_root=None, **files
    )
    return load_params(root / "params.yaml")


@pytest.fixture
def valid_project(tmp_path) -> ProjectPaths:
    paths = ProjectPaths(tmp_path)
    params = _setup(tmp_path, name="good")
    ingest_stage.ingest(params.ingest, paths)
    return paths


def _snapshot(paths: ProjectPaths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths.raw_dir.iterdir() if p.is_file()}


BAD_CASES = {
    # name: (interactions, items, extra file params, expected file, expected column, text in message)
    "missing_column": (
        "user_id,item_id\n1,1\n",
        ITEMS_CSV,
        {},
        "interactions.csv",
        "timestamp",
        "required column 'timestamp' is missing",
    ),
    "renamed_column": (
        INTER_CSV.replace("user_id", "userId"),
        ITEMS_CSV,
        {},
        "interactions.csv",
        "user_id",
        "found columns",
    ),
    "null_id": (INTER_CSV + ",2,1000099\n", ITEMS_CSV, {}, "interactions.csv", "user_id", "missing (null) id"),
    "non_integer_id": (INTER_CSV + "abc,2,1000099\n", ITEMS_CSV, {}, "interactions.csv", "user_id", "not an integer"),
    "fractional_id": (INTER_CSV + "1,2.5,1000099\n", ITEMS_CSV, {}, "interactions.csv", "item_id", "not an integer"),
    "non_numeric_timestamp": (
        INTER_CSV + "1,2,yesterday\n",
        ITEMS_CSV,
        {},
        "interactions.csv",
        "timestamp",
        "not a number",
    ),
    "negative_timestamp": (INTER_CSV + "1,2,-5\n", ITEMS_CSV, {}, "interactions.csv", "timestamp", "negative or in the future"),
    "future_timestamp": (
        INTER_CSV + "1,2,99999999999\n",
        ITEMS_CSV,
        {},
        "interactions.csv",
        "timestamp",
        "negative or in the future",
    ),
    "duplicate_item_ids": (INTER_CSV, ITEMS_CSV + "2,Toy Story again,Animation,1999\n", {}, "items.csv", "item_id", "duplicate item id"),
    "unknown_items": (INTER_CSV + "1,42,1000099\n", ITEMS_CSV, {}, "interactions.csv", "item_id", "not in the items table"),
    "empty_title": (INTER_CSV, ITEMS_CSV + "4,   ,Drama,1990\n", {}, "items.csv", "title", "title"),
    "wrong_delimiter": (INTER_CSV.replace(",", ";"), ITEMS_CSV, {}, "interactions.csv", "user_id", "';'-delimited"),
    "wrong_encoding": (
        INTER_CSV,
        "item_id,title,genres,year\n1,Am\xe9lie,Comedy,2001\n".encode("latin-1"),
        {},
        "items.csv",
        None,
        "not valid utf-8",
    ),
    "empty_file": ("", ITEMS_CSV, {}, "interactions.csv", None, "empty"),
    "header_only": ("user_id,item_id,timestamp\n", ITEMS_CSV, {}, "interactions.csv", None, "no data rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_rejected_with_location_and_prior_output_kept(valid_project, case):
    inter, items, extra, fname, column, text = BAD_CASES[case]
    before = _snapshot(valid_project)
    params = _setup(valid_project.root, inter, items, name="bad", **extra)
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(params.ingest, valid_project)
    message = str(err.value)
    matching = [p for p in err.value.problems if p.file.endswith(fname) and (column is None or p.column == column)]
    assert matching, f"no problem names {fname}/{column}: {message}"
    assert any(text.lower() in str(p).lower() for p in matching), message
    assert _snapshot(valid_project) == before, "a rejected input changed the previous output"


def test_problem_rows_point_at_the_source_lines(tmp_path):
    # Line 1 is the header, so the 7th data row (index 6) is line 8.
    params = _setup(tmp_path, INTER_CSV + "1,42,1000099\n", ITEMS_CSV)
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(params.ingest, ProjectPaths(tmp_path))
    (problem,) = err.value.problems
    assert problem.row_label == "line" and problem.rows == (8,)
    assert "line 8" in str(problem) and "'42'" in str(problem)


def test_every_problem_of_both_files_is_reported_at_once(tmp_path):
    params = _setup(tmp_path, INTER_CSV + "x,1,1\n", ITEMS_CSV.replace("title", "name"))
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(params.ingest, ProjectPaths(tmp_path))
    files = {Path(p.file).name for p in err.value.problems}
    assert files == {"interactions.csv", "items.csv"}


def test_rename_and_delimiter_params_fix_the_input(tmp_path):
    inter = INTER_CSV.replace("user_id", "userId").replace(",", ";")
    params = _setup(tmp_path, inter, ITEMS_CSV.replace(",", ";"), sep=";", rename={"userId": "user_id"})
    result = ingest_stage.ingest(params.ingest, ProjectPaths(tmp_path))
    assert result.metrics["n_interactions"] == 6 and result.metrics["n_items"] == 3


def test_latin1_file_reads_when_encoding_is_declared(tmp_path):
    items = "item_id,title,genres,year\n1,Am\xe9lie,Comedy,2001\n2,B,Drama,2000\n3,C,Drama,2000\n".encode("latin-1")
    params = _setup(tmp_path, INTER_CSV, items, encoding="latin-1")
    ingest_stage.ingest(params.ingest, ProjectPaths(tmp_path))
    titles = pd.read_parquet(ProjectPaths(tmp_path).raw_items)["title"].tolist()
    assert titles[0] == "Amélie"


def test_parquet_input_reports_rows_not_lines(tmp_path):
    folder = tmp_path / "data" / "input"
    folder.mkdir(parents=True)
    pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 9], "timestamp": [5, 6, 7]}).to_parquet(
        folder / "i.parquet"
    )
    pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"]}).to_parquet(folder / "t.parquet")
    write_files_params(tmp_path, "data/input/i.parquet", "data/input/t.parquet", image_root=None)
    with pytest.raises(DataValidationError) as err:
        ingest_stage.ingest(load_params(tmp_path / "params.yaml").ingest, ProjectPaths(tmp_path))
    (problem,) = err.value.problems
    assert problem.column == "item_id" and problem.row_label == "row" and problem.rows == (2,)
