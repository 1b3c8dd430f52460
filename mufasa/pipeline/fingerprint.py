"""A fingerprint of the configured raw-data source: changes exactly when re-ingesting could change the data.

It covers the ``ingest`` parameters and the bytes of every source file (for ``files``: interactions, items,
entities and the image folder; for MovieLens-100k: the package files). ``ingest`` records it in
``data/raw/manifest.json``; the Dagster sensor compares the current fingerprint with its cursor (or, on its first
tick, with the manifest) to start a retrain once per new version of the data.
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
    return []  # synthetic: the parameters are the data


def source_fingerprint(cfg: IngestConfig, root: Path) -> str:
    """md5 over the ingest parameters (minus ``now``) and the source files' contents (missing files count)."""
    h = hashlib.md5()
    params = dataclasses.asdict(cfg)
    params.pop("now", None)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for path in source_files(cfg, Path(root)):
        h.update(str(path.name).encode())
        h.update((tree_md5(path) if path.exists() else "missing").encode())
    return h.hexdigest()
