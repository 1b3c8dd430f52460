"""The four MFL training losses, each a named function whose docstring states its exact formula.

The MUFASA paper states the *intent* of each term (cross-genre semantic alignment to the title anchor,
alignment with the collaborative space, title-structure preservation against collapse, a distributional
regulariser); every concrete formula below is ours. Notation: ``n(x) = x / ||x||`` row-wise, ``<a, b>`` the dot
product, ``τ`` a temperature, ``B`` the batch size, rows ``i, j`` items of the batch. All losses are computed
in float32 (inputs are upcast), so they are safe under bf16 autocast.

In-batch negatives are "cross-genre" because the trainer's ``GenreMixingSampler`` fills every batch with items
of all genres in proportion to their frequency: an item's title must be told apart from titles of other genres,
not only of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "MFLLossWeights",
    "collaborative_alignment_loss",
    "info_nce",
    "mfl_objective",
    "semantic_alignment_loss",
    "structure_preservation_loss",
    "uniformity_loss",
    "variance_covariance_loss",
]

LOSS_NAMES: tuple[str, ...] = ("semantic", "collaborative", "structure", "uniformity", "variance_covariance")


@dataclass(frozen=True)
class MFLLossWeights:
    """Weight of each term in the MFL objective (0 switches a term off: it is not even computed) + temperatures."""

    # Modality tokens -> title anchor; 1.0: the paper's primary fusion objective.
    semantic: float = 1.0
    # Fused -> collaborative item vectors (train split only); 1.0: as important as semantics for ranking.
    collaborative: float = 1.0
    # Title-neighbourhood preservation (anti-collapse); 1.0 keeps fused neighbours close to title neighbours.
    structure: float = 1.0
    # Wang & Isola uniformity on fused vectors: the chosen 4th loss; 0.1 because its scale (~ -t * 2 at the
    # optimum, -4 for t=2) is larger than its useful gradient and InfoNCE already spreads the space somewhat.
    uniformity: float = 0.1
    # VICReg-style variance/covariance; off by default (kept for the ablation, see its docstring).
    variance_covariance: float = 0.0
    # τ of the InfoNCE terms: 0.1 is the usual contrastive choice for unit vectors (sharp but trainable).
    temperature: float = 0.1
    # τ of the structure term (both teacher and student); 0.1 sharpens MiniLM's compressed cosine range.
    structure_temperature: float = 0.1
    # t of the uniformity term; 2 as in Wang & Isola (2020).
    uniformity_t: float = 2.0

    def __post_init__(self) -> None:
        for name in LOSS_NAMES:
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {getattr(self, name)}")
        for name in ("temperature", "structure_temperature", "uniformity_t"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not any(getattr(self, name) > 0 for name in LOSS_NAMES):
            raise ValueError("every MFL loss weight is 0: nothing to train")

    def active(self) -> dict[str, float]:
        """The switched-on terms and their weights."""
        return {name: getattr(self, name) for name in LOSS_NAMES if getattr(self, name) > 0}


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``n(x)``: row-wise L2 normalisation in float32."""
    return F.normalize(x.float(), dim=-1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` (B, D) and ``b`` (B, D); row i of each is the positive pair.

    ``S_ij = <n(a_i), n(b_j)> / τ``;
    ``L = ½ [ -1/B Σ_i log softmax_j(S_i·)_i  -  1/B Σ_i log softmax_j(S_·i)_i ]``
    (CLIP's loss: a-to-b and b-to-a cross-entropy with the diagonal as the target).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"info_nce needs paired rows, got {a.shape[0]} and {b.shape[0]}")
    logits = _unit(a) @ _unit(b).T / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def semantic_alignment_loss(
    anchor: torch.Tensor,
    others: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor] | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-genre semantic alignment: every modality token of an item is pulled to its own title anchor.

    Purpose: image and side heads must land where the title head puts the same item, so the title-anchored
    attention mixes compatible vectors; in-batch negatives (mixed genres) keep different items apart.

    Formula (ours): for each modality ``m`` in ``others`` with valid rows ``V_m = {i : masks[m][i]}`` (all rows
    when ``m`` has no mask), ``L_m = info_nce(o_m[V_m], anchor[V_m], τ)`` (symmetric InfoNCE, see
    :func:`info_nce`); ``L = mean_m L_m`` over the modalities with ``|V_m| >= 2``. Masked-out tokens (e.g. the
    ``missing_image`` stand-in) are neither positives nor negatives. Returns 0 (with a graph) when no modality
    qualifies.

    anchor: (B, D) projected titles; others: modality -> (B, D) tokens in the same space; masks: modality -> (B,)
    bool.
    """
    masks = masks or {}
    terms = []
    for name, tokens in others.items():
        if tokens.shape != anchor.shape:
            raise ValueError(f"token {name!r} has shape {tuple(tokens.shape)}, anchor {tuple(anchor.shape)}")
        mask = masks.get(name)
        if mask is not None:
            rows = mask.to(torch.bool).nonzero(as_tuple=True)[0]  # (V,)
            if rows.numel() < 2:
                continue
            terms.append(info_nce(tokens.index_select(0, rows), anchor.index_select(0, rows), temperature))
        elif tokens.shape[0] >= 2:
            terms.append(info_nce(tokens, anchor, temperature))
    if not terms:
        return anchor.float().sum() * 0.0
    return torch.stack(terms).mean()


def collaborative_alignment_loss(
    fused: torch.Tensor,
    collab: torch.Tensor,
    temperature: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Collaborative alignment: each fused item vector is matched to its own collaborative item vector.

    Purpose: inject what co-consumption says (items watched together are near) into the content-derived fused
    space, so SAL sees items whose neighbours reflect behaviour, not only titles.

    Formula (ours): with ``V = {i : mask[i]}`` (all rows without a mask; items never seen in training have no
    collaborative vector and are excluded), ``L = info_nce(fused[V], collab[V], τ)`` — symmetric InfoNCE on
    cosine similarities, in-batch negatives. ``collab`` is the collaborative vector already mapped into the
    fused space (``MultimodalFusion.project_collab``, an orthogonal map of the train-split PPMI-SVD vectors of
    ``mufasa.training.mfl_trainer.collaborative_space``). Returns 0 (with a graph) when ``|V| < 2``.
    """
    if fused.shape != collab.shape:
        raise ValueError(f"fused {tuple(fused.shape)} and collab {tuple(collab.shape)} must have the same shape")
    if mask is not None:
        rows = mask.to(torch.bool).nonzero(as_tuple=True)[0]  # (V,)
        if rows.numel() < 2:
            return fused.float().sum() * 0.0
        fused, collab = fused.index_select(0, rows), collab.index_select(0, rows)
    if fused.shape[0] < 2:
        return fused.float().sum() * 0.0
    return info_nce(fused, collab, temperature)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """(B, B) -> (B, B - 1): each row without its diagonal entry."""
    B = m.shape[0]
    keep = ~torch.eye(B, dtype=torch.bool, device=m.device)
    return m[keep].view(B, B - 1)  # boolean indexing is row-major: row i keeps its own entries


def structure_preservation_loss(fused: torch.Tensor, title: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Title-structure preservation (anti-collapse): fused neighbourhoods must reproduce title neighbourhoods.

    Purpose: the alignment terms can be satisfied by a space that keeps only coarse (genre-level) structure or
    collapses; this term asks each item to rank the other items of the batch as its frozen title embedding does.

    Formula (ours): for ``i != j`` in the batch,
    ``P_ij = softmax_{j != i}(<n(t_i), n(t_j)> / τ)`` (teacher: frozen title embeddings, no gradient),
    ``Q_ij = softmax_{j != i}(<n(f_i), n(f_j)> / τ)`` (student: fused vectors),
    ``L = 1/B Σ_i KL(P_i· || Q_i·) = 1/B Σ_i Σ_{j != i} P_ij (log P_ij - log Q_ij)``.
    ``L = 0`` iff the fused similarity profile equals the title's (e.g. ``fused == title``), and it is large when
    fused vectors collapse onto one point while titles are spread (``Q`` uniform, ``P`` peaked).

    fused: (B, D_f), title: (B, D_t); D_f and D_t may differ (only within-space similarities are compared).
    """
    if fused.shape[0] != title.shape[0]:
        raise ValueError(f"fused and title need the same rows, got {fused.shape[0]} and {title.shape[0]}")
    if fused.shape[0] < 3:  # with two rows each softmax is over one entry: KL is identically 0
        return fused.float().sum() * 0.0
    t = _unit(title.detach())
    f = _unit(fused)
    log_p = F.log_softmax(_off_diagonal(t @ t.T) / temperature, dim=-1)  # (B, B-1)
    log_q = F.log_softmax(_off_diagonal(f @ f.T) / temperature, dim=-1)  # (B, B-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Uniformity on the hypersphere (Wang & Isola, ICML 2020), the MFL's 4th (distributional) loss.

    Formula: ``L = log( 2 / (B (B - 1)) Σ_{i<j} exp(-t ||n(x_i) - n(x_j)||²) )``, with
    ``||u - v||² = 2 - 2 <u, v>`` for unit rows. Minimal when points spread uniformly over the sphere;
    0 (its maximum) when all rows coincide. Purpose: stop the fused space from concentrating in a narrow cone,
    which would waste SAL's capacity and make dot-product scores indistinct.
    """
    B = x.shape[0]
    if B < 2:
        return x.float().sum() * 0.0
    u = _unit(x)
    sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # (B, B) squared distances
    iu = torch.triu_indices(B, B, offset=1, device=x.device)
    pairs = sq[iu[0], iu[1]]  # (B(B-1)/2,)
    return torch.logsumexp(-t * pairs, dim=0) - math.log(pairs.numel())


def variance_covariance_loss(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg-style variance + covariance regulariser (Bardes et al., ICLR 2022), rescaled for unit rows.

    Formula (ours, adapted): ``z = sqrt(D) * n(x)`` (isotropic unit vectors then have per-dimension variance ~1),
    ``z̄`` its batch mean, ``C = (z - z̄)^T (z - z̄) / (B - 1)``;
    ``L = 1/D Σ_d max(0, 1 - sqrt(C_dd + eps))  +  1/D Σ_{d != e} C_de²``.
    The first part keeps every dimension in use, the second decorrelates dimensions. Kept as an alternative
    4th loss (weight 0 by default): on unit rows it overlaps with uniformity, which needs no scale choice.
    """
    B, D = x.shape
    if B < 2:
        return x.float().sum() * 0.0
    z = _unit(x) * math.sqrt(D)
    z = z - z.mean(dim=0, keepdim=True)
    cov = z.T @ z / (B - 1)  # (D, D)
    std = torch.sqrt(torch.diagonal(cov) + eps)
    off = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1.0 - std).mean() + off.pow(2).sum() / D


def mfl_objective(
    tokens: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    fused: torch.Tensor,
    title_features: torch.Tensor,
    collab: torch.Tensor | None,
    collab_mask: torch.Tensor | None,
    weights: MFLLossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the switched-on terms: ``Σ_k w_k L_k``; returns (total, {term: unweighted value}).

    tokens/masks: ``FusionOutput.tokens`` / ``.masks`` ("text" is the anchor); fused: (B, out_dim);
    title_features: (B, text_dim) frozen title embeddings (the structure teacher); collab: (B, out_dim) projected
    collaborative vectors or None (then ``weights.collaborative`` must be 0); collab_mask: (B,) bool.
    """
    active = weights.active()
    terms: dict[str, torch.Tensor] = {}
    if "semantic" in active:
        others = {m: v for m, v in tokens.items() if m != "text"}
        terms["semantic"] = semantic_alignment_loss(tokens["text"], others, masks, weights.temperature)
    if "collaborative" in active:
        if collab is None:
            raise ValueError("the collaborative loss is on but no collaborative vectors were given")
        terms["collaborative"] = collaborative_alignment_loss(fused, collab, weights.temperature, collab_mask)
    if "structure" in active:
        terms["structure"] = structure_preservation_loss(fused, title_features, weights.structure_temperature)
    if "uniformity" in active:
        terms["uniformity"] = uniformity_loss(fused, weights.uniformity_t)
    if "variance_covariance" in active:
        terms["variance_covariance"] = variance_covariance_loss(fused)
    total = sum(active[k] * v for k, v in terms.items())
    return total, terms
