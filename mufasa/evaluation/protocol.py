"""Leave-one-out, full-ranking evaluation of any scorer on the stored split.

For the *validation* target a user's input history is their training sequence; for the *test* target it is
the training sequence plus the validation event (leave-one-out by time, as in SASRec). Every evaluated user's
target is ranked against **all** items (no sampled negatives) with :mod:`mufasa.evaluation.metrics`.

Whether items already in the history are removed from the ranking is the ``filter_history`` parameter. The
default is **not** filtered, the standard leave-one-out protocol for sequential models (users do re-consume
items, and a synthetic replay is exactly that). Filtering removes the history items *other than the target*
(a target the user consumed before keeps its place), so it can only raise the metrics; reports state which
protocol was used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from mufasa.data.io import read_parquet
from mufasa.data.sequences import read_split
from mufasa.data.vocab import ItemVocab
from mufasa.evaluation.metrics import DEFAULT_KS, metrics_from_ranks, target_ranks


@dataclass(frozen=True)
class Histories:
    """Flat, index-mapped histories of a set of users (items are vocab indices 1..N)."""

    user_ids: np.ndarray  # (U,)
    offsets: np.ndarray  # (U + 1,)
    items: np.ndarray  # (E,) indices 1..N
    timestamps: np.ndarray  # (E,)

    def __len__(self) -> int:
        return len(self.user_ids)

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[u], self.offsets[u + 1]
        return self.items[a:b], self.timestamps[a:b]

    def subset(self, rows: np.ndarray) -> Histories:
        lengths = np.diff(self.offsets)[rows]
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        # positions of the chosen users' events, vectorised: each user's start, shifted onto a running range
        take = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Histories(self.user_ids[rows], offsets, self.items[take], self.timestamps[take])


@dataclass(frozen=True)
class EvalSet:
    """Histories and targets (vocab indices) of the evaluated users for one split."""

    split: str
    histories: Histories
    targets: np.ndarray  # (U,) indices 1..N


class Scorer(Protocol):
    def score(self, histories: Histories) -> torch.Tensor:
        """(U, N) scores of items 1..N (column j = item index j + 1) for each user's next event."""
        ...


@dataclass(frozen=True)
class EvalData:
    vocab: ItemVocab
    train: Histories  # every user with a training sequence
    valid: EvalSet
    test: EvalSet

    @property
    def n_items(self) -> int:
        return self.vocab.n_items


def load_eval_data(sequences_dir: Path, items_path: Path) -> EvalData:
    """Build histories and targets for validation and test from ``data/sequences`` and ``data/raw/items``."""
    items = read_parquet(items_path, columns=["item_id"])
    vocab = ItemVocab(items["item_id"].to_numpy())
    split = read_split(sequences_dir)
    train = Histories(
        split.train["user_id"].to_numpy(np.int64),
        split.train_offsets.astype(np.int64),
        vocab.to_index(split.train_items),
        split.train_timestamps.astype(np.int64),
    )
    row_of = pd.Series(np.arange(len(train)), index=train.user_ids)
    valid_rows = row_of.loc[split.valid["user_id"].to_numpy()].to_numpy()
    valid = EvalSet("valid", train.subset(valid_rows), vocab.to_index(split.valid["item_id"].to_numpy()))
    # test history = train history + the validation event, appended at its time
    base = train.subset(valid_rows)
    lengths = np.diff(base.offsets) + 1
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items_out = np.empty(offsets[-1], dtype=np.int64)
    ts_out = np.empty(offsets[-1], dtype=np.int64)
    last = offsets[1:] - 1
    mask = np.ones(offsets[-1], dtype=bool)
    mask[last] = False
    items_out[mask], ts_out[mask] = base.items, base.timestamps
    items_out[last] = valid.targets
    ts_out[last] = split.valid["timestamp"].to_numpy(np.int64)
    test_targets = pd.Series(split.test["item_id"].to_numpy(), index=split.test["user_id"].to_numpy())
    test = EvalSet(
        "test",
        Histories(base.user_ids, offsets, items_out, ts_out),
        vocab.to_index(test_targets.loc[base.user_ids].to_numpy()),
    )
    return EvalData(vocab, train, valid, test)


def _batches(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size))


PROTOCOLS = ("unfiltered", "filtered")


def evaluate(
    scorer: Scorer,
    data: EvalSet,
    n_items: int,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    filter_history: bool = False,
    batch_size: int = 512,
    coverage_k: int = 10,
) -> dict[str, float]:
    """Full-ranking metrics of ``scorer`` on one split, plus catalogue coverage of its top-``coverage_k`` lists."""
    protocol = "filtered" if filter_history else "unfiltered"
    return evaluate_protocols(
        scorer, data, n_items, ks=ks, batch_size=batch_size, coverage_k=coverage_k, protocols=(protocol,)
    )[protocol][0]


def evaluate_protocols(
    scorer: Scorer,
    data: EvalSet,
    n_items: int,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 512,
    coverage_k: int = 10,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> dict[str, tuple[dict[str, float], np.ndarray]]:
    """``{protocol: (metrics, ranks)}`` from one scoring pass; ``ranks`` (U,) int64 holds each user's 0-based
    target rank in the order of ``data.targets`` (for paired per-user comparisons of two models).

    ``filtered`` removes the user's history items from the ranking, except the target itself (a re-consumed
    target keeps its place: :func:`~mufasa.evaluation.metrics.target_ranks`); its coverage counts the top-k lists
    a user would be shown, history removed.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}")
    ranks: dict[str, list[torch.Tensor]] = {p: [] for p in protocols}
    recommended = {p: np.zeros(n_items, dtype=bool) for p in protocols}
    for rows in _batches(len(data.targets), batch_size):
        hist = data.histories.subset(rows)
        scores = scorer.score(hist).float()  # (b, N)
        if scores.shape != (len(rows), n_items):
            raise ValueError(f"scorer returned {tuple(scores.shape)}, expected ({len(rows)}, {n_items})")
        targets = torch.as_tensor(data.targets[rows] - 1)
        for protocol in protocols:
            exclude = history_mask(hist, len(rows), n_items) if protocol == "filtered" else None
            ranks[protocol].append(target_ranks(scores, targets, exclude))
            shown = scores if exclude is None else scores.masked_fill(exclude, float("-inf"))
            top = torch.topk(shown, k=min(coverage_k, n_items), dim=1).indices.numpy()
            recommended[protocol][np.unique(top)] = True
    out = {}
    for protocol in protocols:
        all_ranks = torch.cat(ranks[protocol]) if ranks[protocol] else torch.zeros(0, dtype=torch.long)
        metrics = metrics_from_ranks(all_ranks, ks)
        metrics[f"coverage@{coverage_k}"] = float(recommended[protocol].mean())
        out[protocol] = (metrics, all_ranks.numpy().astype(np.int64))
    return out


def history_mask(histories: Histories, n_users: int, n_items: int) -> torch.Tensor:
    """(U, N) bool: True where item j + 1 occurs in user u's history."""
    mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    owner = np.repeat(np.arange(n_users), np.diff(histories.offsets))
    mask[torch.as_tensor(owner), torch.as_tensor(histories.items - 1)] = True
    return mask


class PopularityScorer:
    """Most-popular baseline: every user gets the training-set item counts as scores."""

    def __init__(self, train: Histories, n_items: int):
        counts = np.bincount(train.items, minlength=n_items + 1)[1:].astype(np.float32)
        self.scores = torch.as_tensor(counts)

    def score(self, histories: Histories) -> torch.Tensor:
        return self.scores.expand(len(histories), -1)
