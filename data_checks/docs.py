"""GX Data Docs for every validation: what GX users open to see why a validation failed.

Each validation result is stored in a filesystem ``ValidationResultsStore`` (JSON, ``results_dir``) and rendered by
GX's own ``SiteBuilder`` into an HTML site (``site_dir``: ``index.html`` listing every stored validation, one page
per validation under ``validations/<suite>/<run name>/<run time>/<batch>.html``). Only the new page and the index
are rendered per validation (GX's incremental build), and each suite keeps its latest :data:`KEEP` runs (older
results and pages are removed), so the folder stays small whatever the number of runs.

The pages carry run times, GX's own random element ids and a time-stamped logo URL, so they differ on every run:
they are a per-run view, git-ignored and not a DVC output (the JSON reports are what DVC versions); each stage logs
its pages to its MLflow run, which is the archive.

Failing rows on the page: GX renders the rows of an unexpected value only from ``unexpected_index_list``, which
exists in the ``COMPLETE`` result format and lists *every* failing row. Validations run in ``SUMMARY`` (bounded
memory on 20M-row tables) with the frame's index named :data:`ROW` (GX's ``unexpected_index_column_names``), and
:meth:`DataDocsSite.publish` stores the first :data:`PAGE_EXAMPLES` failing rows (``partial_unexpected_index_list``)
as the index list the page renders; the page then labels them "Sampled Unexpected Values".
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote
from typing import TYPE_CHECKING

from data_checks.context import context

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier

# Name of the frame's index during a validation: the row label GX reports for each failing row.
ROW = "row"
# Failing rows per expectation kept on a page (the JSON reports keep fewer: data_checks.runner.EXAMPLES).
PAGE_EXAMPLES = 20
# Validation runs kept per suite in the site (older results and their pages are removed).
KEEP = 10

_lock = threading.Lock()  # the store registry and site builds (Dagster may run checks in threads)
_stores: dict[Path, str] = {}


def _results_store_name(results_dir: Path) -> str:
    """Register (once per process) the filesystem results store of ``results_dir`` in the GX context."""
    results_dir = results_dir.resolve()
    name = _stores.get(results_dir)
    if name is None:
        name = "mufasa_results_" + hashlib.md5(str(results_dir).encode()).hexdigest()[:12]
        context().add_store(
            name,
            {
                "class_name": "ValidationResultsStore",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(results_dir)},
            },
        )
        _stores[results_dir] = name
    return name


def _batch_identifier(text: str) -> str:
    """A file-name-safe batch identifier (it names the page's file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "batch"


class _ErrorLog(logging.Handler):
    """Collects the errors GX's renderers log (they log a part they cannot render instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def first(self) -> str:
        lines = [line.strip() for m in self.messages[:1] for line in m.splitlines() if line.strip()]
        return " ".join(lines[1:2] or lines[:1])[:300] or "no error logged"


@dataclass(frozen=True)
class DataDocsSite:
    """A GX Data Docs site (``site_dir``) rendering the validation results stored in ``results_dir``."""

    site_dir: Path
    results_dir: Path
    keep: int = KEEP

    def _builder(self):
        from great_expectations.render.renderer.site_builder import SiteBuilder

        store_name = _results_store_name(self.results_dir)
        return SiteBuilder(
            data_context=context(),
            store_backend={"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.site_dir)},
            site_name="mufasa",
            # suites are built in code, not stored: only the validations section has anything to show
            site_section_builders={
                "expectations": "None",
                "profiling": "None",
                "validations": {"source_store_name": store_name},
            },
            show_how_to_buttons=False,
        ), context().stores[store_name]

    def publish(
        self, result: ExpectationSuiteValidationResult, *, run_id: RunIdentifier, batch: str, asset: str
    ) -> Path:
        """Store ``result`` (of one suite on one batch) and render its page and the index; the page's path.

        ``asset`` names what was validated (a file, a derived table): GX shows it as the page title and in the
        index's "Asset name" column. ``result`` itself is not modified.
        """
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        stored = copy.deepcopy(result)
        stored.meta["run_id"] = run_id
        stored.meta["batch_kwargs"] = {"data_asset_name": asset, "rows": f"{ROW} = the row's 0-based position"}
        for r in stored.results:
            config = r.expectation_config
            # GX renders a description instead of the expectation: name the expectation too, as GX users know it
            if config.description and config.type not in config.description:
                config.description = f"{config.description} ({config.type})"
            res = r.result or {}
            rows = res.get("partial_unexpected_index_list")
            if rows and isinstance(rows[0], dict) and "unexpected_index_list" not in res:
                res["unexpected_index_list"] = rows
                # some expectations (e.g. expect_column_values_to_be_null) leave the index columns out of their result
                res.setdefault("unexpected_index_column_names", [ROW])
        key = ValidationResultIdentifier(
            ExpectationSuiteIdentifier(name=stored.suite_name), run_id, _batch_identifier(batch)
        )
        errors = _ErrorLog()
        render_log = logging.getLogger("great_expectations.render")
        with _lock:
            render_log.addHandler(errors)
            try:
                builder, store = self._builder()
                store.set(key, stored)
                self._prune(builder, store, stored.suite_name)
                builder.build(resource_identifiers=[key])
                url = builder.get_resource_url(key)
            finally:
                render_log.removeHandler(errors)
        what = f"the page of suite {stored.suite_name!r} ({batch})"
        if url is None:
            raise RuntimeError(f"GX Data Docs: {what} was not written in {self.site_dir}: {errors.first()}")
        page = Path(unquote(url.removeprefix("file://")))
        if errors.messages:  # GX logs a part it failed to render and writes the page without it
            warnings.warn(f"GX Data Docs: {page} lacks parts GX failed to render: {errors.first()}", stacklevel=2)
        return page

    def _prune(self, builder, store, suite: str) -> None:
        """Remove the results and pages of ``suite``'s runs older than its latest :attr:`keep`."""
        from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

        keys = [k for k in store.list_keys() if k.expectation_suite_identifier.name == suite]
        runs = sorted({(k.run_id.run_time, k.run_id.run_name) for k in keys}, reverse=True)
        old = set(runs[self.keep :])
        pages = builder.target_store.store_backends[ValidationResultIdentifier]
        for k in keys:
            if (k.run_id.run_time, k.run_id.run_name) in old:
                store.remove_key(k)
                pages.remove_key(k.to_tuple())


@dataclass(frozen=True)
class DocsRun:
    """One validation run (a stage, a Dagster check): every suite it validates is stored under one GX run id, so
    the index groups its pages."""

    site: DataDocsSite
    run_name: str
    run_time: dt.datetime

    @classmethod
    def start(cls, site: DataDocsSite, run_name: str) -> DocsRun:
        return cls(site, run_name, dt.datetime.now(dt.timezone.utc))

    @property
    def run_id(self) -> RunIdentifier:
        from great_expectations.core.run_identifier import RunIdentifier

        return RunIdentifier(run_name=self.run_name, run_time=self.run_time)

    def target(self, asset: str) -> DocsTarget:
        return DocsTarget(self, asset)


@dataclass(frozen=True)
class DocsTarget:
    """Where one suite's validation goes: its run, and what it validates (``asset``)."""

    run: DocsRun
    asset: str

    def publish(self, result: ExpectationSuiteValidationResult, batch: str) -> Path:
        return self.run.site.publish(result, run_id=self.run.run_id, batch=batch, asset=self.asset)
