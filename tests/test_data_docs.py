"""GX Data Docs: every validation renders a page (failing expectation, example values and rows), the site keeps a
bounded history, and the stages log their pages to MLflow even when a suite fails."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from data_checks import DataDocsSite, DocsRun, run_suite, run_suite_chunks
from data_checks.suites import interactions_suite, items_suite
from mufasa.data.io import write_parquet
from mufasa.data.schema import DataValidationError
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline import validate as validate_stage
from mufasa.pipeline.params import load_params
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.tracking import Tracker
from tests.conftest import write_files_params

ITEMS_CSV = "item_id,title,genres,year\n1,Star Wars,Sci-Fi,1977\n2,Toy Story,Animation,1995\n3,Heat,Crime,1995\n"
INTER_CSV = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{i},{1_000_000 + 10 * u + i}\n" for u in (1, 2) for i in (1, 2, 3)
)


class _Tables(HTMLParser):
    """Every <table> of a page (nested ones too) as rows of cell texts, header row included."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._open: list[list[list[str]]] = []  # tables being read, innermost last
        self._cells: list[list[str]] = []  # texts of the cells being read, innermost last

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._open.append([])
            self.tables.append(self._open[-1])
        elif tag == "tr" and self._open:
            self._open[-1].append([])
        elif tag in ("td", "th"):
            self._cells.append([])

    def handle_endtag(self, tag):
        if tag == "table" and self._open:
            self._open.pop()
        elif tag in ("td", "th") and self._cells:
            text = " ".join("".join(self._cells.pop()).split())
            if self._open and self._open[-1]:
                self._open[-1][-1].append(text)

    def handle_data(self, data):
        for cell in self._cells:
            cell.append(data)


def unexpected_tables(page: Path) -> list[list[list[str]]]:
    """The pages' tables of unexpected values: header (value, Count, row) then one row per value."""
    parser = _Tables()
    parser.feed(page.read_text())
    return [t for t in parser.tables if t and t[0][1:] == ["Count", "row"]]


def _bad_input_project(root: Path, inter: str, items: str) -> ProjectPaths:
    folder = root / "data" / "input"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(inter)
    (folder / "items.csv").write_text(items)
    write_files_params(root, "data/input/interactions.csv", "data/input/items.csv", image_root=None)
    return ProjectPaths(root)


def test_rejected_input_page_shows_the_failing_expectation_and_rows(tmp_path):
    # data row 3 repeats item 2 (row 1); data row 6 of the interactions names item 42, which does not exist
    paths = _bad_input_project(
        tmp_path, INTER_CSV + "1,42,1000099\n", ITEMS_CSV + "2,Toy Story again,Animation,1999\n"
    )
    with pytest.raises(DataValidationError):
        ingest_stage.ingest(load_params(paths.params).ingest, paths)

    (items_page,) = (paths.data_docs_dir / "validations" / "items" / "ingest").rglob("*.html")
    html = items_page.read_text()
    assert "expect_column_values_to_be_unique" in html and "duplicate item id" in html
    assert "data/input/items.csv" in html  # the page names what it validated
    (table,) = unexpected_tables(items_page)
    assert table[1] == ["2", "2", "1, 3"]  # value 2, twice, at data rows 1 and 3

    (inter_page,) = (paths.data_docs_dir / "validations" / "interactions" / "ingest").rglob("*.html")
    assert "expect_column_values_to_be_null" in inter_page.read_text()
    (table,) = unexpected_tables(inter_page)
    assert table[1] == ["42", "1", "6"]
    # the index lists both validations of the run, both failed
    index = (paths.data_docs_dir / "index.html").read_text()
    assert items_page.relative_to(paths.data_docs_dir).as_posix() in index
    assert inter_page.relative_to(paths.data_docs_dir).as_posix() in index


def test_passing_validation_builds_a_page_and_the_report_stays_the_same(project):
    params = load_params(project.params)
    ingest_stage.ingest(params.ingest, project)
    result = validate_stage.validate(params.ingest, project)
    report = project.validation_report.read_bytes()
    pages = result.info["data_docs"]
    assert set(pages) == {"interactions", "items"}
    for suite, rel in pages.items():
        page = project.root / rel
        assert page.is_file() and f"validations/{suite}/validate/" in rel
        assert unexpected_tables(page) == []  # nothing failed, nothing to show
        assert "Succeeded" in page.read_text()
    # a second run adds pages but rewrites the DVC-versioned JSON report byte for byte
    again = validate_stage.validate(params.ingest, project)
    assert again.info["data_docs"] != pages and project.validation_report.read_bytes() == report
    assert "data_docs" not in report.decode()


