"""Registry and gate end to end on small synthetic data: register, promote, refuse, roll back, serve."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.evaluation.protocol import evaluate
from mufasa.pipeline import stages
from mufasa.pipeline.params import parse_params
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.registry import CHAMPION, alias_version, load_recommender
from mufasa.pipeline.tracking import Tracker
from mufasa.pipeline.train_sal import load_inputs
from tests.conftest import REPO, synthetic_params_dict

NAME = "mufasa-sal"


def _gate(params, paths, tracker):
    with tracker.stage_run("gate", "test") as run:
        return stages.run_stage("gate", params, paths, stage_run=run)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    raw = synthetic_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    paths, params = ProjectPaths(root), parse_params(raw)
    for name in ("ingest", "sequences", "features", "train_mfl", "train_sal", "evaluate"):
        stages.run_stage(name, params, paths)
    tracker = Tracker.for_project(root)
    first = _gate(params, paths, tracker)
    return paths, params, tracker, first


def test_first_model_is_registered_and_promoted_with_reasons(pipeline):
    paths, params, tracker, first = pipeline
    assert first.info["passed"] and first.info["version"] == "1"
    client = MlflowClient(tracker.tracking_uri)
    version = client.get_model_version_by_alias(NAME, CHAMPION)
    assert str(version.version) == "1"
    assert version.tags["gate.decision"] == "promoted" and "popularity" in version.tags["gate.reasons"]
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
    assert json.loads((paths.metrics_dir / "gate.json").read_text())["champion"] == "1"
    report = (paths.reports_dir / "run_report.md").read_text()
    assert "**promoted**" in report and "| mufasa |" in report and "![eval.png]" in report


def test_registered_model_reproduces_the_evaluated_scores(pipeline):
    paths, params, tracker, _ = pipeline
    rec = load_recommender(tracker.tracking_uri, f"models:/{NAME}/1")
    data = load_inputs(paths).data
    again = evaluate(rec, data.test, data.n_items, ks=tuple(params.evaluate.ks))
    stored = json.loads((paths.metrics_dir / "eval.json").read_text())["models"]["mufasa"]
    for key in ("hr@10", "ndcg@10", "mrr@10", "hr@50"):
        assert again[key] == pytest.approx(stored[key], abs=1e-6), key
    out = rec.predict(None, __import__("pandas").DataFrame({"item_ids": [[1, 2, 3]]}), {"k": 5})
    assert len(out["item_ids"][0]) == 5 and all(1 <= i <= 60 for i in out["item_ids"][0])


def test_degraded_model_is_refused_and_the_champion_stays(pipeline, tmp_path):
    paths, params, tracker, _ = pipeline
    champion_before = alias_version(tracker.tracking_uri, NAME, CHAMPION)
    weights = paths.root / "models" / "sal" / "model.pt"
    good = weights.read_bytes()
    try:
        state = torch.load(weights, weights_only=True)
        degraded = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(degraded, weights)  # a model that scores every item the same: worst rank everywhere
        stages.run_stage("evaluate", params, paths)
        strict = parse_params({**synthetic_params_dict(), "gate": {"min_gain_over_popularity": 0.0,
                                                                    "min_gain_over_sasrec": -0.5,
                                                                    "max_regression_vs_champion": 0.0}})
        result = _gate(strict, paths, tracker)
    finally:
        weights.write_bytes(good)
    assert not result.info["passed"]
    assert result.info["checks"]["beats_popularity"] is False and result.info["checks"]["no_regression"] is False
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == champion_before
    tags = MlflowClient(tracker.tracking_uri).get_model_version(NAME, result.info["version"]).tags
    assert tags["gate.decision"] == "refused" and "FAIL" in tags["gate.reasons"]


def test_passing_model_moves_champion_and_promote_rolls_back(pipeline):
    paths, params, tracker, _ = pipeline
    stages.run_stage("evaluate", params, paths)  # the good model again
    result = _gate(params, paths, tracker)
    assert result.info["passed"]
    new = result.info["version"]
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == new
    runner = CliRunner()
    out = runner.invoke(app, ["promote", "--version", "1", "--root", str(paths.root)])
    assert out.exit_code == 0, out.output
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == "1"
    bad = runner.invoke(app, ["promote", "--version", "999", "--root", str(paths.root)])
    assert bad.exit_code == 2


def test_recommend_prints_titles_and_rejects_unknown_users(pipeline):
    paths, _, _, _ = pipeline
    runner = CliRunner()
    out = runner.invoke(app, ["recommend", "--user", "1", "--k", "3", "--root", str(paths.root)])
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()[:2].rstrip(".").isdigit()]
    assert len(lines) == 3 and "(item " in lines[0]
    missing = runner.invoke(app, ["recommend", "--user", "424242", "--root", str(paths.root)])
    assert missing.exit_code == 2 and "424242" in missing.output


def test_report_prints_the_table(pipeline):
    paths, _, _, _ = pipeline
    out = CliRunner().invoke(app, ["report", "--root", str(paths.root)])
    assert out.exit_code == 0 and "| mufasa |" in out.output and "| popularity |" in out.output
    assert np.isfinite(json.loads((paths.metrics_dir / "eval.json").read_text())["models"]["sasrec"]["ndcg@10"])


def test_benchmark_compares_every_baseline_and_ablation(pipeline, tmp_path):
    from mufasa.pipeline.benchmark import MODEL_ORDER, run_benchmark

    paths, params, _, _ = pipeline
    payload = run_benchmark(params, paths, [0, 1], tmp_path / "cmp")
    assert set(payload["mean_std"]) == set(MODEL_ORDER)
    mean, std = payload["mean_std"]["mufasa"]["ndcg@10"]
    assert 0 <= mean <= 1 and std >= 0
    assert payload["per_seed"]["0"]["popularity"] == payload["per_seed"]["1"]["popularity"]  # no randomness
    table = (tmp_path / "cmp.md").read_text()
    assert "| window_only |" in table and "±" in table
