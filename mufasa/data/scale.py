"""Large synthetic datasets in MovieLens' published CSV format, for scale tests and the data benchmark.

:func:`write_movielens_csv` writes ``ratings.csv`` + ``movies.csv`` exactly as the MovieLens 20M/25M/32M
releases lay them out (header ``userId,movieId,rating,timestamp``; rows ordered by user, then movie — not by
time, as in the real files; titles ``"Name (year)"``, ``|``-separated genres), so the ``movielens-csv`` ingest
source reads them like the real thing. Shape follows ML-25M: ~150 events per user on a log-normal spread (a
few users with thousands of events), a Zipf-like item popularity, 0.5-step star ratings.

Everything is vectorised numpy and written in chunks through pyarrow's CSV writer: 20M events take well under a
minute and a few hundred MB of memory. Deterministic for a given ``(n_events, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from mufasa.data.io import atomic_path

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
EVENTS_PER_USER = 150  # ML-25M: 25.0M ratings / 162k users
EVENTS_PER_ITEM = 400  # ML-25M: 25.0M ratings / 62k movies (capped below)
MAX_ITEMS = 62_000
T0 = 946_684_800  # 2000-01-01
T1 = 1_600_000_000  # 2020-09-13
WRITE_CHUNK = 2_000_000  # rows per CSV write batch


@dataclass(frozen=True)
class ScaleDataset:
    folder: Path
    n_events: int
    n_users: int
    n_items: int


def user_lengths(n_events: int, n_users: int, rng: np.random.Generator, min_len: int = 5) -> np.ndarray:
    """Events per user: log-normal (sigma 1), at least ``min_len``, summing to exactly ``n_events``."""
    if n_events < n_users * min_len:
        raise ValueError(f"{n_events} events cannot give {n_users} users {min_len} events each")
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    extra = n_events - n_users * min_len
    lengths = min_len + np.floor(raw / raw.sum() * extra).astype(np.int64)
    short = n_events - int(lengths.sum())
    lengths[rng.choice(n_users, size=short, replace=False)] += 1  # 0 <= short < n_users
    return lengths


def write_movielens_csv(folder: Path, n_events: int, seed: int = 0) -> ScaleDataset:
    """Write a synthetic MovieLens-CSV release with ``n_events`` ratings into ``folder`` (atomically per file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = max(1, n_events // EVENTS_PER_USER)
    n_items = int(min(MAX_ITEMS, max(100, n_events // EVENTS_PER_ITEM)))
    lengths = user_lengths(n_events, n_users, rng)

    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    item_of_rank = rng.permutation(n_items) + 1  # popularity rank -> movieId (ids 1..n_items)
    cdf = np.cumsum(popularity / popularity.sum())
    cdf[-1] = 1.0

    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    items = item_of_rank[np.searchsorted(cdf, rng.random(n_events), side="right")]
    # Per-user time: a start in [T0, T1), then exponential gaps rescaled so the user's history ends before T1.
    gaps = rng.exponential(1.0, size=n_events)
    csum = np.cumsum(gaps)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    before = np.repeat(csum[starts] - gaps[starts], lengths)  # cumulative gaps before each user's first event
    total = np.repeat(csum[ends - 1], lengths) - before
    start_t = rng.integers(T0, T1, size=n_users)
    span = (T1 - start_t) * rng.uniform(0.05, 1.0, size=n_users)
    ts = np.repeat(start_t, lengths) + ((csum - before) / total * np.repeat(span, lengths)).astype(np.int64)
    del gaps, csum, before, total
    ratings = rng.integers(1, 11, size=n_events) / 2.0
    # MovieLens orders rows by user, then movie.
    order = np.lexsort((items, users))
    table = pa.table(
        {
            "userId": pa.array(users[order]),
            "movieId": pa.array(items[order]),
            "rating": pa.array(ratings[order]),
            "timestamp": pa.array(ts[order]),
        }
    )
    del users, items, ts, ratings, order
    options = pa_csv.WriteOptions(include_header=False)
    with atomic_path(folder / "ratings.csv") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"userId,movieId,rating,timestamp\n")
            for start in range(0, table.num_rows, WRITE_CHUNK):
                pa_csv.write_csv(table.slice(start, WRITE_CHUNK), fh, options)

    genres = ["|".join(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    movies = pd.DataFrame(
        {
            "movieId": np.arange(1, n_items + 1),
            "title": [f"Synthetic Movie {i}, Part {i % 7 + 1} ({1920 + i % 100})" for i in range(1, n_items + 1)],
            "genres": genres,
        }
    )
    with atomic_path(folder / "movies.csv") as tmp:
        movies.to_csv(tmp, index=False)
    return ScaleDataset(folder, n_events, n_users, n_items)
