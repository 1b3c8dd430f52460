"""The data path at scale, on small data: the scale generator, chunked GX validation, batched Parquet reads, the
referential-integrity column and the vectorised per-user order check. (Throughput and memory at 1M-20M events are
measured by ``benchmarks/data_scale.py``, not here.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_checks import interactions_suite, items_suite, run_suite, run_suite_chunks, with_unknown_ids
from mufasa.config import IngestConfig, MovieLensCsvSource, SequencesConfig
from mufasa.data import public
from mufasa.data import sequences as seq
from mufasa.data.io import iter_parquet_frames, write_parquet
from mufasa.data.scale import T0, T1, user_lengths, write_movielens_csv
from mufasa.pipeline import validation
from mufasa.pipeline import ingest as ingest_stage
from mufasa.pipeline import sequences as sequences_stage
from mufasa.pipeline import validate as validate_stage
from mufasa.pipeline.paths import ProjectPaths

NOW = 1_700_000_000


# ------------------------------------------------------------------------------------------------ generator


def test_scale_generator_writes_a_valid_deterministic_movielens_csv_release(tmp_path):
    a = write_movielens_csv(tmp_path / "a", 30_000, seed=3)
    b = write_movielens_csv(tmp_path / "b", 30_000, seed=3)
    c = write_movielens_csv(tmp_path / "c", 30_000, seed=4)
    assert (a.folder / "ratings.csv").read_bytes() == (b.folder / "ratings.csv").read_bytes()
    assert (a.folder / "ratings.csv").read_bytes() != (c.folder / "ratings.csv").read_bytes()
    assert (a.folder / "ratings.csv").read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    assert (a.folder / "movies.csv").read_text().splitlines()[0] == "movieId,title,genres"

    interactions, items, sources = public.load_movielens_csv(a.folder)
    assert len(interactions) == 30_000 and len(items) == a.n_items
    assert interactions["user_id"].nunique() == a.n_users
    assert interactions["timestamp"].between(T0, T1).all()
    assert interactions["item_id"].isin(items["item_id"]).all()
    assert set(interactions["rating"].unique()) <= {x / 2 for x in range(1, 11)}
    # Rows come as MovieLens ships them: by user, then movie (so the pipeline must order events by time itself).
    keys = interactions[["user_id", "item_id"]].to_numpy()
    assert (np.diff(keys[:, 0]) >= 0).all()
    assert not interactions.groupby("user_id")["timestamp"].is_monotonic_increasing.all()
    assert items["year"].notna().all() and (items["title"].str.len() > 0).all()
    ingest_stage.validate_frames(interactions, items, sources, NOW)  # passes the interactions and items suites


def test_user_lengths_sum_exactly_and_respect_the_minimum():
    rng = np.random.default_rng(0)
    lengths = user_lengths(10_007, 60, rng, min_len=5)
    assert lengths.sum() == 10_007 and lengths.min() >= 5
    assert lengths.max() > 5 * np.median(lengths)  # a long tail of heavy users
    with pytest.raises(ValueError, match="cannot give"):
        user_lengths(100, 60, rng, min_len=5)


def test_a_scale_release_goes_through_ingest_validate_and_sequences(tmp_path):
    ds = write_movielens_csv(tmp_path / "data", 20_000, seed=0)
    cfg = IngestConfig(source="movielens-csv", now=NOW, movielens_csv=MovieLensCsvSource(path=str(ds.folder)))
    paths = ProjectPaths(tmp_path / "project")
    ingested = ingest_stage.ingest(cfg, paths)
    assert ingested.metrics["n_interactions"] == 20_000
    assert validate_stage.validate(cfg, paths).metrics["interactions_expectations_failed"] == 0
    result = sequences_stage.sequences(SequencesConfig(min_events=3), paths)
    assert result.metrics["n_train_events"] + result.metrics["n_valid"] + result.metrics["n_test"] == 20_000


# ---------------------------------------------------------------------------------------- chunked validation


def _interactions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(1, 50, n),
            "item_id": rng.integers(1, 100, n),
            "timestamp": rng.integers(0, NOW, n),
        }
    )


def _with_planted_errors(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[[5, 96, 97, 500, 998], "item_id"] = 4242  # unknown items, across chunk boundaries (chunks of 97)
    df.loc[[0, 194, 999], "timestamp"] = NOW + 10  # future timestamps
    return df


def _summary(result):
    return [(c.expectation, c.column, c.success, c.unexpected_count, c.unexpected_index, c.unexpected_values)
            for c in result.checks]


@pytest.mark.parametrize("planted", [False, True])
def test_chunked_validation_equals_whole_frame_validation(planted):
    df = _interactions(1000)
    if planted:
        df = _with_planted_errors(df)
    known = np.arange(1, 100)
    suite = interactions_suite(now=NOW, check_item_ids=True)
    whole = run_suite(with_unknown_ids(df, ["item_id"], known), suite)
    chunks = (with_unknown_ids(c, ["item_id"], known) for c in validation.frame_chunks(df, rows=97))
    chunked = run_suite_chunks(chunks, suite)
    assert chunked.success == whole.success == (not planted)
    assert chunked.n_rows == whole.n_rows == 1000
    assert _summary(chunked) == _summary(whole)
    if planted:
        failed = {c.column: c for c in chunked.failures}
        assert failed["item_id"].unexpected_count == 5
        assert failed["item_id"].unexpected_index == (5, 96, 97, 500, 998)
        assert set(failed["item_id"].unexpected_values) == {4242}
        assert failed["timestamp"].unexpected_index == (0, 194, 999)


def test_chunked_validation_refuses_whole_column_rules_and_flags_an_empty_table():
    items = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "genres": ["", ""], "year": [2000, 2001]})
    with pytest.raises(ValueError, match="whole-table expectations"):
        run_suite_chunks(validation.frame_chunks(items), items_suite(now_year=2026))
    empty = _interactions(0)
    result = validation.check_interactions(empty, now=NOW, item_ids=[1, 2])
    assert not result.success
    assert [c.expectation for c in result.failures] == ["expect_table_row_count_to_be_between"]


def test_unknown_item_errors_name_file_column_and_row_through_the_batched_validate_stage(tmp_path, monkeypatch):
    paths = ProjectPaths(tmp_path)
    df = _with_planted_errors(_interactions(1000))
    df["timestamp"] = df["timestamp"].clip(upper=NOW)  # only the unknown items are wrong
    items = pd.DataFrame(
        {"item_id": np.arange(1, 100), "title": [f"t{i}" for i in range(1, 100)], "genres": "", "year": 2000}
    )
    write_parquet(df, paths.raw_interactions)
    write_parquet(items, paths.raw_items)
    monkeypatch.setattr(validation, "CHUNK_ROWS", 97)
    with pytest.raises(validation.DataValidationError) as err:
        validate_stage.validate(IngestConfig(now=NOW), paths)
    (problem,) = err.value.problems
    assert problem.file == str(paths.raw_interactions) and problem.column == "item_id"
    assert "not in the items table" in problem.message and "5 row(s)" in problem.message
    assert problem.rows[:5] == (5, 96, 97, 500, 998)
    assert "4242" in str(err.value)


def test_with_unknown_ids_copies_no_data_and_leaves_the_input_alone():
    df = _interactions(10)
    out = with_unknown_ids(df, ["item_id", "missing_column"], [1, 2, 3])
    assert list(df.columns) == ["user_id", "item_id", "timestamp"]
    assert "item_id__unknown" in out and "missing_column__unknown" not in out
    assert np.shares_memory(out["user_id"].to_numpy(), df["user_id"].to_numpy())
    known = df["item_id"].isin([1, 2, 3])
    assert out["item_id__unknown"].isna().tolist() == known.tolist()


# ------------------------------------------------------------------------------------------- batched reads


def test_iter_parquet_frames_reassembles_the_table_with_global_row_labels(tmp_path):
    df = _interactions(1000).assign(rating=np.linspace(0.5, 5, 1000))
    path = write_parquet(df, tmp_path / "t.parquet")
    parts = list(iter_parquet_frames(path, rows=128))
    assert len(parts) == 8 and [p.index[0] for p in parts] == list(range(0, 1000, 128))
    whole = pd.concat(parts)
    pd.testing.assert_frame_equal(whole, pd.read_parquet(path).set_axis(whole.index))
    only = list(iter_parquet_frames(path, rows=600, columns=["item_id"]))
    assert [list(p.columns) for p in only] == [["item_id"], ["item_id"]]
    empty = write_parquet(df.iloc[:0], tmp_path / "empty.parquet")
    (frame,) = list(iter_parquet_frames(empty, rows=10))
    assert len(frame) == 0 and list(frame.columns) == list(df.columns)


# ------------------------------------------------------------------------------------ order check, vectorised


def test_train_min_step_matches_a_per_user_loop():
    rng = np.random.default_rng(1)
    n = 3000
    df = pd.DataFrame(
        {"user_id": rng.integers(1, 400, n), "item_id": rng.integers(1, 50, n), "timestamp": rng.integers(0, 500, n)}
    )
    split = seq.leave_one_out(df, min_events=3)
    # Disorder some users' histories after the split, as a bug in the split would.
    ts = split.train_timestamps.copy()
    offs = split.train_offsets
    for u in range(0, len(offs) - 1, 7):
        a, b = offs[u], offs[u + 1]
        ts[a:b] = ts[a:b][::-1]
    broken = seq.SequenceSplit(**{**split.__dict__, "train_timestamps": ts})
    summary = seq.split_summary(broken, df).set_index("user_id")
    for u, (a, b) in enumerate(zip(offs[:-1], offs[1:])):
        expected = int(np.diff(ts[a:b]).min()) if b - a > 1 else 0
        assert summary.loc[split.train["user_id"].iloc[u], "train_min_step"] == expected
    assert (summary["train_min_step"] < 0).any()


# ------------------------------------------------------------------------------- typed CSV fast path (files)


@pytest.mark.parametrize(
    "name, sep, encoding, rename",
    [
        ("interactions.csv", ",", "utf-8", {}),
        ("events.tsv", None, "utf-8", {"uid": "user_id", "iid": "item_id"}),
        ("events.csv.gz", ",", "latin-1", {"uid": "user_id", "iid": "item_id"}),
    ],
)
def test_typed_fast_path_reads_what_the_exact_text_path_reads(tmp_path, monkeypatch, name, sep, encoding, rename):
    import gzip

    from mufasa.data import readers

    df = _interactions(3000).assign(rating=np.round(np.linspace(0.5, 5, 3000) * 2) / 2, note="é")
    df = df.rename(columns={v: k for k, v in rename.items()})
    delim = sep or "\t"
    text = df.to_csv(index=False, sep=delim).encode(encoding)
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)

    fast, fast_src = readers.read_interactions(path, rename=rename, sep=sep, encoding=encoding)
    calls = []
    monkeypatch.setattr(readers, "read_typed_csv", lambda *a, **k: calls.append(1))  # -> None: exact path
    exact, exact_src = readers.read_interactions(path, rename=rename, sep=sep, encoding=encoding)
    assert calls  # the exact path really ran
    pd.testing.assert_frame_equal(fast, exact)
    assert fast_src == exact_src
    assert list(fast.columns) == ["user_id", "item_id", "timestamp", "rating"]


def test_bad_values_deep_in_a_large_file_still_name_their_lines(tmp_path):
    from mufasa.data import readers

    df = _interactions(50_000)
    text = df.to_csv(index=False).splitlines()
    text[40_001] = text[40_001].replace(",", ",x", 1)  # data row 40,000 (line 40,002): item_id "x..."
    text[45_001] = ",".join(text[45_001].split(",")[:2] + [""])  # a missing timestamp at line 45,002
    path = tmp_path / "interactions.csv"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(readers.DataValidationError) as err:
        readers.read_interactions(path)
    by_column = {p.column: p for p in err.value.problems}
    assert by_column["item_id"].rows == (40_002,) and by_column["item_id"].row_label == "line"
    assert by_column["timestamp"].rows == (45_002,)
