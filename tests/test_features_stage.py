"""The `features` stage: shapes, masks, counts of bad images, determinism, and the features suite."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mufasa.data.io import file_md5
from mufasa.data.schema import DataValidationError
from mufasa.pipeline import features as features_stage
from mufasa.pipeline import ingest as ingest_stage
from mufasa.data.io import save_npy
from mufasa.pipeline.inputs import FEATURE_FILES, read_features
from mufasa.pipeline.params import load_params, parse_params
from mufasa.pipeline.paths import ProjectPaths
from tests.conftest import synthetic_params_dict


@pytest.fixture(scope="module")
def synthetic_features(tmp_path_factory):
    paths = ProjectPaths(tmp_path_factory.mktemp("feat"))
    params = parse_params(synthetic_params_dict())
    ingest_stage.ingest(params.ingest, paths)
    result = features_stage.features(params.features, paths)
    return paths, params, result


def test_synthetic_features_shapes_masks_and_suite(synthetic_features):
    paths, params, result = synthetic_features
    f = read_features(paths.features_dir)
    n = params.ingest.synthetic.n_items
    assert f.features.text.shape == (n, 384) and f.features.image.shape == (n, 1280)
    assert f.features.side.shape[0] == n and f.features.text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.features.text, axis=1), 1.0, atol=1e-4)
    assert f.index["has_image"].all() and result.metrics["coverage_image"] == 1.0
    assert (np.linalg.norm(f.features.image, axis=1) > 0).all()
    genres = f.meta["side_columns"]["genres"]["names"]
    assert len(genres) == params.ingest.synthetic.n_genres
    assert features_stage.check_features(paths).success


def test_features_are_byte_identical_across_runs(synthetic_features, tmp_path):
    paths, params, _ = synthetic_features
    other = ProjectPaths(tmp_path)
    ingest_stage.ingest(params.ingest, other)
    features_stage.features(params.features, other)
    for name in FEATURE_FILES:
        assert file_md5(paths.features_dir / name) == file_md5(other.features_dir / name), name


def test_image_features_separate_genres(synthetic_features):
    """Generated images carry genre colour: same-genre images are closer than cross-genre ones."""
    paths, _, _ = synthetic_features
    f = read_features(paths.features_dir)
    items = pd.read_parquet(paths.raw_items)
    primary = items["genres"].str.split("|").str[0].to_numpy()
    x = f.features.image / np.linalg.norm(f.features.image, axis=1, keepdims=True)
    sim = x @ x.T
    same = primary[:, None] == primary[None, :]
    off = ~np.eye(len(x), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.05


def _files_project(root, images: dict[str, bytes | None], min_image_coverage=0.0):
    inp = root / "data" / "input"
    (inp / "images").mkdir(parents=True, exist_ok=True)
    (root / "outside.png").write_bytes(b"")
    rows = []
    for i, (name, content) in enumerate(images.items(), start=1):
        if content is not None:
            (inp / "images" / name).write_bytes(content)
        rows.append(f"{i},Title {i},Drama,1990,{name}")
    (inp / "items.csv").write_text("item_id,title,genres,year,image_path\n" + "\n".join(rows) + "\n")
    (inp / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"1,{i},{i}\n" for i in range(1, len(images) + 1))
    )
    raw = synthetic_params_dict()
    raw["ingest"]["source"] = "files"
    raw["features"]["min_image_coverage"] = min_image_coverage
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(root / "params.yaml")


def _png(color) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def test_missing_corrupt_and_escaping_images_are_masked_and_counted(tmp_path):
    params = _files_project(
        tmp_path,
        {"a.png": _png((200, 30, 30)), "b.png": b"not a png at all", "c.png": None, "../../outside.png": None},
    )
    paths = ProjectPaths(tmp_path)
    ingest_stage.ingest(params.ingest, paths)
    result = features_stage.features(params.features, paths)
    f = read_features(paths.features_dir)
    assert f.index["has_image"].tolist() == [True, False, False, False]
    assert result.metrics["images_encoded"] == 1
    assert result.metrics["images_corrupt"] == 2  # garbage bytes + a file that does not exist
    assert result.metrics["images_rejected"] == 1  # escapes the image root: never opened
    assert (f.features.image[1:] == 0).all() and np.linalg.norm(f.features.image[0]) > 0
    problems = f.meta["images"]["problems"]
    assert any("b.png" in p for p in problems) and any("outside" in p for p in problems)


def test_coverage_gate_rejects_and_keeps_previous_features(tmp_path):
    params = _files_project(tmp_path, {"a.png": _png((0, 0, 200)), "b.png": _png((0, 200, 0))})
    paths = ProjectPaths(tmp_path)
    ingest_stage.ingest(params.ingest, paths)
    features_stage.features(params.features, paths)
    before = {n: file_md5(paths.features_dir / n) for n in FEATURE_FILES}
    (tmp_path / "data" / "input" / "images" / "b.png").write_bytes(b"broken")
    strict = _files_project(tmp_path, {"a.png": _png((0, 0, 200)), "b.png": b"broken"}, min_image_coverage=0.9)
    with pytest.raises(DataValidationError, match="image coverage"):
        features_stage.features(strict.features, paths)
    assert {n: file_md5(paths.features_dir / n) for n in FEATURE_FILES} == before


def test_stored_features_check_catches_nan(synthetic_features, tmp_path):
    paths, _, _ = synthetic_features
    import shutil

    copy = ProjectPaths(tmp_path)
    shutil.copytree(paths.root / "data", copy.root / "data")
    text = np.load(copy.features_dir / "text.npy")
    text[3, 5] = np.nan
    save_npy(text, copy.features_dir / "text.npy")
    result = features_stage.check_features(copy)
    assert not result.success
    assert {c.column for c in result.failures} >= {"n_nonfinite"}
    meta = json.loads((copy.features_dir / "meta.json").read_text())
    assert meta["n_items"] == len(text)
