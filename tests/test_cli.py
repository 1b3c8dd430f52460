"""The `mufasa` CLI that DVC runs: exit codes and messages a person can act on."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from mufasa.cli import app

runner = CliRunner()


def test_stage_runs_and_reports_metrics(project):
    result = runner.invoke(app, ["stage", "ingest", "--root", str(project.root), "--no-track"])
    assert result.exit_code == 0, result.output
    assert "ingest: ok" in result.output and project.raw_items.is_file()


def test_bad_data_exits_2_naming_file_and_column(project):
    (project.root / "data" / "input" / "interactions.csv").write_text("user_id;item_id;timestamp\n1;1;1\n")
    (project.root / "data" / "input" / "items.csv").write_text("item_id,title\n1,A\n")
    (project.root / "params.yaml").write_text(yaml.safe_dump({"ingest": {"source": "files"}}))
    result = runner.invoke(app, ["stage", "ingest", "--root", str(project.root), "--no-track"])
    assert result.exit_code == 2
    assert "interactions.csv" in result.output and "'user_id'" in result.output
    assert "nothing was written" in result.output
    assert not project.raw_dir.exists()


def test_params_typo_is_an_error_not_a_default(project):
    (project.root / "params.yaml").write_text(yaml.safe_dump({"ingest": {"sorce": "files"}}))
    result = runner.invoke(app, ["stage", "ingest", "--root", str(project.root), "--no-track"])
    assert result.exit_code == 2 and "ingest.sorce" in result.output


def test_synth_writes_byo_files(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(app, ["synth", "--out", str(out), "--n-users", "5", "--n-items", "30", "--no-images"])
    assert result.exit_code == 0, result.output
    assert (out / "interactions.csv").is_file() and (out / "items.csv").is_file()


def test_make_clean_outputs_removes_only_generated_files(clone):
    """`make clean-outputs` deletes the git-ignored outputs (DVC-cached data, models, checkpoints) and leaves every
    file git tracks (metrics, reports, the per-folder .gitignore files DVC wrote) as committed."""
    import shutil
    import subprocess

    from tests.conftest import run_ok

    generated = [clone / "data" / "raw" / "interactions.parquet", clone / "data" / "sequences" / "train.parquet",
                 clone / "models" / "sal" / "model.pt", clone / "checkpoints" / "train_sal" / "mufasa" / "last.pt",
                 clone / "reports" / "validation" / "data_docs" / "index.html"]
    for path in generated:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"generated")
    tracked = run_ok(["git", "ls-files"], clone).stdout.split()
    assert "metrics/eval.json" in tracked and "data/raw/.gitignore" in tracked
    make = shutil.which("make")
    if make is None:
        import pytest

        pytest.skip("make is not installed")
    subprocess.run([make, "clean-outputs"], cwd=clone, check=True, capture_output=True)
    assert not any(p.exists() for p in generated)
    assert all((clone / rel).exists() for rel in tracked)
    assert run_ok(["git", "status", "--porcelain"], clone).stdout == ""
