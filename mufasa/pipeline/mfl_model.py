"""The fusion layer (MFL) as the pipeline fits it — shared by the ``train_mfl`` stage, the benchmark (one fit per
seed) and the tuner (no stage owns it).

:func:`fit_mfl` reads ``data/features/`` (text, image + mask, side), ``data/raw/items.parquet`` (genres, for the
genre-mixing sampler) and ``data/sequences/train.parquet`` (the collaborative space is built from the TRAIN split
only, so validation/test events never leak into the item vectors) and trains; it writes nothing but its
checkpoint (``checkpoints/train_mfl/<inputs hash>/``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mufasa.data.io import file_md5, read_parquet
from mufasa.data.sequences import read_train_sequences
from mufasa.data.vocab import ItemVocab
from mufasa.models.fusion import FusionConfig
from mufasa.pipeline.inputs import read_features
from mufasa.pipeline.params import mfl_configs
from mufasa.pipeline.paths import ProjectPaths
from mufasa.training.mfl_trainer import MFLTrainConfig, MFLTrainResult, collaborative_space, train_mfl

__all__ = ["FittedMFL", "fit_mfl", "primary_genres"]


def primary_genres(items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Primary (first-listed) genre id per item (-1 where none) and the genre names."""
    first = items["genres"].fillna("").astype(str).str.split("|").str[0]
    codes, names = pd.factorize(first.where(first != "", None), sort=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _inputs_hash(paths: ProjectPaths, cfg_json: str) -> str:
    h = hashlib.md5(cfg_json.encode())
    for p in (paths.feature_file("text.npy"), paths.feature_file("side.npy"), paths.train_sequences):
        h.update(file_md5(p).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FittedMFL:
    fusion_cfg: FusionConfig
    train_cfg: MFLTrainConfig
    cfg_json: str  # what config.json records (and the checkpoint folder's hash covers)
    result: MFLTrainResult
    genres: np.ndarray  # (N,) primary genre id per item
    genre_names: list[str]
    checkpoint_dir: Path | None


def fit_mfl(params, paths: ProjectPaths, seed: int | None = None, on_metrics=None, checkpoint: bool = True) -> FittedMFL:
    """Train the fusion layer on the stored features and TRAIN split; nothing is written but the checkpoint.

    ``seed`` (benchmark use) replaces ``train_mfl.train.seed``, so a seeded comparison counts MFL's own variance.
    ``checkpoint=False`` (in-memory benchmark and tuning fits) trains without a resumable checkpoint.
    """
    items = read_parquet(paths.raw_items)
    stored = read_features(paths.features_dir)
    feats = stored.features
    if not np.array_equal(stored.index["item_id"].to_numpy(), items["item_id"].to_numpy()):
        raise ValueError(f"{paths.features_dir}/index.parquet does not follow {paths.raw_items}: rerun features")
    fusion_cfg, train_cfg = mfl_configs(
        params, side_dim=feats.side.shape[1], text_dim=feats.text.shape[1], image_dim=feats.image.shape[1]
    )
    if seed is not None:
        train_cfg = dataclasses.replace(train_cfg, seed=seed)
    vocab = ItemVocab(items["item_id"].to_numpy())
    _, offsets, train_items, _ = read_train_sequences(paths.train_sequences)
    collab, collab_mask = collaborative_space(
        offsets,
        vocab.to_index(train_items),
        vocab.n_items,
        dim=fusion_cfg.collab_dim,
        window=params.train_mfl.collab_window,
        seed=train_cfg.seed,
    )
    genres, genre_names = primary_genres(items)

    cfg_json = json.dumps(
        {"enabled": True, "fusion": dataclasses.asdict(fusion_cfg), "train": dataclasses.asdict(train_cfg),
         "collab_window": params.train_mfl.collab_window},
        sort_keys=True,
        default=str,
    )
    ckpt_dir = paths.checkpoint_dir("train_mfl", _inputs_hash(paths, cfg_json)) if checkpoint else None
    result = train_mfl(
        fusion_cfg,
        train_cfg,
        feats,
        collab,
        collab_mask,
        genres,
        checkpoint_dir=ckpt_dir,
        on_metrics=on_metrics,
    )

    return FittedMFL(fusion_cfg, train_cfg, cfg_json, result, genres, genre_names, ckpt_dir)
