"""Per-user, time-ordered behaviour sequences and the leave-one-out split.

Order: events are sorted per user by a *stable* sort on timestamp, so events with the same timestamp keep the
order of the source file (ML-100k has many same-second events; an unstable sort would shuffle them between runs
and leak a different item into the test position).

Split (leave-one-out by time, as in SASRec/BERT4Rec evaluation): for every user with at least ``min_events``
events, the last event is the test target, the second-to-last the validation target, and everything before is
the training history. Users with fewer events keep all of them in training and are not evaluated. No event is
in two splits, and every validation/test event is at or after every training event of its user.

Tables (Parquet):
- ``train``: ``user_id``, ``item_ids`` (list<int64>), ``timestamps`` (list<int64>) — one row per user.
- ``valid`` / ``test``: ``user_id``, ``item_id``, ``timestamp`` — one target row per evaluated user. The input
  history of a validation target is the user's train sequence; of a test target, train + the validation event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mufasa.data.io import atomic_path, read_parquet, read_table


@dataclass(frozen=True)
class SequenceSplit:
    train: pd.DataFrame  # user_id, item_ids (object arrays), timestamps
    valid: pd.DataFrame  # user_id, item_id, timestamp
    test: pd.DataFrame  # user_id, item_id, timestamp
    # flat, time-ordered training events (aligned arrays), the form training code wants for long sequences
    train_users: np.ndarray
    train_offsets: np.ndarray  # (n_users + 1,) offsets into train_items
    train_items: np.ndarray
    train_timestamps: np.ndarray


def order_events(interactions: pd.DataFrame) -> np.ndarray:
    """Row positions that order events by (user, timestamp), ties keeping source-file order.

    ``np.lexsort`` is a stable sort, and the frame is in source-file order, so ties keep that order.
    """
    return np.lexsort((interactions["timestamp"].to_numpy(), interactions["user_id"].to_numpy()))


def leave_one_out(interactions: pd.DataFrame, min_events: int = 3) -> SequenceSplit:
    """Split time-ordered events per user into train history, validation target and test target."""
    if min_events < 3:
        raise ValueError(f"min_events must be >= 3 (one train, one valid, one test event); got {min_events}")
    order = order_events(interactions)
    users = interactions["user_id"].to_numpy()[order]
    items = interactions["item_id"].to_numpy()[order]
    ts = interactions["timestamp"].to_numpy()[order]

    # Run-length boundaries of each user's block in the sorted arrays.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(users)]
    lengths = ends - starts
    evaluated = lengths >= min_events

    test_pos = ends[evaluated] - 1
    valid_pos = ends[evaluated] - 2
    split_marker = np.zeros(len(users), dtype=np.int8)  # 0 train, 1 valid, 2 test
    split_marker[valid_pos] = 1
    split_marker[test_pos] = 2
    is_train = split_marker == 0

    train_users_all = users[is_train]
    train_items = items[is_train]
    train_ts = ts[is_train]
    train_lengths = lengths - 2 * evaluated.astype(np.int64)
    keep = train_lengths > 0
    train_user_ids = users[starts][keep]
    offsets = np.r_[0, np.cumsum(train_lengths[keep])].astype(np.int64)

    train = pd.DataFrame(
        {
            "user_id": train_user_ids.astype(np.int64),
            "item_ids": [train_items[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
            "timestamps": [train_ts[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
        }
    )
    valid = pd.DataFrame({"user_id": users[valid_pos], "item_id": items[valid_pos], "timestamp": ts[valid_pos]})
    test = pd.DataFrame({"user_id": users[test_pos], "item_id": items[test_pos], "timestamp": ts[test_pos]})
    return SequenceSplit(
        train=train,
        valid=valid.astype("int64"),
        test=test.astype("int64"),
        train_users=train_users_all,
        train_offsets=offsets,
        train_items=train_items.astype(np.int64),
        train_timestamps=train_ts.astype(np.int64),
    )


def split_summary(split: SequenceSplit, interactions: pd.DataFrame) -> pd.DataFrame:
    """One row per user with the numbers the sequence suite checks (order, counts, leakage)."""
    n_events = interactions.groupby("user_id").size().rename("n_events")
    offs = split.train_offsets
    lengths = np.diff(offs)
    # Smallest step between consecutive training timestamps of each user (>= 0 iff time-ordered): the minimum
    # of the user's steps, with the step that crosses into the next user replaced by +inf (int64 max), so one
    # reduceat over the user boundaries does it without per-user objects. Users with one event get 0.
    min_step = np.zeros(len(lengths), dtype=np.int64)
    if len(split.train_timestamps) > 1:
        steps = np.empty(len(split.train_timestamps), dtype=np.int64)
        steps[:-1] = np.diff(split.train_timestamps)
        steps[offs[1:] - 1] = np.iinfo(np.int64).max
        multi = lengths > 1
        min_step[multi] = np.minimum.reduceat(steps, offs[:-1][multi])
        del steps
    train = pd.DataFrame(
        {
            "user_id": split.train["user_id"].to_numpy(),
            "n_train": lengths,
            "train_min_step": min_step,
            "train_last_ts": split.train_timestamps[offs[1:] - 1] if len(lengths) else np.array([], dtype=np.int64),
        }
    )
    valid = split.valid.rename(columns={"item_id": "valid_item_id", "timestamp": "valid_ts"})
    test = split.test.rename(columns={"item_id": "test_item_id", "timestamp": "test_ts"})
    summary = (
        n_events.reset_index()
        .merge(train, on="user_id", how="left")
        .merge(valid, on="user_id", how="left")
        .merge(test, on="user_id", how="left")
    )
    summary["n_train"] = summary["n_train"].fillna(0).astype("int64")
    summary["n_valid"] = summary["valid_item_id"].notna().astype("int64")
    summary["n_test"] = summary["test_item_id"].notna().astype("int64")
    summary["n_split"] = summary["n_train"] + summary["n_valid"] + summary["n_test"]
    return summary


def write_split(split: SequenceSplit, out_dir: Path) -> dict[str, Path]:
    """Write train/valid/test Parquet files atomically; the train table uses Arrow list columns."""
    out_dir = Path(out_dir)
    offsets = pa.array(split.train_offsets.astype(np.int32 if len(split.train_items) < 2**31 else np.int64))
    list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
    train_table = pa.table(
        {
            "user_id": pa.array(split.train["user_id"].to_numpy(), type=pa.int64()),
            "item_ids": list_type.from_arrays(offsets, pa.array(split.train_items, type=pa.int64())),
            "timestamps": list_type.from_arrays(offsets, pa.array(split.train_timestamps, type=pa.int64())),
        }
    )
    paths = {}
    with atomic_path(out_dir / "train.parquet") as tmp:
        pq.write_table(train_table, tmp, compression="zstd")
    paths["train"] = out_dir / "train.parquet"
    for name in ("valid", "test"):
        table = pa.Table.from_pandas(getattr(split, name), preserve_index=False).replace_schema_metadata(None)
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")
        paths[name] = out_dir / f"{name}.parquet"
    return paths


def read_train_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``train.parquet`` as flat arrays: (user_ids, offsets, item_ids, timestamps), no per-user objects."""
    table = read_table(path)
    items_col = table.column("item_ids").combine_chunks()
    ts_col = table.column("timestamps").combine_chunks()
    offsets = np.asarray(items_col.offsets, dtype=np.int64)
    return (
        table.column("user_id").to_numpy(),
        offsets - offsets[0],
        np.asarray(items_col.flatten(), dtype=np.int64),
        np.asarray(ts_col.flatten(), dtype=np.int64),
    )


def read_split(folder: Path) -> SequenceSplit:
    """Read a split written by :func:`write_split` back into a :class:`SequenceSplit`."""
    folder = Path(folder)
    for name in ("train", "valid", "test"):
        if not (folder / f"{name}.parquet").is_file():
            raise FileNotFoundError(f"{folder / name}.parquet not found: run the sequences stage first")
    user_ids, offsets, items, ts = read_train_sequences(folder / "train.parquet")
    train = pd.DataFrame(
        {
            "user_id": user_ids,
            "item_ids": [items[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
            "timestamps": [ts[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
        }
    )
    return SequenceSplit(
        train=train,
        valid=read_parquet(folder / "valid.parquet"),
        test=read_parquet(folder / "test.parquet"),
        train_users=np.repeat(user_ids, np.diff(offsets)),
        train_offsets=offsets,
        train_items=items,
        train_timestamps=ts,
    )
