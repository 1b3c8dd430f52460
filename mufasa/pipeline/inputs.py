"""Readers of stage outputs that later stages share (none of the stages owns them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mufasa.data.features import ItemFeatures
from mufasa.data.io import load_npy, read_json, read_parquet
from mufasa.pipeline.paths import ProjectPaths

__all__ = ["FEATURE_FILES", "StoredFeatures", "read_features", "read_raw", "require_raw"]

FEATURE_FILES = ("text.npy", "image.npy", "side.npy", "index.parquet", "meta.json")


def require_raw(paths: ProjectPaths) -> None:
    for p in (paths.raw_interactions, paths.raw_items):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: run the ingest stage first")


def read_raw(paths: ProjectPaths, columns: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw interactions (only ``columns``, if given) and items tables."""
    require_raw(paths)
    return read_parquet(paths.raw_interactions, columns=columns), read_parquet(paths.raw_items)


@dataclass(frozen=True)
class StoredFeatures:
    """What the ``features`` stage wrote: the arrays, the row index (``item_id``, ``row``, ``has_image``,
    ``has_entities``) and ``meta.json`` (dims, side-column layout, encoders, image counts)."""

    features: ItemFeatures
    index: pd.DataFrame
    meta: dict


def read_features(folder: Path) -> StoredFeatures:
    """Load ``data/features/`` (every file checked: a damaged one names itself and the stage to rerun)."""
    folder = Path(folder)
    missing = [f for f in FEATURE_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing}; run the features stage first")
    index = read_parquet(folder / "index.parquet")
    features = ItemFeatures(
        text=load_npy(folder / "text.npy"),
        image=load_npy(folder / "image.npy"),
        image_mask=index["has_image"].to_numpy(dtype=bool),
        side=load_npy(folder / "side.npy"),
    )
    return StoredFeatures(features, index, read_json(folder / "meta.json"))
