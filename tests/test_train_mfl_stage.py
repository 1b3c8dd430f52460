"""The `train_mfl` stage: fused vectors + model written, diagnostics computed, MFL-off path, health check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mufasa.pipeline import stages
from mufasa.pipeline import train_mfl as train_mfl_stage
from mufasa.pipeline.params import ParamsError, parse_params
from mufasa.pipeline.paths import ProjectPaths
from tests.conftest import synthetic_params_dict


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    paths = ProjectPaths(tmp_path_factory.mktemp("mfl"))
    params = parse_params(synthetic_params_dict())
    for name in ("ingest", "sequences", "features"):
        stages.run_stage(name, params, paths)
    return paths, params


def test_train_mfl_writes_unit_fused_vectors_model_and_reports(prepared):
    paths, params = prepared
    curves = []
    result = stages.run_stage("train_mfl", params, paths, on_metrics=lambda step, m: curves.append((step, m)))
    fused = np.load(paths.root / "data" / "fused" / "items.npy")
    assert fused.shape == (params.ingest.synthetic.n_items, 64)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-4)
    assert (paths.root / "models" / "mfl" / "model.pt").is_file()
    assert json.loads((paths.root / "models" / "mfl" / "config.json").read_text())["enabled"] is True
    assert (paths.reports_dir / "mfl" / "curves.png").stat().st_size > 1000
    assert {s for s, _ in curves} >= {1, 2, 3}  # one row per epoch reached the tracker
    assert "diag_effective_rank" in result.metrics
    assert train_mfl_stage.fused_space_health(paths)["passed"]
    assert not (paths.root / "checkpoints" / "train_mfl").exists() or not any(
        (paths.root / "checkpoints" / "train_mfl").iterdir()
    )


def test_collapsed_fused_space_fails_the_health_check(prepared, tmp_path):
    import shutil

    from mufasa.data.io import save_npy

    paths, params = prepared
    stages.run_stage("train_mfl", params, paths)
    copy = ProjectPaths(tmp_path)
    shutil.copytree(paths.root / "data", copy.root / "data")
    fused = np.load(copy.root / "data" / "fused" / "items.npy")
    save_npy(np.tile(fused[:1], (len(fused), 1)), copy.root / "data" / "fused" / "items.npy")  # all identical
    health = train_mfl_stage.fused_space_health(copy)
    assert not health["passed"] and health["effective_rank"] < 2


def test_mfl_off_writes_zero_width_vectors(prepared, tmp_path):
    import shutil

    paths, _ = prepared
    copy = ProjectPaths(tmp_path)
    shutil.copytree(paths.root / "data", copy.root / "data")
    raw = synthetic_params_dict()
    raw["train_mfl"]["enabled"] = False
    stages.run_stage("train_mfl", parse_params(raw), copy)
    assert np.load(copy.root / "data" / "fused" / "items.npy").shape == (60, 0)
    assert train_mfl_stage.fused_space_health(copy)["passed"]


def test_unknown_model_keys_fail_at_parse_time():
    raw = synthetic_params_dict()
    raw["train_mfl"]["fusion"]["d_modle"] = 32
    with pytest.raises(ParamsError, match="d_modle"):
        parse_params(raw)
    raw = synthetic_params_dict()
    raw["train_mfl"]["fusion"]["side_dim"] = 3
    with pytest.raises(ParamsError, match="derived from the data"):
        parse_params(raw)
