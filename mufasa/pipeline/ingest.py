"""The ``ingest`` stage: read the configured source, check it with the GX suites, normalise it into ``data/raw/``.

Sources (``params.yaml`` ``ingest.source``): the embedded MovieLens-100k, the synthetic generator, CSV/Parquet
files, MovieLens 1M / CSV releases and Amazon Reviews 2023 (:mod:`mufasa.data.public`). Outputs:
``data/raw/{interactions,items,item_entities}.parquet``, ``data/raw/images/`` (generated images, synthetic
source) and ``data/raw/manifest.json`` (source, description, portable file paths, source fingerprint). Nothing is
written unless both suites pass; every file is written atomically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mufasa.config import IngestConfig, Params
from mufasa.data import public
from mufasa.data.io import atomic_path, tree_md5, write_json, write_parquet
from mufasa.data.movielens import load_ml100k, load_ml100k_kg
from mufasa.data.readers import TableSource, read_entities, read_interactions, read_items
from mufasa.pipeline import validation
from mufasa.pipeline.fingerprint import source_fingerprint
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult

__all__ = ["LoadedSource", "ingest", "interaction_stats", "load_source", "validate_frames"]


@dataclass(frozen=True)
class LoadedSource:
    interactions: pd.DataFrame
    items: pd.DataFrame
    sources: dict[str, TableSource]
    description: str
    image_root: Path | None = None  # where items' image_path resolves, if the source has images
    entities: pd.DataFrame | None = None  # knowledge-graph facts: item_id, relation, entity
    render_images: Any = None  # callable(folder) that writes generated images (synthetic source)


def load_source(cfg: IngestConfig, root: Path) -> LoadedSource:
    """Read the configured source into canonical frames (types parsed; values not yet checked)."""
    if cfg.source == "movielens-100k":
        interactions, items, sources = load_ml100k()
        return LoadedSource(
            interactions, items, sources, "MovieLens-100k (recbole 1.2.1 wheel)", entities=load_ml100k_kg()
        )
    if cfg.source == "synthetic":
        from mufasa.data import synthetic

        syn_cfg = synthetic.SyntheticConfig(**dataclasses.asdict(cfg.synthetic))
        data = synthetic.generate(syn_cfg)
        label = f"<synthetic seed={syn_cfg.seed}>"
        sources = {"interactions": TableSource(label, "parquet"), "items": TableSource(label, "parquet")}
        return LoadedSource(
            data.interactions,
            data.items,
            sources,
            f"synthetic ({syn_cfg.n_users} users, {syn_cfg.n_items} items, seed {syn_cfg.seed})",
            render_images=lambda folder: synthetic.write_images(data, folder, syn_cfg),
        )
    if cfg.source in ("movielens-1m", "movielens-csv", "amazon-2023"):
        return _load_public(cfg, root)
    files = cfg.files
    inter_path, items_path = root / files.interactions, root / files.items
    kwargs = {"rename": dict(files.rename), "sep": files.sep, "encoding": files.encoding}
    # Read both before raising, so one run reports the problems of both files.
    errors = []
    try:
        interactions, inter_src = read_interactions(inter_path, **kwargs)
    except validation.DataValidationError as exc:
        errors.extend(exc.problems)
    try:
        items, items_src = read_items(items_path, **kwargs)
    except validation.DataValidationError as exc:
        errors.extend(exc.problems)
    entities = None
    if files.entities:
        try:
            entities = read_entities(root / files.entities, **kwargs)
        except validation.DataValidationError as exc:
            errors.extend(exc.problems)
    if errors:
        raise validation.DataValidationError(errors)
    image_root = (root / files.image_root) if files.image_root else None
    return LoadedSource(
        interactions,
        items,
        {"interactions": inter_src, "items": items_src},
        f"files ({files.interactions}, {files.items})",
        image_root=image_root,
        entities=entities,
    )


def _load_public(cfg: IngestConfig, root: Path) -> LoadedSource:
    """A public dataset in its published format (``mufasa.data.public``)."""
    if cfg.source == "movielens-1m":
        interactions, items, sources = public.load_movielens_1m(root / cfg.movielens_1m.path)
        return LoadedSource(interactions, items, sources, f"MovieLens 1M ({cfg.movielens_1m.path})")
    if cfg.source == "movielens-csv":
        interactions, items, sources = public.load_movielens_csv(root / cfg.movielens_csv.path)
        return LoadedSource(interactions, items, sources, f"MovieLens CSV ({cfg.movielens_csv.path})")
    a = cfg.amazon_2023
    image_root = root / a.image_root if a.image_root else None
    interactions, items, sources = public.load_amazon_2023(root / a.reviews, root / a.meta, image_root)
    return LoadedSource(
        interactions, items, sources, f"Amazon Reviews 2023 ({a.reviews}, {a.meta})", image_root=image_root
    )


def validate_frames(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    sources: dict[str, TableSource],
    now: int,
    paths: ProjectPaths | None = None,
    stage_run=None,
):
    """Run the items and interactions suites; raise one error naming file/column/rows for every failure.

    With ``paths``, both validations become GX Data Docs pages of a run named ``ingest`` (rows are the files'
    0-based data rows), logged to ``stage_run`` before a failure is raised."""
    docs = validation.docs_run(paths, "ingest") if paths is not None else None

    def asset(name: str) -> str:
        if paths is None:
            return name
        source = sources[name]
        note = " (file line = row + 2)" if source.kind == "csv" else ""  # the header is line 1
        return validation.asset_name(source.path, paths) + note

    items_result = validation.check_items(items, now=now, docs=docs, asset=asset("items"))
    ids = items["item_id"] if items_result.success else items["item_id"].dropna()
    inter_result = validation.check_interactions(
        interactions, now=now, item_ids=ids, docs=docs, asset=asset("interactions")
    )
    validation.log_data_docs(stage_run, [items_result, inter_result])
    validation.raise_for([(items_result, sources["items"]), (inter_result, sources["interactions"])])
    return items_result, inter_result


def interaction_stats(interactions: pd.DataFrame, items: pd.DataFrame) -> dict[str, float]:
    per_user = interactions.groupby("user_id").size()
    n_users, n_items = int(per_user.size), int(len(items))
    return {
        "n_interactions": float(len(interactions)),
        "n_users": float(n_users),
        "n_items": float(n_items),
        "n_items_interacted": float(interactions["item_id"].nunique()),
        "density": float(len(interactions) / max(1, n_users * n_items)),
        "events_per_user_mean": float(per_user.mean()),
        "events_per_user_median": float(per_user.median()),
        "events_per_user_max": float(per_user.max()),
        "n_items_with_image": float(items["image_path"].notna().sum()) if "image_path" in items else 0.0,
        "timestamp_min": float(interactions["timestamp"].min()),
        "timestamp_max": float(interactions["timestamp"].max()),
    }


def ingest(cfg: IngestConfig, paths: ProjectPaths, stage_run=None) -> StageResult:
    """Normalise the configured source into ``data/raw/`` after it passes the interactions and items suites
    (GX Data Docs pages, logged to ``stage_run``)."""
    now = validation.now_unix(cfg.now)
    src = load_source(cfg, paths.root)
    validate_frames(src.interactions, src.items, src.sources, now, paths, stage_run)

    interactions = _renumbered(src.interactions)
    items = _renumbered(src.items)
    paths.raw_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths.raw_images) as tmp_images:
        tmp_images.mkdir()
        n_images = src.render_images(tmp_images) if src.render_images is not None else 0
    image_root = paths.raw_images if src.render_images is not None else src.image_root
    entities = src.entities if src.entities is not None else pd.DataFrame(
        {"item_id": pd.Series(dtype="int64"), "relation": pd.Series(dtype="string"), "entity": pd.Series(dtype="string")}
    )
    write_parquet(entities.reset_index(drop=True), paths.raw_entities)
    write_parquet(items, paths.raw_items)
    write_parquet(interactions, paths.raw_interactions)
    stats = interaction_stats(interactions, items)
    stats["n_entity_facts"] = float(len(entities))
    manifest = {
        "source": cfg.source,
        "description": src.description,
        "image_root": _relative(image_root, paths.root) if image_root is not None else None,
        "n_generated_images": n_images,
        "source_fingerprint": source_fingerprint(cfg, paths.root),
        "files": {k: _portable(v.path, paths.root) for k, v in src.sources.items()},
    }
    write_json(manifest, paths.raw_manifest)
    outputs = {
        "interactions": paths.raw_interactions,
        "items": paths.raw_items,
        "images": paths.raw_images,
        "entities": paths.raw_entities,
        "manifest": paths.raw_manifest,
    }
    info = dict(manifest, hashes={k: tree_md5(v) for k, v in outputs.items()})
    return StageResult("ingest", outputs, stats, {"source": cfg.source}, info)


def _renumbered(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a 0..n-1 index, without copying its data (``reset_index`` copies every column)."""
    out = df.copy(deep=False)
    out.index = pd.RangeIndex(len(df))
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(Path(path).resolve())


def _portable(path: str, root: Path) -> str:
    """A path that reads the same on every machine: relative to the project, or to site-packages."""
    if path.startswith("<"):
        return path
    rel = _relative(Path(path), root)
    if "site-packages" in Path(rel).parts:
        return "site-packages/" + rel.split("site-packages/", 1)[1]
    return rel


def run(params: Params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return ingest(params.ingest, paths, stage_run)
