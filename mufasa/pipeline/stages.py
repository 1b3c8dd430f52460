"""The pipeline's stages: one plain function each, typed config + project paths in, files out.

Each stage validates what it is about to write *before* writing it, and writes atomically, so bad input never
overwrites a previous valid output. Stages import neither Dagster nor DVC nor MLflow: they return a
:class:`StageResult` that the callers (``mufasa.cli`` for DVC, ``orchestration`` for Dagster) hand to the
tracking adapter and to asset metadata.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mufasa.config import IngestConfig, SequencesConfig
from mufasa.data import public
from mufasa.data import sequences as seq
from mufasa.data.io import (
    atomic_path,
    iter_parquet_frames,
    load_npy,
    read_parquet,
    tree_md5,
    write_json,
    write_parquet,
)
from mufasa.data.movielens import load_ml100k, load_ml100k_kg
from mufasa.data.readers import TableSource, read_entities, read_interactions, read_items
from data_checks import SuiteResult
from mufasa.pipeline import validation
from mufasa.pipeline.fingerprint import source_fingerprint
from mufasa.pipeline.paths import ProjectPaths


@dataclass(frozen=True)
class StageResult:
    stage: str
    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # non-numeric facts for people (source, hashes)
    artifacts: tuple[Path, ...] = ()  # files worth attaching to the tracking run


# --------------------------------------------------------------------------------------------------- ingest


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


def validate_frames(interactions: pd.DataFrame, items: pd.DataFrame, sources: dict[str, TableSource], now: int):
    """Run the items and interactions suites; raise one error naming file/column/rows for every failure."""
    items_result = validation.check_items(items, now=now)
    ids = items["item_id"] if items_result.success else items["item_id"].dropna()
    inter_result = validation.check_interactions(interactions, now=now, item_ids=ids)
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


def ingest(cfg: IngestConfig, paths: ProjectPaths) -> StageResult:
    """Normalise the configured source into ``data/raw/`` after it passes the interactions and items suites."""
    now = validation.now_unix(cfg.now)
    src = load_source(cfg, paths.root)
    validate_frames(src.interactions, src.items, src.sources, now)

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


def require_raw(paths: ProjectPaths) -> None:
    for p in (paths.raw_interactions, paths.raw_items):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: run the ingest stage first")


def read_raw(paths: ProjectPaths, columns: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw interactions (only ``columns``, if given) and items tables."""
    require_raw(paths)
    return read_parquet(paths.raw_interactions, columns=columns), read_parquet(paths.raw_items)


# ------------------------------------------------------------------------------------------------- validate


def check_raw(cfg: IngestConfig, paths: ProjectPaths) -> tuple[StageResult, dict[str, tuple[SuiteResult, TableSource]]]:
    """Run the items and interactions suites on the stored raw tables and write the report (never raises on
    a failed suite: callers decide; :func:`validate` raises, the Dagster checks report)."""
    require_raw(paths)
    items = read_parquet(paths.raw_items)
    now = validation.now_unix(cfg.now)
    items_result = validation.check_items(items, now=now)
    # The interactions table is read and checked one batch at a time: memory stays bounded at any size.
    chunks = iter_parquet_frames(paths.raw_interactions, validation.CHUNK_ROWS)
    inter_result = validation.check_interactions(chunks, now=now, item_ids=items["item_id"])
    report = {"interactions": inter_result.to_dict(), "items": items_result.to_dict()}
    write_json(report, paths.validation_report)
    results = {
        "interactions": (inter_result, TableSource(str(paths.raw_interactions), "parquet")),
        "items": (items_result, TableSource(str(paths.raw_items), "parquet")),
    }
    metrics = {
        "interactions_expectations_failed": float(len(inter_result.failures)),
        "items_expectations_failed": float(len(items_result.failures)),
    }
    return StageResult("validate", {"report": paths.validation_report}, metrics, {}, {"report": report}), results


def validate(cfg: IngestConfig, paths: ProjectPaths) -> StageResult:
    """Re-check the stored raw tables with the GX suites; write the report; raise if any suite fails."""
    result, suites = check_raw(cfg, paths)
    validation.raise_for(suites.values())
    return result


# ------------------------------------------------------------------------------------------------ sequences

SEQUENCE_COLUMNS = ("user_id", "item_id", "timestamp")  # all the split needs (ratings stay in data/raw)


def sequences(cfg: SequencesConfig, paths: ProjectPaths) -> StageResult:
    """Time-ordered per-user sequences and the leave-one-out split, checked by the sequences suite."""
    interactions, items = read_raw(paths, columns=list(SEQUENCE_COLUMNS))
    split = seq.leave_one_out(interactions, min_events=cfg.min_events)
    summary = seq.split_summary(split, interactions)
    result = validation.check_sequences(summary, item_ids=items["item_id"])
    validation.raise_for([(result, TableSource(f"{paths.sequences_dir} (derived)", "parquet"))])

    written = seq.write_split(split, paths.sequences_dir)
    lengths = np.diff(split.train_offsets)
    metrics = {
        "n_train_users": float(len(split.train)),
        "n_train_events": float(len(split.train_items)),
        "n_valid": float(len(split.valid)),
        "n_test": float(len(split.test)),
        "train_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "train_len_max": float(lengths.max()) if len(lengths) else 0.0,
        "n_users_not_evaluated": float((summary["n_test"] == 0).sum()),
    }
    write_json(metrics, paths.metrics_dir / "sequences.json")
    outputs = dict(written, metrics=paths.metrics_dir / "sequences.json")
    info = {"suite": result.to_dict(), "hashes": {k: tree_md5(v) for k, v in written.items()}}
    return StageResult("sequences", outputs, metrics, {"min_events": cfg.min_events}, info)


