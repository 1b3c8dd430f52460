"""The real default data: MovieLens-100k read from the recbole wheel's files."""

from __future__ import annotations

import pandas as pd
import pytest

from mufasa.data.movielens import load_ml100k, load_ml100k_kg, ml100k_dir
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline import sequences as sequences_stage
from mufasa.pipeline.params import parse_params


def test_ml100k_counts_and_schema():
    interactions, items, sources = load_ml100k()
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    assert len(items) == 1_682
    assert items["item_id"].is_unique
    assert list(interactions.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert interactions.dtypes["timestamp"] == "int64"
    assert set(interactions["item_id"]) <= set(items["item_id"])
    toy = items.set_index("item_id").loc[1]
    assert toy["title"] == "Toy Story" and toy["year"] == 1995
    assert toy["genres"].split("|") == ["Animation", "Children's", "Comedy"]
    assert sources["interactions"].path.endswith("ml-100k.inter")


def test_ml100k_files_come_from_the_package_not_the_repo():
    folder = ml100k_dir()
    assert "recbole" in folder.parts and folder.name == "ml-100k"


def test_ml100k_knowledge_graph_links_items():
    kg = load_ml100k_kg()
    assert {"item_id", "relation", "entity"} <= set(kg.columns)
    assert kg["item_id"].nunique() > 1_000  # most films are linked to KG entities
    assert kg["relation"].str.startswith("film.").mean() > 0.5


@pytest.mark.slow
def test_ingest_and_sequences_on_ml100k(tmp_path):
    from mufasa.pipeline.paths import ProjectPaths

    paths = ProjectPaths(tmp_path)
    params = parse_params({})
    result = ingest_stage.ingest(params.ingest, paths)
    assert result.metrics["n_interactions"] == 100_000
    seq = sequences_stage.sequences(params.sequences, paths)
    assert seq.metrics["n_test"] == 943 and seq.metrics["n_valid"] == 943
    assert seq.metrics["n_train_events"] == 100_000 - 2 * 943
    stored = pd.read_parquet(paths.raw_interactions)
    assert len(stored) == 100_000
