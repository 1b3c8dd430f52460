"""`mufasa tune`: Optuna trials on the validation split only, each a nested MLflow run; summary files written."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from mufasa.pipeline import stages
from mufasa.pipeline.params import parse_params
from mufasa.pipeline.tracking import Tracker
from mufasa.pipeline.sal_model import load_inputs
from mufasa.pipeline.tune import SPACE, ValidationOnly, run_tune, with_values
from tests.conftest import synthetic_params_dict


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    import shutil

    from mufasa.pipeline.paths import ProjectPaths
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("tune")
    raw = synthetic_params_dict()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    paths, params = ProjectPaths(root), parse_params(raw)
    for name in ("ingest", "sequences", "features", "train_mfl"):
        stages.run_stage(name, params, paths)
    return paths, params


def test_validation_only_data_refuses_the_test_split(prepared):
    paths, _ = prepared
    data = load_inputs(paths).data
    guarded = ValidationOnly(data)
    assert guarded.n_items == data.n_items and guarded.valid is data.valid
    with pytest.raises(PermissionError, match="test split"):
        _ = guarded.test


def test_values_reach_the_model_and_training_configs(prepared):
    from mufasa.pipeline.params import sal_configs

    _, params = prepared
    from mufasa.pipeline.params import mfl_configs

    p = with_values(params, {"model.dropout": 0.33, "model.fused_in_output": False, "train.lr": 0.002,
                             "mfl.train.epochs": 7, "mfl.losses.collaborative": 2.5})
    model, train = sal_configs(p, n_items=10, item_feature_dim=4)
    assert (model.dropout, model.fused_in_output, train.lr) == (0.33, False, 0.002)
    assert model.window == params.train_sal.model.window  # untouched keys stay
    _, mfl_train = mfl_configs(p, side_dim=3)
    assert mfl_train.epochs == 7 and mfl_train.losses.collaborative == 2.5
    assert mfl_train.losses.semantic == mfl_configs(params, side_dim=3)[1].losses.semantic
    with pytest.raises(ValueError, match="model."):
        with_values(params, {"dropout": 0.1})


def test_tune_runs_trials_on_validation_only_and_tracks_each(prepared, tmp_path, monkeypatch):
    import mufasa.pipeline.sal_model as sal_model_module

    paths, params = prepared
    # every trial trains on a data object whose test split raises on access (and the trials still succeed)
    original, seen = sal_model_module.train_variant, []

    def guarded_train_variant(p, inputs, *args, **kwargs):
        seen.append(type(inputs.data).__name__)
        with pytest.raises(PermissionError):
            _ = inputs.data.test
        return original(p, inputs, *args, **kwargs)

    monkeypatch.setattr(sal_model_module, "train_variant", guarded_train_variant)
    out = tmp_path / "tune"
    payload = run_tune(params, paths, out, n_trials=2, seed=0, workers=1, tracking=True, study_name="t")
    assert len(payload["trials"]) == 2 and seen == ["ValidationOnly", "ValidationOnly"]
    assert all(0.0 <= t["value"] <= 1.0 for t in payload["trials"])
    assert set(payload["best"]["params"]) == set(SPACE)
    assert (out.with_suffix(".md")).read_text().count("\n| ") >= 3
    client = MlflowClient(Tracker.for_project(paths.root).tracking_uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mufasa.role` = 'tune-trial'")
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"]
    assert all("mlflow.parentRunId" in r.data.tags and "best_val_ndcg_at_10" in r.data.metrics for r in runs)
    # resuming the study adds trials to the same journal
    again = run_tune(params, paths, out, n_trials=1, seed=0, workers=1, tracking=False, study_name="t")
    assert len(again["trials"]) == 3
    assert json.loads(out.with_suffix(".json").read_text())["best"]["value"] == max(t["value"] for t in again["trials"])
