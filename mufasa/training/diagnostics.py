"""Collapse and structure diagnostics for item embeddings, and the MFL plots.

- ``effective_rank`` (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): ``exp(H(p))`` with ``p = s / Σ s`` the
  normalised singular values of the (uncentred) matrix; 1 for a collapsed space, D for a perfectly isotropic one.
- ``uniformity`` / ``alignment`` (Wang & Isola 2020) on L2-normalised rows.
- ``knn_overlap``: how many of an item's k nearest neighbours (cosine, self excluded) two spaces share.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so they work in
headless runs and never touch the caller's matplotlib state. Arrays may be NumPy or torch (moved to CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mufasa.data.io import save_figure

__all__ = [
    "alignment",
    "effective_rank",
    "knn_indices",
    "knn_overlap",
    "mfl_diagnostics",
    "plot_fused_projection",
    "plot_training_curves",
    "uniformity",
]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D (N, D) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("embeddings contain NaN or Inf")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def effective_rank(x: Any) -> float:
    """``exp(-Σ p_k log p_k)``, ``p = s / Σ s`` over the singular values ``s`` of ``x`` (N, D); 0 for all-zero x."""
    s = np.linalg.svd(_np(x), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def uniformity(x: Any, t: float = 2.0, max_items: int = 4096, seed: int = 0) -> float:
    """``log mean_{i<j} exp(-t ||u_i - u_j||²)`` on unit rows (lower = more uniform; 0 = collapsed).

    Above ``max_items`` rows a fixed-seed subsample is used (the pair count grows quadratically).
    """
    u = _unit(_np(x))
    if len(u) < 2:
        raise ValueError("uniformity needs at least 2 rows")
    if len(u) > max_items:
        u = u[np.sort(np.random.default_rng(seed).choice(len(u), max_items, replace=False))]
    sq = np.clip(2.0 - 2.0 * (u @ u.T), 0.0, None)
    iu = np.triu_indices(len(u), k=1)
    v = -t * sq[iu]
    m = v.max()
    return float(m + np.log(np.mean(np.exp(v - m))))


def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """``mean_i ||u_i - v_i||^α`` for paired unit rows of x and y (same shape); 0 = perfectly aligned."""
    a, b = _unit(_np(x)), _unit(_np(y))
    if a.shape != b.shape:
        raise ValueError(f"alignment needs paired rows of equal width, got {a.shape} and {b.shape}")
    return float(np.mean(np.linalg.norm(a - b, axis=1) ** alpha))


def knn_indices(x: Any, k: int = 10, chunk: int = 2048) -> np.ndarray:
    """(N, k) indices of each row's k nearest rows by cosine similarity, self excluded (row-chunked)."""
    u = _unit(_np(x))
    N = len(u)
    if not 1 <= k < N:
        raise ValueError(f"k must be in [1, N - 1] = [1, {N - 1}], got {k}")
    out = np.empty((N, k), dtype=np.int64)
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        sims = u[start:stop] @ u.T  # (c, N)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # self excluded
        out[start:stop] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def knn_overlap(a: Any, b: Any, k: int = 10) -> float:
    """Mean over items of ``|kNN_k^a(i) ∩ kNN_k^b(i)| / k`` (cosine kNN in each space, self excluded).

    1.0: both spaces give every item the same k neighbours; a random space scores about ``k / (N - 1)``.
    """
    a_arr, b_arr = _np(a), _np(b)
    if len(a_arr) != len(b_arr):
        raise ValueError(f"knn_overlap needs the same items in both spaces, got {len(a_arr)} and {len(b_arr)} rows")
    na, nb = knn_indices(a_arr, k), knn_indices(b_arr, k)
    shared = (na[:, :, None] == nb[:, None, :]).any(axis=2).sum(axis=1)  # (N,)
    return float(shared.mean() / k)


def mfl_diagnostics(fused: Any, text: Any, collab: Any, collab_mask: Any, k: int = 10) -> dict[str, float]:
    """Collapse/structure numbers for fused item vectors (all items; collaborative ones over masked items).

    - ``effective_rank`` / ``effective_rank_text`` and ``uniformity`` of the fused space (collapse checks);
    - ``title_knn_overlap`` = knn_overlap(text, fused): title-neighbour preservation;
    - ``collab_knn_overlap`` = knn_overlap(collab[m], fused[m]) over items with a collaborative vector;
    - ``title_collab_knn_overlap`` = knn_overlap(text[m], collab[m]): how much the two targets agree at all
      (a fused space cannot match both beyond what they share), and ``knn_chance`` = k / (N - 1).
    """
    f, t = _np(fused), _np(text)
    mask = np.asarray(collab_mask, dtype=bool)
    if len(f) != len(t) or len(mask) != len(f):
        raise ValueError("fused, text and collab_mask must have one row per item")
    out = {
        "n_items": float(len(f)),
        "effective_rank": effective_rank(f),
        "effective_rank_text": effective_rank(t),
        "uniformity": uniformity(f),
        "title_knn_overlap": knn_overlap(t, f, min(k, len(f) - 1)),
        "knn_chance": min(k, len(f) - 1) / max(len(f) - 1, 1),
        "collab_coverage": float(mask.mean()) if len(mask) else 0.0,
    }
    m = int(mask.sum())
    if m > k:
        c = _np(collab)[mask]
        out["collab_knn_overlap"] = knn_overlap(c, f[mask], k)
        out["title_collab_knn_overlap"] = knn_overlap(t[mask], c, k)
    return out


