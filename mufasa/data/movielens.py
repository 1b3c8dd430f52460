"""MovieLens-100k, read from the atomic files shipped inside the ``recbole==1.2.1`` wheel.

The files live in ``recbole/dataset_example/ml-100k/`` (``.inter``, ``.item``, ``.user``, ``.kg``, ``.link``;
tab-separated, RecBole's ``name:type`` headers). We locate them with ``importlib.util.find_spec`` and never
import recbole (nor redistribute the data: its licence forbids that). Install with
``pip install --no-deps recbole==1.2.1`` (``make setup`` does).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from mufasa.data.readers import TableSource
from mufasa.data.schema import DataValidationError, Problem

ML100K_PACKAGE = "recbole"
ML100K_SUBDIR = Path("dataset_example") / "ml-100k"


def ml100k_dir() -> Path:
    """The folder holding the ML-100k atomic files, or a clear error saying how to install them."""
    spec = importlib.util.find_spec(ML100K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100k is read from the recbole wheel, which is not installed: "
            "run `pip install --no-deps recbole==1.2.1` (make setup does this)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / ML100K_SUBDIR
    if not (folder / "ml-100k.inter").is_file():
        raise FileNotFoundError(f"{folder}/ml-100k.inter not found: reinstall recbole==1.2.1")
    return folder


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file; strip the ``:type`` suffix from its header names."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""], quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def load_ml100k(folder: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, TableSource]]:
    """Interactions and items of ML-100k in the canonical schema (source row order kept)."""
    folder = Path(folder) if folder is not None else ml100k_dir()
    inter_path, item_path = folder / "ml-100k.inter", folder / "ml-100k.item"
    inter = _read_atomic(inter_path)
    items_raw = _read_atomic(item_path)
    sources = {"interactions": TableSource(str(inter_path), "csv"), "items": TableSource(str(item_path), "csv")}
    try:
        interactions = pd.DataFrame(
            {
                "user_id": inter["user_id"].astype("int64"),
                "item_id": inter["item_id"].astype("int64"),
                "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
                "rating": pd.to_numeric(inter["rating"]).astype("float64"),
            }
        )
        items = pd.DataFrame(
            {
                "item_id": items_raw["item_id"].astype("int64"),
                "title": items_raw["movie_title"].astype("string").str.strip(),
                # RecBole stores genres space-separated; multi-word genres are single tokens (Film-Noir, Sci-Fi).
                "genres": items_raw["class"].fillna("").str.split().str.join("|").astype("string"),
                "year": pd.to_numeric(items_raw["release_year"], errors="coerce").astype("Int64"),
                "image_path": pd.Series(pd.NA, index=items_raw.index, dtype="string"),
            }
        )
    except (KeyError, ValueError) as exc:
        raise DataValidationError([Problem(str(folder), None, f"unexpected ML-100k file layout: {exc}")]) from exc
    return interactions, items, sources


def load_ml100k_kg(folder: Path | None = None) -> pd.DataFrame:
    """Knowledge-graph triples joined to items: ``item_id, relation, entity`` (for side-information features)."""
    folder = Path(folder) if folder is not None else ml100k_dir()
    kg = _read_atomic(folder / "ml-100k.kg")
    link = _read_atomic(folder / "ml-100k.link")
    link = link.assign(item_id=link["item_id"].astype("int64"))
    merged = kg.merge(link, left_on="head_id", right_on="entity_id", how="inner")
    return pd.DataFrame(
        {"item_id": merged["item_id"], "relation": merged["relation_id"], "entity": merged["tail_id"]}
    ).reset_index(drop=True)
