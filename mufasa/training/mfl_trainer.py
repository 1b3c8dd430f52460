"""Training the multimodal fusion layer: collaborative targets, genre-mixing batches, the loop with resume.

Pieces, in the order the ``train_mfl`` stage uses them:

- :func:`collaborative_space` turns the **training** sequences into one collaborative vector per item
  (co-occurrence within a window -> positive PMI -> truncated SVD -> unit rows; Levy & Goldberg 2014 show
  PPMI-SVD is the count-based counterpart of skip-gram/item2vec). It reads nothing but the arrays it is given;
  the stage passes ``data/sequences/train.parquet`` only, so no validation or test event can shape a target.
- :class:`GenreMixingSampler` gives every batch a proportional mix of primary genres, so the in-batch negatives
  of the contrastive losses are cross-genre.
- :func:`train_mfl`: seeded AdamW loop with gradient clipping, bf16 autocast on CUDA, early stopping on a held-out
  10% of *items*, a checkpoint after every epoch (model, optimizer, early stopping, RNG, history) and resume.

Early-stopping criterion: the weighted MFL objective (same terms and weights as training) on the held-out
items, evaluated in eval mode over fixed chunks of ``batch_size`` items. Held-out items are never in a training
batch, so the criterion measures how the fusion *generalises* to items it did not fit — which is what cold items
need — and its value is comparable across epochs because the chunks never change. The held-out title- and
collaborative-kNN overlaps are logged beside it (monitoring only).

Under torchrun (:mod:`mufasa.training.distributed`) the loop is data-parallel (DDP): each rank runs the fusion model
on a contiguous shard of every global batch, the shards' outputs are all-gathered (differentiably), and every
rank evaluates the objective on the whole global batch. Every MFL term couples the rows of a batch (InfoNCE
in-batch negatives, pairwise structure, uniformity, batch covariance), so gathering — not averaging per-shard
losses — is what keeps the objective, its in-batch negatives and its gradient those of a 1-process run.
Validation runs on rank 0 and is broadcast; checkpoints, callbacks and the progress bar are rank 0's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from mufasa.data.features import ItemFeatures
from mufasa.models.fusion import FusionConfig, MultimodalFusion
from mufasa.models.mfl_losses import MFLLossWeights, mfl_objective
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
from mufasa.training.diagnostics import effective_rank, knn_overlap, mfl_diagnostics, uniformity

__all__ = [
    "GenreMixingSampler",
    "MFLTrainConfig",
    "MFLTrainResult",
    "collaborative_space",
    "encode_items",
    "split_items",
    "train_mfl",
]


# ---- collaborative targets ---------------------------------------------------------------------------------


def collaborative_space(
    offsets: np.ndarray,
    items_index: np.ndarray,
    n_items: int,
    dim: int = 64,
    window: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors from training sequences: windowed co-occurrence -> PPMI -> truncated SVD -> unit rows.

    offsets: (U + 1,) start of each user's events in ``items_index`` (as ``read_train_sequences`` returns);
    items_index: (E,) item indices 1..n_items (``ItemVocab.to_index``), time-ordered per user.
    Returns ``(vectors (n_items, dim) float32, mask (n_items,) bool)``; row r is item index r + 1.

    - Co-occurrence ``C_ab`` counts ordered pairs of one user's events at distance 1..``window`` in both
      directions (``C`` is symmetric); an item paired with itself (a replay) is dropped: it says nothing about
      item-item similarity.
    - ``PPMI_ab = max(0, log(C_ab · ΣC / (C_a· C_·b)))``.
    - Truncated SVD (scikit-learn ``randomized_svd``, ``random_state=seed``, signs fixed by ``svd_flip``), item
      vector ``U_k sqrt(S_k)`` (the symmetric split of Levy et al. 2015), then L2-normalised. Cosine between
      two items then compares their PPMI *profiles* (second-order similarity: "consumed next to the same
      items"), the notion item-based CF uses; two items seen only with each other are not made similar.
      When the catalogue is smaller than ``dim`` + 1, the trailing columns are zero.
    - ``mask`` is False for items with no co-occurrence in these sequences (never seen, or seen only alone):
      their rows are zero and the collaborative loss skips them.

    Leakage: the function sees only its arguments. The ``train_mfl`` stage passes the TRAIN split
    (``train.parquet``) only, so validation/test targets cannot influence any vector.
    """
    from sklearn.utils.extmath import randomized_svd

    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items_index, dtype=np.int64)
    if n_items < 1 or dim < 1 or window < 1:
        raise ValueError(f"n_items, dim and window must be >= 1; got {n_items}, {dim}, {window}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(items):
        raise ValueError("offsets must be 1-D, start at 0 and end at len(items_index)")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"items_index must lie in 1..{n_items} (0 is padding); got {items.min()}..{items.max()}")

    user_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # (E,) user of each event
    rows, cols = [], []
    for lag in range(1, window + 1):
        same_user = user_of[:-lag] == user_of[lag:]
        a, b = items[:-lag][same_user], items[lag:][same_user]
        keep = a != b
        rows.append(a[keep] - 1)
        cols.append(b[keep] - 1)
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    counts = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items)).tocsr()
    counts = (counts + counts.T).tocsr()  # symmetric, duplicates summed
    counts.sum_duplicates()

    vectors = np.zeros((n_items, dim), dtype=np.float32)
    marginal = np.asarray(counts.sum(axis=1)).ravel()  # (N,)
    if counts.nnz == 0:
        return vectors, np.zeros(n_items, dtype=bool)
    total = marginal.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))
    k = min(dim, n_items - 1)
    if ppmi.nnz and k >= 1:
        u, s, _ = randomized_svd(ppmi, n_components=k, n_iter=7, random_state=seed)
        emb = u * np.sqrt(s)[None, :]  # (N, k)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        ok = (norms[:, 0] > 1e-8) & (marginal > 0)
        vectors[ok, :k] = (emb[ok] / norms[ok]).astype(np.float32)
    mask = np.linalg.norm(vectors, axis=1) > 0
    return vectors, mask


