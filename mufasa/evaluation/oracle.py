"""An oracle for long-range recall: copy what followed the best-matching earlier moment of the history.

:class:`CopyOracleScorer` is the reference a long-sequence model is measured against on data with planted
replays (``ingest.synthetic.tail_replay``): for the history's last events, it finds the earlier positions whose
preceding events match the history's suffix (longest match first, the most recent among equals) and scores the
item that followed each of them, so inside a replay of an earlier session it predicts the session's next item.
It reads only the history it is given (no targets, no generator ground truth), so it is a scorer like any model:
what a model that looks back perfectly could reach, not a leak of the answer.
"""

from __future__ import annotations

import numpy as np
import torch

from mufasa.evaluation.protocol import Histories

__all__ = ["CopyOracleScorer", "copy_scores"]


def copy_scores(history: np.ndarray, n_items: int, max_match: int = 64) -> np.ndarray:
    """(n_items,) float scores of items 1..N (column j = item j + 1) for the event after ``history``.

    An item that followed an earlier position j scores ``m_j + j / (len + 1)`` (its best over such j), where
    ``m_j`` (>= 1) is the length of the common suffix of ``history[: j + 1]`` and ``history`` (capped at
    ``max_match``), so a longer match wins and the most recent breaks ties; every other item scores -1.
    """
    h = np.asarray(history, dtype=np.int64)
    n = len(h)
    scores = np.full(n_items, -1.0)
    if n < 2:
        return scores
    cand = np.arange(n - 1)  # earlier positions j that have a successor j + 1 inside the history
    alive = h[cand] == h[-1]
    match = alive.astype(np.int64)
    for d in range(1, max_match):
        ok = alive & (cand - d >= 0)
        if not ok.any():
            break
        same = np.zeros_like(alive)
        same[ok] = h[cand[ok] - d] == h[n - 1 - d]
        alive = same
        match += alive
    hit = match > 0
    if not hit.any():
        return scores
    succ = h[cand[hit] + 1] - 1  # column of the successor item
    value = match[hit] + cand[hit] / (n + 1)
    np.maximum.at(scores, succ, value)
    return scores


class CopyOracleScorer:
    """:class:`~mufasa.evaluation.protocol.Scorer` of :func:`copy_scores` over each history."""

    def __init__(self, n_items: int, max_match: int = 64):
        self.n_items = n_items
        self.max_match = max_match

    def score(self, histories: Histories) -> torch.Tensor:
        rows = [copy_scores(histories.user(u)[0], self.n_items, self.max_match) for u in range(len(histories))]
        return torch.as_tensor(np.stack(rows) if rows else np.zeros((0, self.n_items)), dtype=torch.float32)
