"""SASRec, as the reference implementation trains it: the baseline every MUFASA result is measured against.

Kang & McAuley 2018, "Self-Attentive Sequential Recommendation", written to match the widely used RecBole
implementation (``recbole/model/sequential_recommender/sasrec.py``, RecBole 1.2.1) layer for layer:

    input at position t  h_t = Dropout(LN(E[item_t] + P[t]))          ID embeddings only, learned positions
    each of n_layers     h = LN(h + Dropout(W_o MHA(h)))               post-LN; attention dropout on probabilities
                         h = LN(h + Dropout(W_2 gelu(W_1 h)))          inner size 256
    score of item j      h_t . E[j]                                    output table = input table

Positions index the (at most ``max_len``) events of the window from its oldest event, as RecBole's right-padded
windows do; here windows are left-padded, so positions count from the first real event of each row.
The reference's settings for MovieLens-100k (hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5 on hidden
states and attention, 200 positions) are this config's defaults.

Departures (``NOTE:`` in the code): the reference trains one padded example per prefix; here a training
example is a whole window with the loss at every position (the same targets per epoch, in fewer steps; see
:mod:`mufasa.training.sal_trainer`). With causal attention and positions counted from each window's oldest event,
position t of a window computes exactly what the reference computes for the prefix ending there (up to dropout
masks); so that every target also *weighs* what it weighs in the reference, the baseline trains with
``loss_weighting: target`` and ``batching: random`` (``params.yaml``; measured in
``benchmarks/results/training-variants.md``: 5 seeds, test NDCG@10 0.0508 -> 0.0573). Targets of histories longer
than 201 events see fewer than 200 events of context here (windows do not overlap). The reference scores the padding row too; here only items 1..N are scored.

Same contract as :class:`mufasa.models.sal.SALModel` (``forward``, ``calculate_loss``, ``full_sort_predict``,
``item_embeddings``), so the SAL trainer, scorer and evaluation take either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mufasa.models.sal import SeenBias

__all__ = ["SASRecConfig", "SASRecModel"]


@dataclass(frozen=True)
class SASRecConfig:
    """The reference SASRec's shape; defaults are the RecBole settings the project's anchor was measured with."""

    n_items: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    # Feed-forward width (RecBole ``inner_size``).
    inner_size: int = 256
    # Dropout on the embeddings and every residual branch (RecBole ``hidden_dropout_prob``).
    dropout: float = 0.5
    # Dropout on attention probabilities (RecBole ``attn_dropout_prob``).
    attn_dropout: float = 0.5
    # Learned positions over the last max_len events (RecBole ``MAX_ITEM_LIST_LENGTH``).
    max_len: int = 200
    layer_norm_eps: float = 1e-12
    # Not in the reference (off = RecBole's SASRec): SAL's learned seen-item score bias (SALConfig.seen_bias), for
    # measuring how much of a gain that bias alone brings.
    seen_bias: bool = False

    # SASRec has no item features, time encoding or sampled loss: fields the SAL harness asks every model for.
    item_feature_dim: int = 0
    loss: str = "full"

    kind = "sasrec"

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.n_layers < 1 or self.max_len < 1 or self.inner_size < 1:
            raise ValueError("n_items, n_layers, max_len and inner_size must be >= 1")
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0):
            raise ValueError("dropout and attn_dropout must be in [0, 1)")
        if self.item_feature_dim != 0 or self.loss != "full":
            raise ValueError("SASRec is ID-only with a full softmax (item_feature_dim 0, loss 'full')")

    def build(self, item_features: Tensor | None = None) -> SASRecModel:
        if item_features is not None:
            raise ValueError("SASRec takes no item features")
        return SASRecModel(self)

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Post-LN multi-head causal self-attention block (RecBole ``MultiHeadAttention``)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.query = nn.Linear(cfg.d_model, cfg.d_model)
        self.key = nn.Linear(cfg.d_model, cfg.d_model)
        self.value = nn.Linear(cfg.d_model, cfg.d_model)
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        B, L, D = h.shape
        H = self.n_heads

        def heads(x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, D/H)
            return x.view(B, L, H, D // H).transpose(1, 2)

        p = self.attn_dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(
            heads(self.query(h)), heads(self.key(h)), heads(self.value(h)), attn_mask=allowed, dropout_p=p
        )  # (B, H, L, D/H)
        ctx = ctx.transpose(1, 2).reshape(B, L, D)
        return self.ln(h + self.drop(self.dense(ctx)))


class FeedForward(nn.Module):
    """Post-LN position-wise feed-forward block (RecBole ``FeedForward``, gelu)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.inner_size)
        self.down = nn.Linear(cfg.inner_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.ln(h + self.drop(self.down(F.gelu(self.up(h)))))


class SASRecModel(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        D = config.d_model
        self.item_embedding = nn.Embedding(config.n_items + 1, D, padding_idx=0)
        self.position = nn.Embedding(config.max_len, D)
        self.ln_in = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"attn": SelfAttention(config), "ffn": FeedForward(config)}) for _ in range(config.n_layers)
        )
        self.apply(self._init_weights)
        self.seen_bias = SeenBias(config.n_items) if config.seen_bias else None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # RecBole's init: N(0, 0.02) for linear and embedding weights, zero biases, unit LayerNorms.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def item_embeddings(self) -> Tensor:
        """(N + 1, D) scoring table, row 0 = padding."""
        return self.item_embedding.weight

    def forward(self, items: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """items: (B, L) long, left-padded with 0 -> hidden (B, L, D). ``timestamps`` is ignored (ID-only)."""
        if items.ndim != 2:
            raise ValueError(f"items must be (B, L), got {tuple(items.shape)}")
        B, L = items.shape
        if L > self.config.max_len:
            raise ValueError(f"sequence length {L} > max_len {self.config.max_len}: left-truncate first")
        valid = items > 0  # (B, L)
        pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, L): 0 at each row's oldest event
        h = self.drop(self.ln_in(self.item_embedding(items) + self.position(pos)))
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
        # Padded keys masked (RecBole's extended attention mask); the diagonal stays on so no row is empty.
        allowed = (causal & valid[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=items.device)
        for layer in self.layers:
            h = layer["ffn"](layer["attn"](h, allowed))
        return h * valid[..., None].to(h.dtype)

    def calculate_loss(self, items: Tensor, timestamps: Tensor | None, targets: Tensor) -> Tensor:
        """Mean cross-entropy over all items at every position with a target (targets (B, L), 0 = none)."""
        if targets.shape != items.shape:
            raise ValueError(f"targets must match items {tuple(items.shape)}, got {tuple(targets.shape)}")
        hidden = self.forward(items, timestamps)
        has_target = targets > 0
        if not bool(has_target.any()):
            return hidden.sum() * 0.0
        # NOTE: RecBole scores the padding row as a class too; scoring items 1..N only changes nothing learned.
        logits = hidden[has_target] @ self.item_embedding.weight[1:].T  # (P, N)
        if self.seen_bias is not None:
            logits = self.seen_bias(logits, *self.seen_bias.scored(items, has_target))
        return F.cross_entropy(logits.float(), targets[has_target] - 1)

    def full_sort_predict(self, items: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """Scores (B, N) of items 1..N after the last position (column j = item index j + 1)."""
        last = self.forward(items, timestamps)[:, -1]  # (B, D)
        scores = last @ self.item_embedding.weight[1:].T
        return scores if self.seen_bias is None else self.seen_bias.after_last(scores, items)
