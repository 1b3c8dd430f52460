"""`mufasa scaling`: every (L, variant) trial trained, tested, timed and logged; the result files written."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.pipeline.params import load_params
from mufasa.pipeline.scaling import ScalingConfig, crossover
from mufasa.pipeline.tracking import Tracker
from tests.conftest import REPO


def test_crossover_is_the_length_from_which_sal_stays_faster():
    def trials(sal, dense):
        return [{"L": L, "variant": v, "step_ms": ms} for L, s, d in zip((256, 1024, 4096), sal, dense, strict=True)
                for v, ms in (("sal", s), ("dense", d))]

    assert crossover(trials([3, 2, 1], [1, 2, 4])) == 4096
    assert crossover(trials([3, 1, 1], [1, 2, 4])) == 1024
    assert crossover(trials([1, 3, 1], [2, 2, 4])) == 4096  # faster at 256 but not at 1024: not yet crossed
    assert crossover(trials([3, 3, 3], [1, 2, 2])) is None


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variants"):
        ScalingConfig(variants=("sal", "sparse"))


@pytest.mark.slow  # ~30 s alone: six tiny trainings
def test_scaling_command_writes_every_trial_and_one_mlflow_run_each(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    out = tmp_path / "results" / "scaling"
    args = ["scaling", "--root", str(root), "--out", str(out), "--length", "32", "--length", "64", "--steps", "3",
            "--users", "8", "--tokens-per-step", "256", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.with_suffix(".json").read_text())
    trials = payload["trials"]
    assert [(t["L"], t["variant"]) for t in trials] == [
        (L, v) for L in (32, 64) for v in ("sal", "dense", "window_only")]
    for t in trials:
        assert t["batch_size"] == 256 // t["L"] and t["steps"] == 3
        assert 0.0 <= t["test_ndcg@10"] <= t["test_hr@10"] <= 1.0 and t["step_ms"] > 0 and t["peak_mb"] > 0
    # the shipped attention settings, only max_len raised to L
    assert payload["settings"]["model"]["window"] == load_params(REPO / "params.yaml").train_sal.model.window
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| 32 |") == 3 and table.count("\n| 64 |") == 3
    assert out.with_suffix(".png").stat().st_size > 10_000
    client = MlflowClient(Tracker.for_project(root).tracking_uri)
    exp = client.get_experiment_by_name(load_params(root / "params.yaml").tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mufasa.role` = 'scaling-trial'")
    assert sorted(r.info.run_name for r in runs) == sorted(f"scaling-L{L}-{v}" for L in (32, 64)
                                                            for v in ("sal", "dense", "window_only"))
    assert all({"test_ndcg_at_10", "step_ms", "peak_mb"} <= set(r.data.metrics) for r in runs)
    study = client.search_runs([exp.experiment_id], filter_string="tags.`mufasa.role` = 'scaling-study'")
    assert len(study) == 1
    artifacts = {a.path for a in client.list_artifacts(study[0].info.run_id)}
    assert {"scaling.json", "scaling.md", "scaling.png"} <= artifacts


def test_scaling_study_is_a_dagster_asset_outside_the_retrain_job(tmp_path):
    from dagster import materialize

    from orchestration.definitions import defs
    from orchestration.defs.resources import MufasaProject
    from orchestration.defs.studies import scaling_study

    retrain = {k.to_user_string() for k in defs.get_job_def("retrain").asset_layer.selected_asset_keys}
    assert "scaling_study" not in retrain and "sal_model" in retrain
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    config = {"lengths": [32], "variants": ["sal", "window_only"], "steps": 2, "tokens_per_step": 128, "users": 6,
              "out": "results/scaling"}
    result = materialize([scaling_study], resources={"project": MufasaProject(root=str(tmp_path))},
                         run_config={"ops": {"scaling_study": {"config": config}}})
    assert result.success
    meta = result.asset_materializations_for_node("scaling_study")[0].metadata
    assert meta["plot"].value.startswith("![scaling](data:image/png;base64,")  # inline: renders in the UI
    assert "| 32 | window_only |" in meta["table"].value
    assert len(json.loads((tmp_path / "results" / "scaling.json").read_text())["trials"]) == 2