def check_sequences(paths: ProjectPaths) -> SuiteResult:
    """Run the sequences suite on the stored split (what downstream stages will read)."""
    interactions, items = read_raw(paths, columns=list(SEQUENCE_COLUMNS))
    split = seq.read_split(paths.sequences_dir)
    return validation.check_sequences(seq.split_summary(split, interactions), item_ids=items["item_id"])


def features(cfg, paths: ProjectPaths) -> StageResult:
    """Modality features for every item (see :mod:`mufasa.pipeline.features`)."""
    from mufasa.pipeline.features import extract_features

    return extract_features(cfg, paths)


def check_features(paths: ProjectPaths, min_image_coverage: float = 0.0) -> SuiteResult:
    """Run the features suite on the stored feature files."""
    from mufasa.pipeline.features import feature_summary, read_features

    f = read_features(paths.features_dir)
    index = f["index"]
    summary = feature_summary(
        index["item_id"].to_numpy(), f["text"], f["image"], index["has_image"].to_numpy(), f["side"]
    )
    n_items = len(read_parquet(paths.raw_items, columns=["item_id"]))
    return validation.check_features(summary, n_items=n_items, min_image_coverage=min_image_coverage)


# Collapse guards for the fused space. A collapsed space has effective rank ~1 and title-neighbour overlap at
# chance level; a healthy one (measured on ML-100k: rank ~45 of 64, overlap ~0.17 vs chance 0.006) is far above.
MIN_FUSED_EFFECTIVE_RANK = 4.0
MIN_TITLE_OVERLAP_OVER_CHANCE = 3.0


def fused_space_health(paths: ProjectPaths) -> dict:
    """Effective rank and title-neighbour preservation of the stored fused vectors, with a pass/fail verdict."""
    from mufasa.training.diagnostics import effective_rank, knn_overlap

    fused = load_npy(paths.fused_items)
    if fused.shape[1] == 0:
        return {"passed": True, "reason": "MFL disabled (zero-width fused vectors)", "n_items": len(fused)}
    text = load_npy(paths.features_dir / "text.npy")
    k = min(10, len(fused) - 1)
    chance = k / max(1, len(fused) - 1)
    rank = effective_rank(fused)
    overlap = knn_overlap(text, fused, k)
    finite = bool(np.isfinite(fused).all())
    passed = finite and rank >= MIN_FUSED_EFFECTIVE_RANK and overlap >= MIN_TITLE_OVERLAP_OVER_CHANCE * chance
    reason = None if passed else (
        f"fused space unhealthy: finite={finite}, effective rank {rank:.2f} (min {MIN_FUSED_EFFECTIVE_RANK}), "
        f"title kNN overlap {overlap:.3f} (min {MIN_TITLE_OVERLAP_OVER_CHANCE * chance:.3f})"
    )
    return {
        "passed": passed,
        "reason": reason,
        "n_items": len(fused),
        "effective_rank": float(rank),
        "title_knn_overlap": float(overlap),
        "knn_chance": float(chance),
    }


STAGES = ("ingest", "validate", "sequences", "features", "train_mfl", "train_sal", "evaluate", "gate")


def run_stage(name: str, params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """Dispatch a stage by name with its section of the parsed params.

    ``on_metrics(step, dict)`` receives training curves as they happen (the tracker logs them).
    """
    if name == "ingest":
        return ingest(params.ingest, paths)
    if name == "validate":
        return validate(params.ingest, paths)
    if name == "sequences":
        return sequences(params.sequences, paths)
    if name == "features":
        return features(params.features, paths)
    if name == "train_mfl":
        from mufasa.pipeline.train_mfl import run_train_mfl

        return run_train_mfl(params, paths, on_metrics)
    if name == "train_sal":
        from mufasa.pipeline.train_sal import run_train_sal

        return run_train_sal(params, paths, on_metrics)
    if name == "evaluate":
        from mufasa.pipeline.evaluate import run_evaluate

        return run_evaluate(params, paths, on_metrics)
    if name == "gate":
        from mufasa.pipeline.gate import run_gate

        return run_gate(params, paths, stage_run)
    raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")


def clean_outputs(paths: ProjectPaths) -> None:
    """Remove every stage output (used by tests and `mufasa clean`)."""
    for folder in (paths.raw_dir, paths.sequences_dir, paths.features_dir, paths.reports_dir, paths.metrics_dir):
        shutil.rmtree(folder, ignore_errors=True)
