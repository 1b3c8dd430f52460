"""Training SAL: length-bucketed left-padded batches, next-item loss at every position, full-ranking validation.

- Data are the flat arrays of :func:`mufasa.data.sequences.read_train_sequences` with items already mapped to
  indices 1..N (``ItemVocab.to_index``): ``offsets`` (U + 1,), ``items_index`` (E,), ``timestamps`` (E,).
- A training example is one user's whole train sequence, left-truncated to its last ``max_len + 1`` events:
  inputs are events [:-1], targets events [1:], and the loss covers every position (as SASRec/HSTU train).
- Batches (``batching: bucketed``): users are shuffled with the seeded generator, sorted by length inside chunks
  of 50 batches, cut into batches and the batch order shuffled again, so padding waste stays small while batches
  keep mixing; ``batching: random`` skips the sorting. ``loss_weighting: target`` gives every target the same
  weight over an epoch (a batch's summed loss over the epoch's mean targets per batch), as the reference SASRec's
  batches of random prefixes do; ``batch`` averages within each batch, so a target among short histories weighs
  more. Long histories are cut into windows (:func:`training_windows`, ``window_stride``).
- Validation: each user with a target ranks it against **all** items given the user's train sequence (the last
  ``max_len`` events); NDCG@10 drives early stopping. Pessimistic ties (:mod:`mufasa.evaluation.metrics`).
- The budget is counted in optimizer steps (:func:`resolve_budget`): ``epochs`` passes, but at least
  ``min_evals`` evaluation periods of at least ``min_eval_steps`` steps, so 300 users with thousands of events
  (a few steps an epoch) train as long as 943 short histories; early stopping counts evaluations. Linear warm-up,
  then a constant, cosine or linear learning rate over the budget.
- AdamW with gradient clipping, bf16 autocast on CUDA, a checkpoint after every evaluation, mid-epoch included
  (model, optimizer, early stopping, best weights, history, the epoch's batch order and position, RNG states),
  and exact resume: a run stopped after k steps and resumed follows the same curve as an uninterrupted run.
- Under torchrun (:mod:`mufasa.training.distributed`): DDP, each rank takes a contiguous shard of every global
  batch and scales its mean loss by ``world · P_rank / P_batch`` (P = positions with a target), so DDP's gradient
  mean equals the gradient of the global batch's mean loss. Exact for ``loss: full``; the sampled softmax draws
  its in-batch negatives from the rank's shard only (the estimate stays unbiased, the draws differ).
  Validation runs on rank 0 and is broadcast; checkpoints, callbacks and the progress bar are rank 0's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mufasa.evaluation.metrics import metrics_from_ranks, target_ranks
from mufasa.models.sal import SALConfig, SALModel
from mufasa.training import distributed
from mufasa.training.common import (
    Checkpointer,
    EarlyStopping,
    MetricsCallback,
    autocast,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "SALTrainConfig",
    "SALTrainResult",
    "SequenceBatch",
    "TrainingBudget",
    "evaluate_next_item",
    "extend_sequences",
    "training_windows",
    "iter_last_scores",
    "length_bucketed_batches",
    "pad_sequences",
    "resolve_budget",
    "score_users",
    "train_sal",
]

log = logging.getLogger(__name__)

TrainSeqs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (offsets (U+1,), items_index (E,), timestamps (E,))
BUCKET_BATCHES = 50  # batches per length-sorting chunk: low padding waste, still well-mixed batches


@dataclass(frozen=True)
class SALTrainConfig:
    """How SAL is trained (the model's shape lives in ``SALConfig``).

    The budget is counted in optimizer steps, resolved from the data size by :func:`resolve_budget`: ``epochs``
    passes over the training targets, but never fewer than ``min_evals`` evaluation periods, so a small set of
    long histories (a few steps an epoch) trains as long as a large set of short ones; validation every
    ``eval_every`` epochs but at least ``min_eval_steps`` steps apart; early stopping after ``patience``
    evaluations without a better validation NDCG@10. The learning rate warms up linearly, then follows
    ``lr_schedule`` over the budget.
    """

    # Passes over the training targets (the budget's size for data with many steps per epoch).
    epochs: int = 200
    # Users per batch; each contributes up to max_len positions to the loss. Global: split across DDP ranks.
    batch_size: int = 128
    # Peak learning rate (AdamW); see warmup_steps and lr_schedule.
    lr: float = 1e-3
    # Mild decoupled decay on matrices only (not biases, LayerNorms).
    weight_decay: float = 0.01
    # Max global gradient norm: guards the early epochs of a full softmax. None: no clipping (as RecBole).
    grad_clip: float | None = 1.0
    # Evaluations without a better NDCG@10 before stopping.
    patience: int = 10
    # Validate every eval_every epochs (and at the end of the budget) ...
    eval_every: int = 1
    # ... but never less than min_eval_steps optimizer steps apart: with a few steps an epoch (few users, long
    # histories), an epoch is too little training to judge and patience would run out after a few dozen steps.
    min_eval_steps: int = 100
    # The budget is at least min_evals evaluation periods (3 x patience: room for a plateau, then a rise).
    min_evals: int = 30
    # Hard cap on optimizer steps (None: none).
    max_steps: int | None = None
    # Linear warm-up from 0 to lr over this many steps; None = one evaluation period, at most 5 % of the budget.
    warmup_steps: int | None = None
    # After warm-up: "constant", "cosine" (to min_lr_ratio x lr at the end of the budget) or "linear".
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    # Left-truncation length; None = the model's max_len (must not exceed it).
    max_len: int | None = None
    progress: bool = True  # tqdm bar (stderr) with the live loss
    # How targets are weighted. "target": every target weighs the same over an epoch (a batch's summed loss over
    # the epoch's mean targets per batch), as the reference's batches of random prefixes weigh them.
    # "batch": the mean over each batch's targets, so a target in a batch of short histories weighs more.
    loss_weighting: str = "batch"
    # Long histories: windows of max_len + 1 events every window_stride events, each training its newest
    # window_stride targets (see training_windows). None = max_len (no overlap); 1 = one example per prefix.
    window_stride: int | None = None
    # "bucketed": users sorted by length inside chunks (little padding); "random": plain shuffled batches.
    batching: str = "bucketed"
    # Exponential moving average of the weights (torch.optim.swa_utils): after every step the averaged copy moves
    # (1 - ema_decay) of the way to the trained weights; validation, early stopping and the returned model use the
    # average. None: the trained weights themselves.
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.eval_every < 1:
            raise ValueError("need epochs, batch_size, patience and eval_every >= 1")
        if self.min_eval_steps < 1 or self.min_evals < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("need min_eval_steps, min_evals and max_steps (or None) >= 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0 (or None)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ValueError("need lr > 0, weight_decay >= 0, grad_clip > 0 (or None)")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError("max_len must be >= 1 (or None)")
        if self.window_stride is not None and self.window_stride < 1:
            raise ValueError("window_stride must be >= 1 (or None)")
        if self.loss_weighting not in ("batch", "target"):
            raise ValueError(f"loss_weighting must be 'batch' or 'target', got {self.loss_weighting!r}")
        if self.batching not in ("bucketed", "random"):
            raise ValueError(f"batching must be 'bucketed' or 'random', got {self.batching!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (or None), got {self.ema_decay!r}")


LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainingBudget:
    """The step budget of one run, resolved from the data size (:func:`resolve_budget`)."""

    examples: int  # training rows (users, or windows of long histories) with at least one target
    steps_per_epoch: int
    eval_every_steps: int
    max_steps: int
    warmup_steps: int
    lr_schedule: str
    min_lr_ratio: float

    @property
    def epochs(self) -> float:
        return self.max_steps / self.steps_per_epoch

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak lr for the optimizer step that follows ``step`` completed steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(self.max_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.lr_schedule == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def describe(self) -> str:
        return (
            f"{self.examples} training examples, {self.steps_per_epoch} steps an epoch: budget {self.max_steps} "
            f"steps ({self.epochs:.1f} epochs), validation every {self.eval_every_steps} steps, warm-up "
            f"{self.warmup_steps} steps, then {self.lr_schedule} lr"
        )


def resolve_budget(cfg: SALTrainConfig, examples: int) -> TrainingBudget:
    """Steps an epoch, evaluation period, budget and warm-up for ``examples`` training rows (see SALTrainConfig)."""
    if examples < 1:
        raise ValueError("no training examples")
    per_epoch = -(-examples // cfg.batch_size)
    every = max(cfg.eval_every * per_epoch, cfg.min_eval_steps)
    budget = max(cfg.epochs * per_epoch, cfg.min_evals * every)
    if cfg.max_steps is not None:
        budget = min(budget, cfg.max_steps)
    every = min(every, budget)
    warmup = min(every, budget // 20) if cfg.warmup_steps is None else min(cfg.warmup_steps, budget)
    return TrainingBudget(examples, per_epoch, every, budget, warmup, cfg.lr_schedule, cfg.min_lr_ratio)


@dataclass
class SALTrainResult:
    model: SALModel  # best-validation weights, eval mode, on the training device
    # one row per evaluation period: step, epoch (fractional), loss, lr, seconds (+ validation metrics when run)
    history: list[dict[str, float]]
    best: dict[str, float]  # the history row of the best validation (the last row when nothing was validated)
    epochs_run: float  # epochs completed (steps / steps an epoch), including those of a resumed checkpoint
    resumed_from: int | None  # optimizer steps already done in the checkpoint this run resumed from, else None
    budget: TrainingBudget | None = None
    steps_run: int = 0  # optimizer steps completed, including those of a resumed checkpoint


# ---- batches -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceBatch:
    """Left-padded batch: items/timestamps (B, L) long (0 = padding); targets (B, L) long (0 = none) or None."""

    items: torch.Tensor
    timestamps: torch.Tensor
    targets: torch.Tensor | None

    def to(self, device: torch.device) -> SequenceBatch:
        t = None if self.targets is None else self.targets.to(device, non_blocking=True)
        return SequenceBatch(self.items.to(device, non_blocking=True), self.timestamps.to(device, non_blocking=True), t)


def pad_sequences(
    offsets: np.ndarray,
    items_index: np.ndarray,
    timestamps: np.ndarray,
    rows: np.ndarray,
    max_len: int,
    with_targets: bool,
    skip: np.ndarray | None = None,
) -> SequenceBatch:
    """Left-padded batch of users ``rows``.

    with_targets=True (training): inputs are the user's events [:-1] and targets events [1:], both the last
    ``max_len``. with_targets=False (scoring): inputs are the last ``max_len`` events, no targets.
    ``skip`` (one count per row of ``offsets``): that many of a row's oldest targets are left out (0 = none),
    as :func:`training_windows` asks for overlapping windows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    start, end = offsets[rows], offsets[rows + 1]
    if with_targets:
        end = end - 1  # the last event is only a target
    n = np.clip(end - start, 0, max_len)  # (b,) kept inputs per user
    L = max(1, int(n.max()) if len(n) else 1)
    idx = (end - L)[:, None] + np.arange(L)[None, :]  # (b, L) event index of each slot
    valid = idx >= (end - n)[:, None]
    safe = np.where(valid, idx, 0)
    items = np.where(valid, items_index[safe], 0)
    ts = np.where(valid, timestamps[safe], 0)
    targets = np.where(valid, items_index[safe + 1], 0) if with_targets else None
    if targets is not None and skip is not None:
        targets = np.where(idx >= (end - n + np.asarray(skip, dtype=np.int64)[rows])[:, None], targets, 0)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return SequenceBatch(as_t(items), as_t(ts), None if targets is None else as_t(targets))


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, generator: torch.Generator, bucket_batches: int = BUCKET_BATCHES
) -> list[np.ndarray]:
    """Positions 0..len(lengths)-1 as shuffled batches of similar lengths (seeded by ``generator``).

    Lengths are sorted inside chunks of ``bucket_batches`` batches; 1 gives plain shuffled batches.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).numpy()
    chunk = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for lo in range(0, n, chunk):
        part = perm[lo : lo + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def training_windows(
    seqs: TrainSeqs, max_len: int, stride: int | None = None, with_skip: bool = False
) -> TrainSeqs | tuple[TrainSeqs, np.ndarray]:
    """Cut each history into windows of at most ``max_len + 1`` events so that every next-item target is trained.

    A history of T events has T - 1 (input, target) pairs. The newest window holds events [T - 1 - max_len, T);
    each older window ends ``stride`` events earlier (default ``stride = max_len``: windows overlap by one event,
    the last target of one being the first input of the next). A window trains only its newest ``stride``
    targets (the oldest window trains all of its own), so every target is trained exactly once, with at least
    ``max_len - stride`` events of context. ``stride = 1`` is the reference's one example per prefix (every
    target sees min(t, max_len) events); a smaller stride costs ~``max_len / stride`` times the tokens of long
    histories. Histories of at most ``max_len + 1`` events stay whole. Positions restart in each window, as in
    the reference SASRec's windows over the last ``max_len`` events.

    ``with_skip``: also return ``skip`` (one per window), the count of oldest targets a window leaves to the
    windows before it (``pad_sequences(..., skip=skip)``).
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in [1, max_len={max_len}], got {stride}")
    offsets, items_index, ts = (np.asarray(a, dtype=np.int64) for a in seqs)
    lengths = np.diff(offsets)
    extra = np.maximum(lengths - (max_len + 1), 0)  # events beyond the newest full window
    n_windows = 1 + (-(-extra // stride))  # (U,)
    if int(n_windows.max(initial=1)) == 1:
        out = (offsets, items_index, ts)
        return (out, np.zeros(len(lengths), dtype=np.int64)) if with_skip else out
    user = np.repeat(np.arange(len(lengths)), n_windows)
    # k = 0 for each user's newest window, 1 for the one before, ...: window k ends at event T - k * stride
    k = np.arange(len(user)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    k = (n_windows[user] - 1) - k  # oldest window first, so a user's windows stay in time order
    end = offsets[user + 1] - k * stride
    start = np.maximum(end - max_len - 1, offsets[user])
    win_len = end - start
    oldest = k == n_windows[user] - 1
    skip = np.where(oldest, 0, win_len - 1 - stride)
    new_offsets = np.r_[0, np.cumsum(win_len)].astype(np.int64)
    take = np.repeat(start - new_offsets[:-1], win_len) + np.arange(new_offsets[-1], dtype=np.int64)
    out = (new_offsets, items_index[take], ts[take])
    return (out, skip.astype(np.int64)) if with_skip else out


def extend_sequences(seqs: TrainSeqs, items: np.ndarray, timestamps: np.ndarray) -> TrainSeqs:
    """Append one event per user (``items[u] <= 0``: none), e.g. the validation event to score test targets."""
    offsets, items_index, ts = (np.asarray(a, dtype=np.int64) for a in seqs)
    items, timestamps = np.asarray(items, dtype=np.int64), np.asarray(timestamps, dtype=np.int64)
    if len(items) != len(offsets) - 1 or len(timestamps) != len(items):
        raise ValueError("need one (item, timestamp) per user")
    add = (items > 0).astype(np.int64)
    new_offsets = offsets + np.r_[0, np.cumsum(add)]
    at = np.repeat(offsets[1:], add)  # insert before each user's end
    keep = items > 0
    return new_offsets, np.insert(items_index, at, items[keep]), np.insert(ts, at, timestamps[keep])


# ---- scoring and evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def iter_last_scores(
    model: SALModel,
    seqs: TrainSeqs,
    users: np.ndarray,
    batch_size: int = 256,
    max_len: int | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(user_rows, scores (b, N) float32)`` of the next item after each user's sequence.

    Users are processed in length-sorted batches (little padding); ``user_rows`` says which rows each batch
    holds. Runs in eval mode on the model's device (bf16 autocast on CUDA) and restores the model's mode.
    """
    offsets, items_index, timestamps = seqs
    max_len = max_len or model.config.max_len
    device = model.position.weight.device
    users = np.asarray(users, dtype=np.int64)
    order = users[np.argsort(np.diff(offsets)[users], kind="stable")]
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            batch = pad_sequences(offsets, items_index, timestamps, rows, max_len, with_targets=False).to(device)
            with autocast(device):
                scores = model.full_sort_predict(batch.items, batch.timestamps)
            yield rows, scores.float()
    finally:
        model.train(was_training)


def score_users(model: SALModel, seqs: TrainSeqs, users: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(len(users), N) float32 CPU scores of items 1..N after each user's sequence, in the order of ``users``."""
    users = np.asarray(users, dtype=np.int64)
    unique, inverse = np.unique(users, return_inverse=True)
    out = torch.empty(len(unique), model.config.n_items)
    for rows, scores in iter_last_scores(model, seqs, unique, batch_size):
        out[torch.as_tensor(np.searchsorted(unique, rows))] = scores.cpu()
    return out[torch.as_tensor(inverse)]


def evaluate_next_item(
    model: SALModel,
    seqs: TrainSeqs,
    targets: np.ndarray,
    ks: tuple[int, ...] = (10, 50),
    batch_size: int = 256,
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR@k of ``targets[u]`` (item index; <= 0 = no target) after user u's sequence."""
    targets = np.asarray(targets, dtype=np.int64)
    users = np.flatnonzero(targets > 0)
    ranks = []
    for rows, scores in iter_last_scores(model, seqs, users, batch_size):
        t = torch.as_tensor(targets[rows] - 1, device=scores.device)  # column j = item j + 1
        ranks.append(target_ranks(scores, t).cpu())
    return metrics_from_ranks(torch.cat(ranks) if ranks else torch.empty(0), ks)


# ---- training ----------------------------------------------------------------------------------------------


def _check_inputs(model_cfg: SALConfig, seqs: TrainSeqs, valid_targets: np.ndarray, item_features) -> None:
    offsets, items_index, timestamps = seqs
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(items_index):
        raise ValueError("offsets must be (U + 1,) starting at 0 and ending at len(items_index)")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    if len(timestamps) != len(items_index):
        raise ValueError("timestamps and items_index must have the same length")
    if len(items_index) and (items_index.min() < 1 or items_index.max() > model_cfg.n_items):
        raise ValueError(f"items_index must hold item indices 1..{model_cfg.n_items} (0 is padding)")
    if len(valid_targets) != len(offsets) - 1:
        raise ValueError(f"valid_targets must have one entry per user ({len(offsets) - 1}), got {len(valid_targets)}")
    if np.any(valid_targets > model_cfg.n_items):
        raise ValueError(f"valid_targets must be item indices <= {model_cfg.n_items} (or <= 0 for none)")
    if item_features is not None and not np.isfinite(item_features).all():
        raise ValueError("item_features contain NaN or Inf")


def _fingerprint(
    model_cfg: SALConfig, train_cfg: SALTrainConfig, seqs: TrainSeqs, targets: np.ndarray, item_features
) -> str:
    """What must match for a checkpoint to be resumable.

    Patience, device and progress may change; so may the budget (epochs, max_steps, min_evals) with a constant
    learning rate, where a longer run continues exactly. A decaying schedule depends on the budget: it must match.
    """
    t = asdict(train_cfg)
    for key in ("patience", "device", "progress"):
        t.pop(key)
    if train_cfg.lr_schedule == "constant":
        for key in ("epochs", "max_steps", "min_evals"):
            t.pop(key)
    digest = hashlib.sha256()
    for arr in (*seqs, targets):
        digest.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    if item_features is not None:
        digest.update(np.ascontiguousarray(item_features, dtype=np.float32).tobytes())
    return json.dumps({"model": asdict(model_cfg), "train": t, "data": digest.hexdigest()}, sort_keys=True)


def _optimizer(model: SALModel, cfg: SALTrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_sal(
    model_cfg: SALConfig,
    train_cfg: SALTrainConfig,
    train_seqs: TrainSeqs,
    valid_targets: np.ndarray,
    item_features: np.ndarray | None = None,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
) -> SALTrainResult:
    """Train :class:`SALModel` with next-item loss on every position; early-stop on validation NDCG@10.

    ``train_seqs``: (offsets (U + 1,), items_index (E,), timestamps (E,)) with items as indices 1..N;
    ``valid_targets``: (U,) the validation item index of each user (<= 0: no target); ``item_features``:
    (N, item_feature_dim) fused MFL vectors of items 1..N when ``model_cfg.item_feature_dim > 0``.

    With ``checkpoint_dir``, ``last.pt`` there is written after every epoch and, when present at the start, the
    run resumes from it (same configuration and data required, except epochs/patience/device/progress).
    ``on_metrics(epoch, row)`` receives each history row.

    Inside a torchrun process group (:func:`mufasa.training.distributed.process_group`) every rank calls this
    with the same arguments; they train one DDP model on shards of each global batch and return the same result,
    while only rank 0 checkpoints and calls ``on_metrics``.
    """
    seqs = tuple(np.asarray(a, dtype=np.int64) for a in train_seqs)
    valid_targets = np.asarray(valid_targets, dtype=np.int64)
    _check_inputs(model_cfg, seqs, valid_targets, item_features)
    max_len = train_cfg.max_len or model_cfg.max_len
    if max_len > model_cfg.max_len:
        raise ValueError(f"train max_len {max_len} exceeds the model's max_len {model_cfg.max_len}")
    world = distributed.world_size()
    main = distributed.is_main()
    device = distributed.local_device(resolve_device(train_cfg.device))
    generator = seed_everything(train_cfg.seed)  # same seed on every rank: same init, same global batch order
    feats = None if item_features is None else torch.as_tensor(np.asarray(item_features), dtype=torch.float32)
    model = model_cfg.build(feats).to(device)
    opt = _optimizer(model, train_cfg)
    # the weights validation judges and the run returns: an average of the trained ones, or those themselves
    ema = None
    if train_cfg.ema_decay is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(train_cfg.ema_decay), use_buffers=True
        )
    judged = model if ema is None else ema.module
    stopper = EarlyStopping(patience=train_cfg.patience, mode="max")

    # Every target is trained: a history longer than max_len + 1 becomes several windows (see training_windows).
    if train_cfg.window_stride is not None and train_cfg.window_stride > max_len:
        raise ValueError(f"window_stride {train_cfg.window_stride} exceeds max_len {max_len}")
    windows, skip = training_windows(seqs, max_len, train_cfg.window_stride, with_skip=True)
    lengths = np.diff(windows[0])
    n_targets = np.minimum(lengths - 1, max_len) - skip  # trained targets per window
    train_users = np.flatnonzero(lengths >= 2)  # one input and one target at least
    if len(train_users) == 0:
        raise ValueError("no user has the 2 events a next-item example needs")
    has_validation = bool((valid_targets > 0).any())

    ckpt = Checkpointer(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    fingerprint = _fingerprint(model_cfg, train_cfg, seqs, valid_targets, item_features)
    history: list[dict[str, float]] = []
    best_state: dict[str, Any] = copy.deepcopy(judged.state_dict())
    resumed_from = None
    state = ckpt.load(map_location=device, fingerprint=fingerprint) if ckpt else None
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        stopper.load_state_dict(state["early_stopping"])
        best_state = state["best_model"]
        history = list(state["history"])
        set_rng_state(state["rng"], generator)
    # DDP's forward is the loss (it only synchronises gradients through forward()); `model` stays the bare module
    # for validation and state dicts.
    net = distributed.data_parallel(model, type(model).calculate_loss, device) if world > 1 else None

    budget = resolve_budget(train_cfg, len(train_users))
    if main:
        log.info("%s %s", type(model).__name__, budget.describe())
    bucket_batches = BUCKET_BATCHES if train_cfg.batching == "bucketed" else 1
    # "target" weighting: a batch's loss is its summed loss over the epoch's mean targets per batch
    mean_targets = float(n_targets[train_users].sum()) / budget.steps_per_epoch

    def new_epoch(epoch: int) -> list[np.ndarray]:
        distributed.seed_rank(train_cfg.seed, epoch)
        return length_bucketed_batches(lengths[train_users], train_cfg.batch_size, generator, bucket_batches)

    step, epoch, batches, pos = 0, 0, [], 0
    if state is not None:  # resume where the checkpoint stopped, mid-epoch included
        step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["batch_pos"])
        sizes = state["epoch_batch_sizes"].tolist()
        batches = [b.numpy() for b in torch.split(state["epoch_batches"].cpu(), sizes)] if sizes else []
        resumed_from = step
    distributed.check_same("checkpoint step", step)
    bar = tqdm(total=max(budget.max_steps - step, 0), desc="SAL", disable=not (train_cfg.progress and main),
               leave=False, dynamic_ncols=True)
    loss_sum, weight_sum, t0 = 0.0, 0, time.perf_counter()
    model.train()  # validation switches to eval mode and back
    try:
        while step < budget.max_steps and not stopper.should_stop:
            if pos == len(batches):
                batches, pos = new_epoch(epoch), 0
                epoch += 1
            rows = train_users[batches[pos]]
            if net is None:
                batch = pad_sequences(*windows, rows, max_len, with_targets=True, skip=skip).to(device)
                with autocast(device):
                    loss = model.calculate_loss(batch.items, batch.timestamps, batch.targets)
                n_pos = int((batch.targets > 0).sum())
                scaled = loss * (n_pos / mean_targets) if train_cfg.loss_weighting == "target" else loss
            else:
                mine = distributed.shard(rows)  # an empty shard runs one row at weight 0 (DDP needs a backward)
                batch = pad_sequences(
                    *windows, mine if len(mine) else rows[:1], max_len, with_targets=True, skip=skip
                ).to(device)
                with autocast(device):
                    loss = net(batch.items, batch.timestamps, batch.targets)
                n_pos = int((batch.targets > 0).sum()) if len(mine) else 0
                n_batch = int(n_targets[rows].sum())  # target positions of the global batch
                if train_cfg.loss_weighting == "target":
                    n_batch = mean_targets
                scaled = loss * (world * n_pos / n_batch)  # DDP averages over ranks: this sums to the global mean
            lr = train_cfg.lr * budget.lr_factor(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            scaled.backward()
            if train_cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            pos += 1
            loss_sum += loss.item() * n_pos
            weight_sum += n_pos
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", refresh=False)
            if step % budget.eval_every_steps and step < budget.max_steps:
                continue
            # an evaluation period ends: validate, record, checkpoint
            if net is not None:
                loss_sum, weight_sum = distributed.all_reduce_sum([loss_sum, weight_sum])
            done = epoch - 1 + pos / len(batches)  # epochs completed, fractional mid-epoch
            row: dict[str, float] = {"step": float(step), "epoch": round(done, 4),
                                     "loss": loss_sum / max(weight_sum, 1), "lr": lr}
            if has_validation:
                metrics = None
                if main:  # rank 0 validates; every rank gets its numbers, so all take the same decisions
                    metrics = evaluate_next_item(
                        judged, seqs, valid_targets, batch_size=max(train_cfg.batch_size, 256)
                    )
                metrics = distributed.broadcast_object(metrics)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                if stopper.update(metrics["ndcg@10"], step):
                    best_state = copy.deepcopy(judged.state_dict())
            else:
                best_state = copy.deepcopy(judged.state_dict())
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if on_metrics is not None and main:
                on_metrics(step, dict(row))
            if ckpt is not None and main:
                flat = [torch.as_tensor(b, dtype=torch.int64) for b in batches]
                ckpt.save(
                    {
                        "fingerprint": fingerprint,
                        "step": step,
                        "epoch": epoch,
                        "batch_pos": pos,
                        "epoch_batches": torch.cat(flat) if flat else torch.empty(0, dtype=torch.int64),
                        "epoch_batch_sizes": torch.tensor([len(b) for b in flat], dtype=torch.int64),
                        "model": model.state_dict(),
                        **({"ema": ema.state_dict()} if ema is not None else {}),
                        "optimizer": opt.state_dict(),
                        "early_stopping": stopper.state_dict(),
                        "best_model": best_state,
                        "history": history,
                        "rng": rng_state(generator),
                    }
                )
            loss_sum, weight_sum, t0 = 0.0, 0, time.perf_counter()
    finally:
        bar.close()
    distributed.barrier()  # rank 0's last checkpoint is on disk before any rank returns (and maybe resumes from it)

    model.load_state_dict(best_state)
    model.eval()
    best_step = stopper.best_step if stopper.best is not None else step
    best = next((dict(r) for r in history if int(r["step"]) == best_step), dict(history[-1]) if history else {})
    epochs_run = round(step / budget.steps_per_epoch, 4)
    return SALTrainResult(model=model, history=history, best=best, epochs_run=epochs_run,
                          resumed_from=resumed_from, budget=budget, steps_run=step)