def test_failed_stage_logs_its_pages_to_the_mlflow_run(project, tmp_path):
    params = load_params(project.params)
    ingest_stage.ingest(params.ingest, project)
    items = pd.read_parquet(project.raw_items)
    write_parquet(pd.concat([items, items.head(1)], ignore_index=True), project.raw_items)  # a duplicate item id
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", artifact_root=tmp_path / "artifacts")
    with pytest.raises(DataValidationError):
        with tracker.stage_run("validate", "p1") as run:
            validate_stage.run(params, project, stage_run=run)
    client = MlflowClient(tracker.tracking_uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    folders = ("data_docs/items", "data_docs/interactions")
    logged = {a.path for d in folders for a in client.list_artifacts(run.run_id, d)}
    assert {p.rsplit("/", 1)[0] for p in logged} == set(folders)
    items_page = Path(client.download_artifacts(run.run_id, next(p for p in logged if "/items/" in p), str(tmp_path)))
    assert "expect_column_values_to_be_unique" in items_page.read_text() and unexpected_tables(items_page)


def test_chunked_table_links_the_first_failing_chunk_and_the_site_keeps_the_latest_runs(tmp_path):
    site = DataDocsSite(tmp_path / "site", tmp_path / "results", keep=2)
    frame = pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [1, 2, 3, 4], "timestamp": [1, 2, 3, -4]})
    suite = interactions_suite(now=10**10)
    run = DocsRun.start(site, "validate")
    result = run_suite_chunks([frame.iloc[:2], frame.iloc[2:]], suite, run.target("interactions.parquet"))
    assert not result.success and result.data_docs.name == "rows_2-3.html"
    assert (result.data_docs.parent / "rows_0-1.html").is_file()
    (table,) = unexpected_tables(result.data_docs)
    assert table[1] == ["-4", "1", "3"]  # the row label in the whole table, not in the chunk

    items = pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"], "genres": ["x", "y"], "year": [1990, 1991]})
    pages = [
        run_suite(items, items_suite(now_year=2026), DocsRun.start(site, f"run{i}").target("items")).data_docs
        for i in range(3)
    ]
    assert [p.is_file() for p in pages] == [False, True, True]  # the oldest run of the suite was removed
    assert len(list((tmp_path / "results" / "items").rglob("*.json"))) == 2
    assert result.data_docs.is_file()  # other suites keep theirs
    index = (tmp_path / "site" / "index.html").read_text()
    assert "run0" not in index and "run1" in index and "run2" in index


def test_a_site_that_cannot_be_written_warns_and_the_validation_still_counts(tmp_path):
    (tmp_path / "site").write_text("a file where the site's folder should be")
    site = DataDocsSite(tmp_path / "site", tmp_path / "results")
    items = pd.DataFrame({"item_id": [1, 1], "title": ["A", "B"], "genres": ["x", "y"], "year": [1990, 1991]})
    with pytest.warns(UserWarning, match="GX Data Docs: the page of suite 'items'"):
        result = run_suite(items, items_suite(now_year=2026), DocsRun.start(site, "validate").target("items"))
    assert not result.success and result.data_docs is None
    assert [c.unexpected_index for c in result.failures] == [(0, 1)]


def test_a_part_gx_fails_to_render_is_reported_not_silently_dropped(tmp_path, monkeypatch):
    import great_expectations.expectations.expectation as gx_expectation

    def broken(**kwargs):
        raise RuntimeError("table renderer broke")

    monkeypatch.setattr(gx_expectation, "build_count_and_index_table", broken)
    site = DataDocsSite(tmp_path / "site", tmp_path / "results")
    items = pd.DataFrame({"item_id": [1, 1], "title": ["A", "B"], "genres": ["x", "y"], "year": [1990, 1991]})
    with pytest.warns(UserWarning, match="lacks parts GX failed to render: .*table renderer broke"):
        result = run_suite(items, items_suite(now_year=2026), DocsRun.start(site, "validate").target("items"))
    assert result.data_docs.is_file() and unexpected_tables(result.data_docs) == []
