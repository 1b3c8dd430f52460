"""Full-ranking top-k metrics (no sampled negatives).

Every evaluated user's target is ranked against **all** items. Ties are broken *pessimistically*: the target's
0-based rank is the number of other items scoring at least as high. A model that gives every item the same
score therefore gets the worst rank, not the best (an optimistic tie rule would let a constant model score
HR@k = 1). For a target at 0-based rank r:

- HR@k   = 1 if r < k
- NDCG@k = 1 / log2(r + 2) if r < k (one relevant item, so the ideal DCG is 1)
- MRR@k  = 1 / (r + 1) if r < k

When k exceeds the catalogue size every target is inside the top k, so HR@k = 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_KS = (10, 50)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based pessimistic ranks of ``targets`` (B,) among ``scores`` (B, N).

    ``exclude`` (B, N) bool marks items removed from the ranking (e.g. history items when filtering is on); the
    target itself is never excluded. Excluded items get -inf.
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (B, N) and targets (B,), got {tuple(scores.shape)}, {tuple(targets.shape)}")
    scores = scores.float()
    if exclude is not None:
        exclude = exclude.clone()
        exclude[torch.arange(len(targets)), targets] = False
        scores = scores.masked_fill(exclude, float("-inf"))
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    at_least = (scores >= target_scores).sum(dim=1) - 1  # other items scoring >= the target
    return at_least


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out: dict[str, float] = {"n_users": float(len(r))}
    if len(r) == 0:
        return out
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (r + 1.0), torch.zeros_like(r)).mean().item()
    return out