# ---- batches -----------------------------------------------------------------------------------------------


class GenreMixingSampler:
    """Epoch batches in which every primary genre appears in proportion to its share of the items.

    Each epoch (seed ``(seed, epoch)``, so any epoch can be reproduced without replaying earlier ones): items are
    shuffled within their genre, item r of a genre with n_g items gets the key ``(r + u) / n_g`` (u ~ U(0, 1)),
    and all items are sorted by key — a stratified interleave in which any run of B consecutive items holds
    about ``B · n_g / N`` items of genre g. The order is cut into ``ceil(N / batch_size)`` batches whose sizes
    differ by at most one (no tiny tail batch that would weaken in-batch negatives). Every item appears exactly
    once per epoch.
    """

    def __init__(self, genres: np.ndarray, batch_size: int, seed: int = 0):
        self.genres = np.asarray(genres, dtype=np.int64)
        if self.genres.ndim != 1 or len(self.genres) < 2:
            raise ValueError("genres must be a 1-D array with at least 2 items")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.genres) // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Positions (into ``genres``) of each batch of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.genres)
        perm = rng.permutation(n)
        g = self.genres[perm]
        order = np.argsort(g, kind="stable")  # positions in perm, grouped by genre, shuffled within
        g_sorted = g[order]
        starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
        sizes = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, sizes)  # rank within genre
        key = (rank + rng.random(n)) / np.repeat(sizes, sizes)
        mixed = perm[order[np.argsort(key, kind="stable")]]
        return np.array_split(mixed, len(self))