# ---- plots -------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_training_curves(
    history: Sequence[dict[str, float]], path: Path, criterion: str = "val_loss", mode: str = "min"
) -> Path:
    """PNG with one panel per loss term (train solid, validation dashed), the total, and the validation criterion.

    ``history`` rows are the trainer's per-epoch dicts (``epoch``, ``loss``, ``<term>``, ``val_loss``,
    ``val_<term>``, optionally ``val_title_knn`` / ``val_collab_knn``). ``criterion`` is the history key early
    stopping follows (MFL: ``val_loss``, minimised; SAL: ``val_ndcg@10``, maximised), plotted with its best epoch.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    has_validation = any(k.startswith("val_") for row in history for k in row)
    if has_validation and not any(criterion in row for row in history):
        # an empty early-stopping panel would hide the decision the curves are for
        raise ValueError(f"history has validation metrics but no {criterion!r}: name the early-stopping metric")
    if not history:
        raise ValueError("empty history: nothing to plot")
    epochs = [row["epoch"] for row in history]
    keys = set().union(*history)
    terms = [k for k in ("semantic", "collaborative", "structure", "uniformity", "variance_covariance") if k in keys]
    panels = [*terms, "loss", "val_criterion"]
    if {"val_title_knn", "val_collab_knn"} & keys:
        panels.append("val_knn")
    cols = 3
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 3.0 * rows)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if name == "val_criterion":
            vals = np.array([row.get(criterion, np.nan) for row in history], dtype=float)
            ax.plot(epochs, vals, marker="o", color="tab:red", label=f"{criterion} (early stopping)")
            if np.isfinite(vals).any():
                best = int(np.nanargmin(vals) if mode == "min" else np.nanargmax(vals))
                ax.axvline(epochs[best], color="grey", linestyle=":", label=f"best epoch {epochs[best]:g}")
        elif name == "val_knn":
            for key in ("val_title_knn", "val_collab_knn"):
                if key in keys:
                    ax.plot(epochs, [row.get(key, np.nan) for row in history], marker=".", label=key)
        else:
            ax.plot(epochs, [row.get(name, np.nan) for row in history], label=f"train {name}")
            if f"val_{name}" in keys:
                ax.plot(epochs, [row.get(f"val_{name}", np.nan) for row in history], "--", label=f"val {name}")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, format="png")


def plot_fused_projection(
    fused: Any,
    genre_labels: Sequence[int],
    genre_names: Sequence[str],
    path: Path,
    method: str = "pca",
    seed: int = 0,
) -> Path:
    """2-D projection of the fused vectors coloured by (primary) genre, as a PNG.

    ``method="pca"`` (deterministic SVD, signs fixed) or ``"tsne"`` (scikit-learn, PCA init, ``seed``).
    ``genre_labels``: (N,) index into ``genre_names``; negative = no genre (grey).
    """
    x = _unit(_np(fused))
    labels = np.asarray(genre_labels, dtype=np.int64)
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} genre labels for {len(x)} items")
    if method == "pca":
        xc = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        vt = vt[:2] * np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())[:, None]  # sign fix
        xy = xc @ vt.T  # (N, 2)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, init="pca", random_state=seed, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    n_colours = int(labels.max()) + 1 if (~(labels < 0)).any() else 1
    cmap = colormaps["tab10" if n_colours <= 10 else "tab20"]  # tab20 pairs similar hues: only when needed
    none = labels < 0
    if none.any():
        ax.scatter(xy[none, 0], xy[none, 1], s=6, c="lightgrey", label="(none)")
    for g in np.unique(labels[~none]):
        sel = labels == g
        name = genre_names[g] if g < len(genre_names) else str(g)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(int(g) % cmap.N), label=name)
    ax.set_title(f"fused item vectors ({method.upper()}, {len(x)} items)")
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=1 + len(genre_names) // 12)
    fig.tight_layout()
    return save_figure(fig, path, format="png")


def history_series(history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-epoch rows for ``dvc plots``: numeric fields only, without wall-clock timings (the same params give the
    same file), ``epoch`` first."""
    rows = []
    for row in history:
        kept = {k: float(v) for k, v in row.items()
                if isinstance(v, (int, float)) and not ("seconds" in k or k.endswith("_per_s"))}
        rows.append({"epoch": kept.pop("epoch"), **kept} if "epoch" in kept else kept)
    return rows
