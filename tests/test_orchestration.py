"""Dagster: the retrain job on synthetic data end to end, bad data stopping it, and the blocking checks."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import yaml
from dagster import AssetKey, Definitions
from mlflow import MlflowClient

from mufasa.data.io import write_parquet
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline.params import load_params
from orchestration import definitions
from orchestration.defs.report_images import png_bytes
from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject

RAW_ITEMS, USER_SEQUENCES = AssetKey("raw_items"), AssetKey("user_sequences")
ITEM_FEATURES = AssetKey("item_features")
TRAINING = {AssetKey("fusion_model"), AssetKey("fused_item_vectors"), AssetKey("sal_model")}
EVALUATION = {AssetKey("evaluation_report"), AssetKey("registered_model")}


def _job(root, tracking_uri=None):
    d = definitions.defs
    resources = {
        "project": MufasaProject(root=str(root)),
        "mlflow": MlflowTracking(enabled=tracking_uri is not None, tracking_uri=tracking_uri),
        "dvc": DvcResource(enabled=False),
    }
    return Definitions(
        assets=list(d.assets), asset_checks=list(d.asset_checks), jobs=list(d.jobs), resources=resources
    ).resolve_job_def("retrain")


def _checks_only(root):
    """A job of every asset check alone (what "Execute checks" in the UI runs), with a DVC that would fail the run
    if anything called it."""
    from dagster import AssetSelection, define_asset_job

    d = definitions.defs
    job = define_asset_job("checks_only", selection=AssetSelection.all_asset_checks())
    resources = {"project": MufasaProject(root=str(root)), "mlflow": MlflowTracking(enabled=False),
                 "dvc": DvcResource(executable="/nonexistent/dvc")}
    return Definitions(assets=list(d.assets), asset_checks=list(d.asset_checks), jobs=[job],
                       resources=resources).resolve_job_def("checks_only")


def _files(root) -> dict:
    """md5 of every file under ``root`` but the project lock (a run takes it, and its holder file says who)."""
    from mufasa.data.io import file_md5

    return {p: file_md5(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".mufasa.lock")}


def _materialized(result) -> set[AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


def _checks(result) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_definitions_wire_every_stage_and_check():
    job = definitions.defs.resolve_job_def("retrain")
    keys = {k.to_user_string() for k in job.asset_layer.asset_graph.get_all_asset_keys()}
    assert {"raw_interactions", "raw_items", "user_sequences", "item_features", "fusion_model", "fused_item_vectors",
            "sal_model", "evaluation_report", "registered_model"} <= keys
    check_names = {c.name for c in definitions.defs.get_repository_def().asset_graph.asset_check_keys}
    assert check_names == {
        "interactions_suite",
        "items_suite",
        "sequences_suite",
        "features_suite",
        "fused_space_not_collapsed",
        "promotion_gate",
    }
    assert any(s.name == "weekly_retrain" and s.job_name == "retrain" for s in definitions.defs.schedules)


def test_retrain_materialises_everything_and_tracks_it(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _job(project.root, uri).execute_in_process(raise_on_error=False)
    assert result.success
    assert (
        _materialized(result)
        == {AssetKey("raw_interactions"), RAW_ITEMS, USER_SEQUENCES, ITEM_FEATURES} | TRAINING | EVALUATION
    )
    assert _checks(result) == {
        "interactions_suite": True,
        "items_suite": True,
        "sequences_suite": True,
        "features_suite": True,
        "fused_space_not_collapsed": True,
        "promotion_gate": True,
    }
    seq_meta = next(
        e.materialization.metadata for e in result.get_asset_materialization_events() if e.asset_key == USER_SEQUENCES
    )
    assert seq_meta["dagster/row_count"].value == 40
    assert "mlflow_run" in seq_meta
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("mufasa").experiment_id],
        filter_string=f"tags.`mufasa.pipeline_run` = '{result.run_id}'",
    )
    stages_run = ["evaluate", "features", "gate", "ingest", "sequences", "train_mfl", "train_sal", "validate"]
    assert sorted(r.info.run_name for r in runs) == sorted([*stages_run, f"pipeline-{result.run_id}"])
    feat_meta = next(
        e.materialization.metadata for e in result.get_asset_materialization_events() if e.asset_key == ITEM_FEATURES
    )
    assert feat_meta["coverage_image"].value == 1.0  # synthetic items all have generated images
    metas = {e.asset_key: e.materialization for e in result.get_asset_materialization_events()}
    # retrain observed raw_source first: ingest recorded the version it consumed, the fingerprint in its manifest
    manifest = json.loads(project.raw_manifest.read_text())
    assert metas[AssetKey("raw_interactions")].tags["dagster/input_data_version/raw_source"] == \
        manifest["source_fingerprint"]
    # report plots are embedded as data URIs the UI can show (a file path is a broken image in the browser)
    plots = {"evaluation_report": ("plot", [project.eval_plot]),
             "fusion_model": ("plots", [project.mfl_reports / "curves.png", project.mfl_reports / "projection.png"]),
             "sal_model": ("curves", [project.sal_reports / "curves.png"])}
    for asset, (name, files) in plots.items():
        markdown = metas[AssetKey(asset)].metadata[name].value
        embedded = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
        assert [base64.b64decode(e) for e in embedded] == [png_bytes(f) for f in files], (asset, markdown[:300])
    # "Execute checks" in the UI on the finished pipeline: every check only reads (dvc.lock and all outputs unchanged)
    (project.root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    before = _files(project.root)
    checks = _checks(_checks_only(project.root).execute_in_process(raise_on_error=False))
    assert set(checks) == {"interactions_suite", "items_suite", "sequences_suite", "features_suite",
                           "fused_space_not_collapsed", "promotion_gate"}
    after = _files(project.root)
    # The only writes: the validation results and Data Docs each check run adds under reports/validation (git-ignored
    # reports the check links to); dvc.lock, data, models, metrics and every earlier report are untouched.
    validation = project.root / "reports" / "validation"
    assert {p: h for p, h in after.items() if validation not in p.parents} == \
        {p: h for p, h in before.items() if validation not in p.parents}
    assert all(after.get(p) == h for p, h in before.items() if p.suffix == ".json" and "gx_results" in p.parts)
    assert set(after) - set(before), "the checks wrote no validation results"


def test_bad_dataset_stops_the_run_and_writes_nothing(project):
    inp = project.root / "data" / "input"
    (inp / "interactions.csv").write_text("user_id,item_id,timestamp\n1,1,10\n1,2,11\n1,77,12\n")
    (inp / "items.csv").write_text("item_id,title\n1,A\n2,B\n")
    (project.root / "params.yaml").write_text(yaml.safe_dump({"ingest": {"source": "files"}}))
    result = _job(project.root).execute_in_process(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "interactions.csv" in str(failure.event_specific_data.error) and "item_id" in str(
        failure.event_specific_data.error
    )
    assert _materialized(result) == set()
    assert not project.raw_dir.exists() and not project.sequences_dir.exists()


def test_blocking_check_stops_downstream_when_stored_data_is_bad(project, monkeypatch):
    """If ingest ever wrote bad data (a bug, a hand edit), the blocking check must stop user_sequences."""
    real_ingest = ingest_stage.ingest

    def buggy_ingest(cfg, paths, stage_run=None):
        result = real_ingest(cfg, paths, stage_run)
        items = pd.read_parquet(paths.raw_items)
        write_parquet(pd.concat([items, items.head(1)]), paths.raw_items)  # duplicate item id
        return result

    monkeypatch.setattr(ingest_stage, "ingest", buggy_ingest)
    result = _job(project.root).execute_in_process(raise_on_error=False)
    assert _checks(result)["items_suite"] is False
    assert _checks(result)["interactions_suite"] is True
    assert USER_SEQUENCES not in _materialized(result) and ITEM_FEATURES not in _materialized(result)
    assert not project.sequences_dir.exists() and not project.features_dir.exists()
    # the failed check links its GX Data Docs page, which shows the failing expectation
    meta = _check_metadata(result)["items_suite"]
    page = Path(unquote(urlparse(meta["data_docs"].value).path))
    assert page.is_file() and page.is_relative_to(project.data_docs_dir)
    assert meta["data_docs_path"].value == str(page.relative_to(project.root))
    assert f"/dagster-{result.run_id[:8]}/" in meta["data_docs_path"].value  # this run's page
    assert "expect_column_values_to_be_unique" in page.read_text()
    assert Path(unquote(urlparse(meta["data_docs_index"].value).path)) == project.data_docs_dir / "index.html"


def _check_metadata(result) -> dict[str, dict]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_dagster_cli_validates_the_definitions(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "orchestration.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Validation successful" in proc.stdout + proc.stderr


def test_executing_the_raw_data_check_changes_no_file(project):
    """"Execute checks" in the UI only reads: no report rewritten, nothing committed to DVC (dvc.lock unchanged);
    it writes only its GX Data Docs pages (git-ignored, not DVC outputs), which its metadata links."""
    from dagster import AssetSelection, define_asset_job

    from mufasa.data.io import file_md5
    from mufasa.pipeline import validate as validate_stage
    from orchestration.defs.checks import raw_data_suites

    params = load_params(project.params)
    ingest_stage.ingest(params.ingest, project)
    validate_stage.validate(params.ingest, project)
    (project.root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    before = {p: file_md5(p) for p in project.root.rglob("*") if p.is_file()}
    d = definitions.defs
    job = define_asset_job("checks_only", selection=AssetSelection.checks(raw_data_suites))
    resources = {"project": MufasaProject(root=str(project.root)), "mlflow": MlflowTracking(enabled=False),
                 # a DVC that would fail the run if anything called it
                 "dvc": DvcResource(executable="/nonexistent/dvc")}
    result = Definitions(assets=list(d.assets), asset_checks=list(d.asset_checks), jobs=[job],
                         resources=resources).resolve_job_def("checks_only").execute_in_process(raise_on_error=False)
    assert result.success and _checks(result) == {"interactions_suite": True, "items_suite": True}

    def versioned(p: Path) -> bool:
        docs = (project.data_docs_dir, project.validation_results_dir)
        return not p.name.startswith(".mufasa.lock") and not any(p.is_relative_to(d) for d in docs)

    after = {p: file_md5(p) for p in project.root.rglob("*") if p.is_file() and versioned(p)}
    assert after == {p: h for p, h in before.items() if versioned(p)}
    for meta in _check_metadata(result).values():
        assert (project.root / meta["data_docs_path"].value).is_file()


def test_the_raw_source_is_observed_upstream_of_ingest_in_the_lineage():
    graph = definitions.defs.resolve_asset_graph()
    source = AssetKey("raw_source")
    assert graph.get(source).is_observable and not graph.get(source).is_materializable
    assert graph.get(AssetKey("raw_interactions")).parent_keys == {source}
    assert graph.get(AssetKey("raw_items")).parent_keys == {source}
    # retrain observes it first, so ingest records the version it consumed
    job = definitions.defs.resolve_job_def("retrain")
    assert "raw_source" in {n.name for n in job.nodes}
    assert source in job.asset_layer.asset_graph.get_all_asset_keys()


def test_report_images_are_embedded_and_large_ones_downscaled(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from orchestration.defs.report_images import images_markdown

    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (60, 40), "red").save(small)
    noise = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)  # ~3 MB as PNG
    Image.fromarray(noise).save(big)
    assert png_bytes(small) == small.read_bytes()  # under the limits: the file as it is
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1500, 300), "blue").save(wide)  # small in bytes, too wide for the UI's dialog
    assert Image.open(io.BytesIO(png_bytes(wide))).size == (1000, 200)
    shrunk = png_bytes(big, max_bytes=150_000)
    assert big.stat().st_size > 1_000_000 and len(shrunk) <= 150_000
    image = Image.open(io.BytesIO(shrunk))
    assert image.format == "PNG" and image.width < 1200 and abs(image.width / image.height - 1200 / 900) < 0.02
    markdown = images_markdown([small, tmp_path / "table.md", big], max_bytes=150_000).value
    assert markdown.count("](data:image/png;base64,") == 2 and str(tmp_path) not in markdown
    assert "**small.png**" in markdown and "table.md" not in markdown