def split_items(n_items: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train rows, held-out rows), both sorted; held-out is ``round(val_fraction · N)`` items (0 allowed)."""
    n_val = int(round(val_fraction * n_items))
    if n_val and (n_val < 2 or n_items - n_val < 2):
        raise ValueError(f"val_fraction {val_fraction} of {n_items} items leaves fewer than 2 items on a side")
    perm = np.random.default_rng([seed, 1_000_003]).permutation(n_items)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ---- training ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MFLTrainConfig:
    """How the fusion layer is trained (the model's shape lives in ``FusionConfig``)."""

    # Small catalogues converge in tens of epochs; early stopping usually ends the run first.
    epochs: int = 100
    # In-batch negatives: 256 is ~15% of ML-100k's catalogue, enough negatives of every genre per batch.
    # Global: DDP ranks each encode a shard, and the losses see the whole gathered batch.
    batch_size: int = 256
    # AdamW at 1e-3 suits small MLP heads; no schedule, so a resumed run with more epochs continues exactly.
    lr: float = 1e-3
    # Decoupled decay 0.01: mild, the heads are wide relative to ~1.5k training items.
    weight_decay: float = 0.01
    # Max global gradient norm: InfoNCE at τ=0.1 can spike early.
    grad_clip: float = 1.0
    # Epochs without a better validation objective before stopping.
    patience: int = 10
    # Share of items held out for the early-stopping criterion (never in a training batch).
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    losses: MFLLossWeights = field(default_factory=MFLLossWeights)
    progress: bool = True  # tqdm bar (stderr) with the live loss

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ValueError("need epochs >= 1, batch_size >= 2, patience >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("need lr > 0, weight_decay >= 0, grad_clip > 0")


@dataclass
class MFLTrainResult:
    model: MultimodalFusion  # best-validation weights, eval mode, on the training device
    fused: np.ndarray  # (N, out_dim) float32 unit rows of every item, from ``model`` in eval mode
    history: list[dict[str, float]]  # one row per epoch (train terms, val terms, val_loss, seconds)
    diagnostics: dict[str, float]  # mfl_diagnostics of ``fused`` (+ best_epoch, held-out kNN overlaps)
    epochs_run: int  # epochs completed, including those of a resumed checkpoint
    resumed_from: int | None  # epochs already done in the checkpoint this run resumed from, else None


def _as_tensor(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype).to(device)


def _check_inputs(cfg: FusionConfig, needs_collab: bool, features: ItemFeatures, collab, collab_mask,
                  genres) -> int:
    text, image, image_mask, side = features.arrays()
    n = len(text)
    shapes = {
        "text": (np.shape(text), (n, cfg.text_dim)),
        "genres": (np.shape(genres), (n,)),
    }
    if "image" in cfg.tokens:
        shapes["image"] = (np.shape(image), (n, cfg.image_dim))
        shapes["image_mask"] = (np.shape(image_mask), (n,))
    if "side" in cfg.tokens:
        shapes["side"] = (np.shape(side), (n, cfg.side_dim))
    if needs_collab or collab is not None:
        shapes["collab"] = (np.shape(collab), (n, cfg.collab_dim if needs_collab else np.shape(collab)[-1]))
        shapes["collab_mask"] = (np.shape(collab_mask), (n,))
    bad = {k: f"{tuple(got)} != expected {want}" for k, (got, want) in shapes.items() if tuple(got) != want}
    if bad:
        raise ValueError(f"MFL inputs have wrong shapes: {bad}")
    for name, arr in (("text", text), ("image", image), ("side", side), ("collab", collab)):
        if name in shapes and not np.isfinite(np.asarray(arr)).all():
            raise ValueError(f"MFL input {name!r} contains NaN or Inf")
    return n


@torch.no_grad()
def encode_items(model: MultimodalFusion, features: ItemFeatures, batch_size: int = 1024) -> torch.Tensor:
    """Fused (N, out_dim) float32 vectors of all items, eval mode, in chunks (``features`` as tensors on the
    model's device: :meth:`ItemFeatures.to`)."""
    was_training = model.training
    model.eval()
    device = features.text.device
    parts = []
    for start in range(0, len(features), batch_size):
        with autocast(device):
            out = model(*features.take(slice(start, start + batch_size)).arrays())
        parts.append(out.fused.float())
    model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.config.out_dim, device=device)


def _fingerprint(fusion_cfg: FusionConfig, train_cfg: MFLTrainConfig, n_items: int, arrays=()) -> str:
    """What must match for a checkpoint to be resumable (epochs, patience, device and progress may change):
    the configuration and the input arrays (so a checkpoint of another dataset is not resumed)."""
    t = asdict(train_cfg)
    for key in ("epochs", "patience", "device", "progress"):
        t.pop(key)
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            digest.update(b"none")
            continue
        a = np.ascontiguousarray(arr)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return json.dumps(
        {"fusion": asdict(fusion_cfg), "train": t, "n_items": n_items, "data": digest.hexdigest()}, sort_keys=True
    )


def train_mfl(
    fusion_cfg: FusionConfig,
    train_cfg: MFLTrainConfig,
    features: ItemFeatures,
    collab: np.ndarray | None,
    collab_mask: np.ndarray | None,
    genres: np.ndarray,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
) -> MFLTrainResult:
    """Train :class:`MultimodalFusion` on all items' frozen features; return the best model and fused vectors.

    One row per item (features-stage row order): ``features`` (:class:`~mufasa.data.features.ItemFeatures`: text
    (N, text_dim), image (N, image_dim) with image_mask (N,) bool, side (N, side_dim)), collab (N, collab_dim) with
    collab_mask (N,) bool (from :func:`collaborative_space` on the train split), genres (N,) primary-genre id (any
    int; -1 = none, its own group). Modalities switched off in ``fusion_cfg`` may be None, as may collab/collab_mask when the
    collaborative loss is off (weight 0); passed anyway, they still feed the diagnostics.

    With ``checkpoint_dir``, ``last.pt`` there is written after every epoch and, when present at the start, the
    run resumes from it (same configuration required, except epochs/patience/device/progress): a run stopped
    after k epochs and resumed to E gives the same result as an uninterrupted E-epoch run. ``on_metrics(epoch,
    row)`` receives each history row, and finally ``on_metrics(epochs_run, {"diag_<name>": ...})``.

    Inside a torchrun process group (:func:`mufasa.training.distributed.process_group`) every rank calls this
    with the same arguments and gets the same result; only rank 0 checkpoints and calls ``on_metrics``.
    """
    needs_collab = train_cfg.losses.collaborative > 0
    if needs_collab and fusion_cfg.collab_dim == 0:
        raise ValueError("the collaborative loss is on but FusionConfig.collab_dim is 0")
    n = _check_inputs(fusion_cfg, needs_collab, features, collab, collab_mask, genres)
    world = distributed.world_size()
    main = distributed.is_main()
    device = distributed.local_device(resolve_device(train_cfg.device))
    weights = train_cfg.losses
    seed_everything(train_cfg.seed)  # same seed on every rank: same init, same batches
    model = MultimodalFusion(fusion_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    stopper = EarlyStopping(patience=train_cfg.patience, mode="min")
    train_rows, val_rows = split_items(n, train_cfg.val_fraction, train_cfg.seed)
    sampler = GenreMixingSampler(np.asarray(genres)[train_rows], train_cfg.batch_size, train_cfg.seed)

    feats = features.only(fusion_cfg.tokens).to(device)  # the modalities the layer uses, on its device
    X = {
        "collab": _as_tensor(collab, torch.float32, device) if needs_collab else None,
        "collab_mask": _as_tensor(collab_mask, torch.bool, device) if needs_collab else None,
    }
    train_index = torch.as_tensor(train_rows, device=device)

    def batch_loss(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(device):
            out = model(*feats.take(rows).arrays())
            collab_b = model.project_collab(X["collab"][rows]) if needs_collab else None
            mask_b = X["collab_mask"][rows] if needs_collab else None
            return mfl_objective(out.tokens, out.masks, out.fused, feats.text[rows], collab_b, mask_b, weights)

    def sharded_batch_loss(net: MultimodalFusion, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DDP forward: this rank encodes its shard of global batch ``batch``; the objective sees the whole batch."""
        mine = distributed.shard(batch)
        counts = distributed.shard_sizes(len(batch))
        local = train_index[torch.as_tensor(mine if len(mine) else batch[:1], device=device)]  # placeholder if empty
        rows = train_index[torch.as_tensor(batch, device=device)]
        with autocast(device):
            out = net(*feats.take(local).arrays())
            parts: dict[str, torch.Tensor | None] = {"fused": out.fused}
            parts.update({f"token/{m}": t for m, t in out.tokens.items()})
            parts.update({f"mask/{m}": t for m, t in out.masks.items()})
            parts["collab"] = net.project_collab(X["collab"][local]) if needs_collab else None
            g = distributed.gather_rows(parts, counts)  # (B, ...) each, in global-batch order
            tokens = {m: g[f"token/{m}"] for m in out.tokens}
            masks = {m: g[f"mask/{m}"] for m in out.masks}
            mask_b = X["collab_mask"][rows] if needs_collab else None
            return mfl_objective(tokens, masks, g["fused"], feats.text[rows], g["collab"], mask_b, weights)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        if len(val_rows) == 0:
            return {}
        model.eval()
        sums: dict[str, float] = {}
        for chunk in np.array_split(val_rows, -(-len(val_rows) // train_cfg.batch_size)):
            total, terms = batch_loss(torch.as_tensor(chunk, device=device))
            for k, v in {"loss": total, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk) / len(val_rows)
        vrows = torch.as_tensor(val_rows, device=device)
        fused = encode_items(model, feats.take(vrows)).cpu().numpy()
        model.train()
        row = {f"val_{k}": v for k, v in sums.items()}
        # collapse diagnostics of the held-out items' fused vectors, every epoch
        row["val_effective_rank"] = effective_rank(fused)
        row["val_uniformity"] = uniformity(fused)
        k = min(10, len(val_rows) - 1)
        if k >= 1:
            row["val_title_knn"] = knn_overlap(np.asarray(features.text)[val_rows], fused, k)
            if collab is not None:
                m = np.asarray(collab_mask, dtype=bool)[val_rows]
                if m.sum() > k:
                    row["val_collab_knn"] = knn_overlap(np.asarray(collab)[val_rows][m], fused[m], k)
        return row

    ckpt = Checkpointer(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    fingerprint = _fingerprint(
        fusion_cfg, train_cfg, n, (*features.arrays(), collab, collab_mask, genres)
    )
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(model.state_dict())
    start_epoch, resumed_from = 0, None
    state = ckpt.load(map_location=device, fingerprint=fingerprint) if ckpt else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        stopper.load_state_dict(state["early_stopping"])
        best_state = state["best_model"]
        history = list(state["history"])
        start_epoch = resumed_from = int(state["epoch"])
        set_rng_state(state["rng"])
    distributed.check_same("checkpoint epoch", start_epoch)
    # DDP's forward is the sharded objective; `model` stays the bare module for validation and state dicts.
    net = distributed.data_parallel(model, sharded_batch_loss, device) if world > 1 else None

    total_steps = max(train_cfg.epochs - start_epoch, 0) * len(sampler)
    bar = tqdm(total=total_steps, desc="MFL", disable=not (train_cfg.progress and main), leave=False,
               dynamic_ncols=True)
    epoch = start_epoch
    model.train()
    try:
        while epoch < train_cfg.epochs and not stopper.should_stop:
            t0 = time.perf_counter()
            distributed.seed_rank(train_cfg.seed, epoch)
            sums: dict[str, torch.Tensor] = {}
            seen = 0
            for batch in sampler.epoch_batches(epoch):
                if net is None:
                    total, terms = batch_loss(train_index[torch.as_tensor(batch, device=device)])
                else:  # the same global objective on every rank, so its value needs no reduction
                    total, terms = net(batch)
                opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                opt.step()
                for k, v in {"loss": total, **terms}.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * len(batch)
                seen += len(batch)
                bar.update(1)
                if train_cfg.progress and main:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(total):.4f}")
            epoch += 1
            # float() synchronises the device, so train_seconds covers all queued GPU work of the epoch.
            row: dict[str, float] = {"epoch": float(epoch), **{k: float(v) / seen for k, v in sums.items()}}
            train_seconds = time.perf_counter() - t0
            # rank 0 validates; every rank gets its numbers, so all take the same early-stopping decisions
            row.update(distributed.broadcast_object(validate() if main else None))
            criterion = row.get("val_loss", row["loss"])  # no held-out items: fall back to the training loss
            if stopper.update(criterion, epoch):
                best_state = copy.deepcopy(model.state_dict())
            row.update({"best_epoch": float(stopper.best_step), "train_seconds": train_seconds,
                        "seconds": time.perf_counter() - t0, "items_per_s": seen / max(train_seconds, 1e-9)})
            history.append(row)
            if on_metrics is not None and main:
                on_metrics(epoch, dict(row))
            if ckpt is not None and main:
                ckpt.save({
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "best_model": best_state,
                    "history": history,
                    "rng": rng_state(),
                })
    finally:
        bar.close()
    distributed.barrier()  # rank 0's last checkpoint is on disk before any rank returns (and maybe resumes from it)

    model.load_state_dict(best_state)
    model.eval()
    fused = encode_items(model, feats).cpu().numpy().astype(np.float32)
    collab_np = np.asarray(collab) if collab is not None else np.zeros((n, 1), np.float32)
    cmask = np.asarray(collab_mask, dtype=bool) if collab_mask is not None else np.zeros(n, bool)
    diagnostics = mfl_diagnostics(fused, np.asarray(features.text), collab_np, cmask)
    diagnostics["best_epoch"] = float(stopper.best_step)
    if history:
        for key in ("val_loss", "val_title_knn", "val_collab_knn"):
            if key in history[-1]:
                best_row = next((r for r in history if r["epoch"] == stopper.best_step), history[-1])
                diagnostics[f"best_{key}"] = best_row.get(key, float("nan"))
    if on_metrics is not None and main:
        on_metrics(epoch, {f"diag_{k}": float(v) for k, v in diagnostics.items()})
    return MFLTrainResult(model, fused, history, diagnostics, epoch, resumed_from)
