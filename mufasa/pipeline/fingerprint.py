"""A fingerprint of the configured raw-data source: changes exactly when re-ingesting could change the data.

It covers the ``ingest`` parameters of the source in use and the bytes of every source file (for ``files``:
interactions, items, entities and the image folder; for MovieLens-100k: the package files; for the public
formats of ``mufasa.data.public``: ratings/reviews, movies/metadata and Amazon's image folder). ``ingest``
records it in ``data/raw/manifest.json``; the Dagster sensor compares the current fingerprint with its cursor
(or, on its first tick, with the manifest) to start a retrain once per new version of the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mufasa.config import IngestConfig
from mufasa.data.io import tree_md5


def source_files(cfg: IngestConfig, root: Path) -> list[Path]:
    if cfg.source == "movielens-100k":
        from mufasa.data.movielens import ml100k_dir

        folder = ml100k_dir()
        return [folder / "ml-100k.inter", folder / "ml-100k.item", folder / "ml-100k.kg", folder / "ml-100k.link"]
    if cfg.source == "files":
        f = cfg.files
        paths = [root / f.interactions, root / f.items]
        if f.entities:
            paths.append(root / f.entities)
        if f.image_root:
            paths.append(root / f.image_root)
        return paths
    if cfg.source == "movielens-1m":
        folder = root / cfg.movielens_1m.path
        return [folder / "ratings.dat", folder / "movies.dat"]
    if cfg.source == "movielens-csv":
        folder = root / cfg.movielens_csv.path
        return [folder / "ratings.csv", folder / "movies.csv"]
    if cfg.source == "amazon-2023":
        a = cfg.amazon_2023
        return [root / a.reviews, root / a.meta] + ([root / a.image_root] if a.image_root else [])
    return []  # synthetic: the parameters are the data


def source_fingerprint(cfg: IngestConfig, root: Path) -> str:
    """md5 over the ingest parameters (minus ``now`` and the sections of sources not in use) and the source
    files' contents (missing files count)."""
    h = hashlib.md5()
    params = dataclasses.asdict(cfg)
    params.pop("now", None)
    active = cfg.source.replace("-", "_")  # e.g. "movielens-1m" -> section "movielens_1m"
    for f in dataclasses.fields(cfg):
        if f.name != active and dataclasses.is_dataclass(getattr(cfg, f.name)):
            params.pop(f.name)  # another source's settings cannot change this source's data
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for path in source_files(cfg, Path(root)):
        h.update(str(path.name).encode())
        h.update((tree_md5(path) if path.exists() else "missing").encode())
    return h.hexdigest()
