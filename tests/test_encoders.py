"""Modality encoders: real MiniLM and EfficientNet-Lite0 weights from installed packages (CPU), side features.

Each network is loaded once per module. The MiniLM tests are marked ``slow`` (importing sentence-transformers
and loading the model takes ~6 s, the batch-size-1 pass a few more); the EfficientNet-Lite0 tests take about
a second each and stay in the fast set because they guard the image-root containment. The whole file runs
in ~30 s on two busy cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mufasa  # noqa: F401  (sets HF offline env vars before sentence-transformers is imported)
from mufasa.encoders import (
    IMAGE_DIM,
    TEXT_DIM,
    ImageEncoder,
    TitleEncoder,
    entity_features,
    genre_multi_hot,
    resolve_device,
    year_feature_names,
    year_features,
)

skdata = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug
ROCKET_CLASSES = {657, 744, 812}  # missile, projectile, space shuttle


def top5(logits: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-logits)[:5]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- device ------------------------------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


# ---- title encoder -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def title_encoder() -> TitleEncoder:
    return TitleEncoder(device="cpu", batch_size=64)


@pytest.mark.slow
def test_minilm_puts_sequels_closer(title_encoder):
    star_wars, jedi, toy_story = title_encoder.encode(
        ["Star Wars (1977)", "Return of the Jedi (1983)", "Toy Story (1995)"]
    )
    assert star_wars @ jedi > star_wars @ toy_story + 0.1  # measured 0.67 vs 0.40


@pytest.mark.slow
def test_title_embeddings_unit_norm_deterministic_and_batch_invariant(title_encoder):
    # titles of different lengths, so batches need padding; small enough to run one by one in ~1 s
    titles = ["Star Wars (1977)", "", "Twelve Monkeys (1995)"]
    titles += [f"Film {i} of a{' long' * i} series" for i in range(13)]
    first = title_encoder.encode(titles)
    second = title_encoder.encode(titles)
    assert first.shape == (len(titles), TEXT_DIM) == (16, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, second) and first.tobytes() == second.tobytes()
    title_encoder.batch_size = 1
    try:
        one_by_one = title_encoder.encode(titles)
    finally:
        title_encoder.batch_size = 64
    np.testing.assert_allclose(one_by_one, first, atol=1e-5, rtol=0)
    assert not np.allclose(first[0], first[2], atol=1e-2)  # different titles, different vectors


@pytest.mark.slow
def test_title_encoder_rejects_bad_input(title_encoder):
    assert title_encoder.encode([]).shape == (0, TEXT_DIM)
    with pytest.raises(TypeError, match="not a single string"):
        title_encoder.encode("Star Wars")
    with pytest.raises(TypeError, match="title 1"):
        title_encoder.encode(["ok", None])


# ---- image encoder -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_encoder() -> ImageEncoder:
    return ImageEncoder(device="cpu", batch_size=4)


def test_efficientnet_lite0_classifies_real_photos(image_encoder):
    logits = image_encoder.classify([skdata.chelsea(), skdata.coffee(), skdata.rocket()])
    assert logits.shape == (3, 1000) and logits.dtype == np.float32
    chelsea, coffee, rocket = (top5(row) for row in logits)
    assert CAT_CLASSES & set(chelsea), chelsea
    assert COFFEE_CLASSES & set(coffee), coffee
    assert ROCKET_CLASSES & set(rocket), rocket
    assert coffee[0] == 967  # espresso, p ~ 0.95 with the Lite (x - 127) / 128 scaling


def test_pooled_features_feed_the_package_classifier(image_encoder):
    """Our pooled vector + the package's fc layer == the package's own forward (same network, same cut)."""
    image = skdata.coffee()
    x = torch.from_numpy(image_encoder.preprocessing(Image.fromarray(image))[None])  # (1, 3, 224, 224)
    with torch.inference_mode():
        reference = image_encoder.model(x).numpy()  # (1, 1000)
    np.testing.assert_allclose(image_encoder.classify([image]), reference, atol=1e-4, rtol=0)
    pooled = image_encoder.encode_arrays([image])
    assert pooled.shape == (1, IMAGE_DIM) and (pooled >= 0).all() and pooled.any()  # after ReLU6


def test_image_features_are_deterministic(image_encoder):
    images = [skdata.chelsea(), skdata.astronaut(), skdata.camera()]  # camera is grayscale (H, W)
    first, second = image_encoder.encode_arrays(images), image_encoder.encode_arrays(images)
    assert first.shape == (3, IMAGE_DIM)
    assert np.array_equal(first, second) and first.tobytes() == second.tobytes()
    assert not np.allclose(first[0], first[1])


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_encode_paths_masks_missing_corrupt_and_escaping_paths(image_encoder, tmp_path, monkeypatch):
    root = tmp_path / "images"
    good = skdata.chelsea()
    good_rgba = np.dstack([skdata.coffee(), np.full(skdata.coffee().shape[:2], 255, np.uint8)])  # opaque alpha
    _write_png(root / "good.png", good)
    _write_png(root / "posters" / "rgba.png", good_rgba)
    png_bytes = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(png_bytes[: len(png_bytes) // 3])
    (root / "garbage.png").write_bytes(os.urandom(2048))
    (root / "text.jpg").write_text("this is not a JPEG")
    (root / "a_folder.png").mkdir()
    _write_png(tmp_path / "outside.png", skdata.astronaut())  # a valid image: reading it would set mask True
    os.symlink(tmp_path / "outside.png", root / "link_out.png")
    os.symlink(root / "good.png", root / "link_in.png")

    opened: list[Path] = []  # every file PIL is asked to open
    real_open = Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(Path(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)

    paths = [
        "good.png",  # 0 ok
        None,  # 1 missing
        "truncated.png",  # 2 corrupt
        "garbage.png",  # 3 corrupt
        "text.jpg",  # 4 corrupt
        "nope/absent.png",  # 5 corrupt (missing on disk)
        "../outside.png",  # 6 rejected
        str(tmp_path / "outside.png"),  # 7 rejected (absolute)
        "link_out.png",  # 8 rejected (symlink out of the root)
        "",  # 9 missing
        Path("posters/rgba.png"),  # 10 ok
        "posters/../good.png",  # 11 ok: `..` that stays inside the root
        "link_in.png",  # 12 ok: symlink inside the root
        float("nan"),  # 13 missing (pandas NaN)
        "a_folder.png",  # 14 corrupt (a directory)
    ]
    out = image_encoder.encode_paths(paths, root=root)

    expected_mask = np.zeros(len(paths), dtype=bool)
    expected_mask[[0, 10, 11, 12]] = True
    assert out.features.shape == (len(paths), IMAGE_DIM) and out.features.dtype == np.float32
    assert np.array_equal(out.mask, expected_mask)
    assert (out.n_missing, out.n_corrupt, out.n_rejected, out.n_encoded) == (3, 5, 3, 4)
    assert out.n_missing + out.n_corrupt + out.n_rejected + out.n_encoded == len(paths)
    assert not out.features[~out.mask].any()  # masked rows are exactly zero
    assert (np.abs(out.features[out.mask]).sum(axis=1) > 0).all()  # encoded rows are not
    assert len(out.problems) == 8 and any("escapes" in p for p in out.problems)

    # never opened anything outside the root
    root_resolved = root.resolve()
    assert opened and all(p.resolve().is_relative_to(root_resolved) for p in opened)
    assert (tmp_path / "outside.png").resolve() not in {p.resolve() for p in opened}

    # each good row equals that image encoded alone (batch of 1 vs batch of 4: float tolerance)
    alone_good, alone_rgba = image_encoder.encode_arrays([good]), image_encoder.encode_arrays([good_rgba])
    for row in (0, 11, 12):
        np.testing.assert_allclose(out.features[row], alone_good[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.features[10], alone_rgba[0], atol=1e-5, rtol=0)
    assert not np.allclose(out.features[0], out.features[10], atol=1e-3)

    again = image_encoder.encode_paths(paths, root=root)
    assert again.features.tobytes() == out.features.tobytes() and np.array_equal(again.mask, out.mask)


def test_encode_paths_root_checks_and_problem_cap(tmp_path):
    encoder = ImageEncoder(device="cpu", max_problems=2)
    no_images = encoder.encode_paths([None, ""], root=tmp_path / "does-not-exist")  # root never needed
    assert no_images.n_missing == 2 and not no_images.mask.any() and no_images.features.shape == (2, IMAGE_DIM)
    with pytest.raises(NotADirectoryError):
        encoder.encode_paths(["a.png"], root=tmp_path / "does-not-exist")
    out = encoder.encode_paths([f"../x{i}.png" for i in range(5)], root=tmp_path)
    assert out.n_rejected == 5 and out.problems[:2] and out.problems[-1].startswith("... and 3 more")
    assert len(out.problems) == 3
    with pytest.raises(TypeError, match="image path 0"):
        encoder.encode_paths([42], root=tmp_path)


# ---- side information --------------------------------------------------------------------------------------


def test_genre_multi_hot_exact():
    matrix, vocab = genre_multi_hot(["Comedy|Action", "Drama", None, "", "Action| Drama |Action"])
    assert vocab == ["Action", "Comedy", "Drama"]
    expected = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=np.float32)
    assert matrix.dtype == np.float32 and np.array_equal(matrix, expected)
    again, vocab_again = genre_multi_hot(["Comedy|Action", "Drama", None, "", "Action| Drama |Action"])
    assert vocab_again == vocab and again.tobytes() == matrix.tobytes()
    matrix_pipe, _ = genre_multi_hot(["A;B"], sep=";")
    assert matrix_pipe.shape == (1, 2)


def test_year_features_exact():
    years = pd.Series([1990, 2000, None, 1945, 2012], dtype="Int64")
    feats = year_features(years)
    names = year_feature_names()
    assert feats.shape == (5, len(names)) == (5, 10) and feats.dtype == np.float32
    known = np.array([1990, 2000, 1945, 2012], dtype=np.float64)
    z = (known - known.mean()) / known.std()
    np.testing.assert_allclose(feats[[0, 1, 3, 4], names.index("year_z")], z, rtol=1e-6)
    assert feats[2, names.index("year_z")] == 0.0
    np.testing.assert_array_equal(feats[:, names.index("year_missing")], [0, 0, 1, 0, 0])
    buckets = feats[:, 2:]
    np.testing.assert_array_equal(buckets.sum(axis=1), [1, 1, 0, 1, 1])  # exactly one bucket unless missing
    assert buckets[0, names.index("year_1990_2000") - 2] == 1
    assert buckets[1, names.index("year_2000_2010") - 2] == 1  # 2000 opens the 2000s
    assert buckets[3, names.index("year_lt_1950") - 2] == 1
    assert buckets[4, names.index("year_ge_2010") - 2] == 1
    # hand-checked tiny case: mean 1995, std 5
    np.testing.assert_allclose(year_features([1990, 2000])[:, 0], [-1.0, 1.0])
    assert not year_features([1999, 1999]).any(axis=0)[0]  # constant years: z = 0, no division by zero
    with pytest.raises(ValueError, match="year 0"):
        year_features([1995.5])


@pytest.fixture
def toy_kg() -> tuple[list[int], pd.DataFrame]:
    """Items 1 & 2 share director + two actors; 3 & 5 share a different cast; 4 has no triples; 6 only a
    one-off entity; 99 is not an item."""
    rows = [
        (1, "film.directed_by", "m.lucas"), (1, "film.actor", "m.hamill"), (1, "film.actor", "m.ford"),
        (2, "film.directed_by", "m.lucas"), (2, "film.actor", "m.hamill"), (2, "film.actor", "m.ford"),
        (2, "film.actor", "m.fisher"),
        (3, "film.directed_by", "m.lasseter"), (3, "film.actor", "m.hanks"),
        (5, "film.directed_by", "m.lasseter"), (5, "film.actor", "m.hanks"), (5, "film.actor", "m.allen"),
        (6, "film.actor", "m.nobody"),
        (99, "film.actor", "m.hamill"),
        (1, "film.actor", "m.hamill"),  # duplicate fact counts once
    ]
    return [1, 2, 3, 4, 5, 6], pd.DataFrame(rows, columns=["item_id", "relation", "entity"])


@pytest.mark.parametrize("dim", [64, 2])  # 64 >= vocabulary (TF-IDF as is); 2 < vocabulary (SVD path)
def test_entity_features_similarity_mask_determinism(toy_kg, dim):
    item_ids, triples = toy_kg
    feats, mask = entity_features(item_ids, triples, dim=dim, seed=0)
    assert feats.shape == (6, dim) and feats.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(mask, [True, True, True, False, True, False])
    assert not feats[~mask].any()
    np.testing.assert_allclose(np.linalg.norm(feats[mask], axis=1), 1.0, atol=1e-5)
    assert cosine(feats[0], feats[1]) > cosine(feats[0], feats[2]) + 0.5
    assert cosine(feats[2], feats[4]) > cosine(feats[2], feats[1]) + 0.5
    again, mask_again = entity_features(item_ids, triples.sample(frac=1.0, random_state=1), dim=dim, seed=0)
    assert np.array_equal(mask, mask_again)  # row order irrelevant
    if dim >= 64:  # TF-IDF as is: pure sparse arithmetic in a canonical order -> bit-identical
        assert again.tobytes() == feats.tobytes()
    else:
        # SVD path. This toy KG has two identical blocks -> tied singular values, so the basis inside the tied
        # subspace is not unique: BLAS rounding (alignment, CPU kernel) may rotate it. What is invariant, and
        # what the fusion layer's learned projection sees, are the item-item similarities.
        np.testing.assert_allclose(again @ again.T, feats @ feats.T, atol=1e-5)


def test_entity_features_svd_stable_for_distinct_singular_values():
    """A random KG (distinct singular values): the SVD features themselves, not only their similarities, are
    reproducible whatever the triple order (sign convention + seeded start vector)."""
    rng = np.random.default_rng(0)
    rows = [(int(i), "film.actor", f"m.{int(e)}") for i in range(40) for e in rng.choice(30, size=5, replace=False)]
    triples = pd.DataFrame(rows, columns=["item_id", "relation", "entity"])
    feats, mask = entity_features(list(range(40)), triples, dim=8, seed=0)
    again, _ = entity_features(list(range(40)), triples.sample(frac=1.0, random_state=3), dim=8, seed=0)
    assert mask.all() and np.abs(feats).sum() > 0
    np.testing.assert_allclose(again, feats, atol=1e-5)


def test_entity_features_relation_prefix_and_edge_cases(toy_kg):
    item_ids, triples = toy_kg
    # the same entity under different relations is a different token: no overlap -> orthogonal
    crossed = pd.DataFrame(
        [(1, "film.actor", "m.x"), (2, "film.directed_by", "m.x"), (3, "film.actor", "m.x")]
        + [(4, "film.directed_by", "m.x")],
        columns=["item_id", "relation", "entity"],
    )
    feats, mask = entity_features([1, 2, 3, 4], crossed, dim=8)
    assert mask.all() and abs(feats[0] @ feats[1]) < 1e-6 and feats[0] @ feats[2] == pytest.approx(1.0)
    # min_items=1 keeps one-off entities, so item 6 gets a vector
    _, mask_all = entity_features(item_ids, triples, dim=4, min_items=1)
    assert mask_all[5] and not mask_all[3]
    empty, empty_mask = entity_features(item_ids, triples.iloc[:0], dim=4)
    assert empty.shape == (6, 4) and not empty.any() and not empty_mask.any()
    with pytest.raises(ValueError, match="lack column"):
        entity_features(item_ids, triples.drop(columns="relation"))
    with pytest.raises(ValueError, match="no triple's item_id matches"):
        entity_features([str(i) for i in item_ids], triples)  # "1" is not 1
    with pytest.raises(ValueError, match="unique"):
        entity_features([1, 1], triples)
