"""SAL: the sparse-attention long-sequence user encoder over fused item vectors.

A SASRec-style next-item model (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation") whose
self-attention is the multi-granularity causal sparse attention of :mod:`mufasa.models.sparse_attention` (after
NSA, Yuan et al. 2025), so one layer costs O(window + L/block + k*block) per event instead of O(L).

    item representation  e_i = W_f * fused_i (frozen MFL vector, learned projection) [+ id_embedding_i]
    input at position t  h_t = e_{item_t} + position_t [+ time_gap_t]
    blocks               pre-LN: h = h + drop(attn(LN(h))); h = h + drop(FFN(LN(h)))
    output               LN(h_t) . e_j / temperature  = score of item j as the next item after t

Contract (RecBole-like): ``forward`` -> hidden states, ``item_embeddings`` -> scoring table (shared with the
input representation, as in SASRec), ``calculate_loss`` -> next-item loss at every position, and
``full_sort_predict`` -> scores of all items after the last event.

Departures from SASRec (``NOTE:`` in the code): positions count from each user's *first kept event* (SASRec
indexes the padded window), so a prefix gets the same hidden states as the whole sequence; pre-LN blocks; an
optional bucketed log time-gap embedding; the item table may be built from frozen fused features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mufasa.models.sparse_attention import (
    DenseCausalAttention,
    MultiGranularitySparseAttention,
    SparseAttentionConfig,
)

__all__ = ["SALConfig", "SALModel", "SeenBias", "first_positions", "time_gap_buckets", "N_TIME_BUCKETS"]

# Bucket 0: no previous event (first event, padding, or no timestamps); bucket b >= 1: gap in [2^(b-1)-1, 2^b-1)
# seconds. 32 buckets reach 2^31 s (68 years), so every real gap has its own bucket.
N_TIME_BUCKETS = 32


@dataclass(frozen=True)
class SALConfig:
    """SAL model shape and objective; defaults fit MovieLens-100k-sized catalogues on a CPU."""

    n_items: int
    # Width of the fused MFL item vectors; 0 = no fused features (ID embeddings only).
    item_feature_dim: int = 0
    # ID embeddings beside the fused features: collaborative signal that content features lack.
    use_id_embedding: bool = True
    # Fused features in the output (scoring) table too, not only in the input: True ties input and output as
    # SASRec does; False scores with ID embeddings alone (needs use_id_embedding), fused vectors inform the input.
    fused_in_output: bool = True
    # Recommender-sized width (the reference shapes, benchmarks/README.md): sequences, not language, need few dimensions.
    d_model: int = 64
    # Two layers: the least depth that lets one layer build "which item came before me" for the next to match
    # (what replaying an earlier session needs).
    n_layers: int = 2
    n_heads: int = 2
    # Sparse attention shape, see SparseAttentionConfig for the reasoning behind each default.
    window: int = 64
    block_size: int = 32
    top_k: int = 4
    select_group: int = 2
    use_window: bool = True
    use_compressed: bool = True
    use_selected: bool = True
    # "dense": dense causal attention (SDPA), same model otherwise (the dense_attention ablation).
    attention: Literal["sparse", "dense"] = "sparse"
    # Sparse attention implementation (SparseAttentionConfig.impl): "block" (the tested CPU/GPU path, attention
    # dropout included), "flex" (one flex_attention call, GPU speed path; no attention dropout, so it needs
    # attn_dropout 0 to train; CPU: forward only), "auto" (flex on CUDA unless training with attention dropout,
    # block elsewhere) or "reference" (readable O(L^2) masks, same results).
    attention_impl: Literal["auto", "block", "flex", "reference"] = "block"
    # Left-truncation length (the most recent max_len events are kept); also the position-table size.
    max_len: int = 200
    # Dropout on embeddings and residual branches; SASRec's value for sparse data such as MovieLens.
    dropout: float = 0.2
    # Dropout on attention probabilities, in every branch (SASRec/RecBole's attn_dropout_prob). Off by default so
    # that a config with dropout 0 is deterministic (and models saved before the field existed, which trained
    # without it, load as trained); params.yaml sets the trained value.
    attn_dropout: float = 0.0
    # Full softmax is exact and cheap while the catalogue is small; "sampled" for large catalogues.
    loss: Literal["full", "sampled"] = "full"
    # Uniform negatives per batch (and as many in-batch negatives) for the sampled softmax.
    n_negatives: int = 256
    # Softmax temperature on dot-product scores (1.0 = plain dot products, as SASRec).
    temperature: float = 1.0
    # Learned embedding of the log time gap to the previous event: session boundaries mark where a new interest
    # (or a replay of an old one) starts.
    time_encoding: bool = True
    # Learned embedding of the *previous* item added at each position (its own table): with it, "the event after
    # the last time I saw this item" is one query-key match (query: current item; key: the item before it), so
    # recalling an earlier session needs no previous-event head built from learned positions first.
    prev_item: bool = False
    # With prev_item: how many earlier items each position embeds, each lag with its own table (1 = the previous
    # item only). 2 makes "the event after the last time I saw these two items" one query-key match: in a long
    # history an item recurs with several continuations, a pair of items rarely does
    # (benchmarks/results/replay-match-ceiling.md).
    prev_lags: int = 1
    # One learned scalar added to the score of every item the user has already consumed (up to and including the
    # current event): the model learns from the training targets how often a user comes back to an item
    # (negative where users never repeat, as on MovieLens ratings; positive where they do). Off = SASRec's scores.
    seen_bias: bool = False

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError("n_items must be >= 1")
        if self.item_feature_dim < 0:
            raise ValueError("item_feature_dim must be >= 0")
        if not self.use_id_embedding and self.item_feature_dim == 0:
            raise ValueError("items need a representation: use_id_embedding or item_feature_dim > 0")
        if not self.fused_in_output and not self.use_id_embedding:
            raise ValueError("fused_in_output=False scores with ID embeddings: needs use_id_embedding")
        if self.attention not in ("sparse", "dense"):
            raise ValueError(f"attention must be 'sparse' or 'dense', got {self.attention!r}")
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"loss must be 'full' or 'sampled', got {self.loss!r}")
        if self.prev_lags < 1:
            raise ValueError("prev_lags must be >= 1")
        if self.n_layers < 1 or self.max_len < 1 or self.n_negatives < 1:
            raise ValueError("n_layers, max_len and n_negatives must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0):
            raise ValueError("dropout and attn_dropout must be in [0, 1)")
        _ = self.attention_config  # validates the attention shape

    @property
    def attention_config(self) -> SparseAttentionConfig:
        return SparseAttentionConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            window=self.window,
            block_size=self.block_size,
            top_k=self.top_k,
            select_group=self.select_group,
            use_window=self.use_window,
            use_compressed=self.use_compressed,
            use_selected=self.use_selected,
            dropout=self.attn_dropout,
            impl=self.attention_impl,
        )

    kind = "sal"

    def build(self, item_features: Tensor | None = None) -> SALModel:
        return SALModel(self, item_features)

    def to_dict(self) -> dict:
        return asdict(self)


def time_gap_buckets(timestamps: Tensor, valid: Tensor) -> Tensor:
    """(B, L) timestamps (s) -> (B, L) bucket ids: 0 for a first/padded event, else 1 + floor(log2(1 + gap))."""
    gap = (timestamps[:, 1:] - timestamps[:, :-1]).clamp(min=0).double()  # (B, L-1)
    bucket = 1 + torch.floor(torch.log2(1.0 + gap)).long().clamp(max=N_TIME_BUCKETS - 2)
    has_prev = valid[:, 1:] & valid[:, :-1]
    bucket = torch.where(has_prev, bucket, torch.zeros_like(bucket))
    return F.pad(bucket, (1, 0))  # position 0 never has a previous event in the batch


def first_positions(items: Tensor, n_items: int) -> Tensor:
    """(B, L) item indices (0 = padding) -> (B, N + 1) long: the first position of each item in each row, L where
    the item does not occur (column 0, padding, is always L)."""
    B, L = items.shape
    pos = torch.arange(L, device=items.device).expand(B, L)
    first = torch.full((B, n_items + 1), L, dtype=torch.long, device=items.device)
    first = first.scatter_reduce(1, items, pos, reduce="amin", include_self=True)
    first[:, 0] = L
    return first


class SeenBias(nn.Module):
    """A learned scalar added to the scores of items consumed at or before the scored position (init 0: off)."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, logits: Tensor, first: Tensor, rows: Tensor, positions: Tensor, columns: Tensor | None = None
                ) -> Tensor:
        """``logits`` (P, C) of P scored positions (their batch ``rows`` and ``positions``, (P,) each) over items
        ``columns`` (C,) (None: items 1..N, column j = item j + 1); ``first`` from :func:`first_positions`."""
        seen = first[rows][:, 1:] if columns is None else first[rows][:, columns]  # (P, C)
        return logits + self.weight.to(logits.dtype) * (seen <= positions[:, None]).to(logits.dtype)

    def scored(self, items: Tensor, has_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(first, rows, positions)`` of the positions with a target (``has_target`` (B, L), in row-major order,
        as ``hidden[has_target]`` takes them): the arguments :meth:`forward` needs after ``logits``."""
        rows, positions = has_target.nonzero(as_tuple=True)
        return first_positions(items, self.n_items), rows, positions

    def after_last(self, scores: Tensor, items: Tensor) -> Tensor:
        """(B, N) scores of items 1..N after the last position of ``items`` (B, L): the biased scores."""
        B, L = items.shape
        rows = torch.arange(B, device=items.device)
        return self(scores, first_positions(items, self.n_items), rows, torch.full_like(rows, L - 1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class SALBlock(nn.Module):
    """Pre-LN transformer block: h + drop(attn(LN h)), then h + FFN(LN h)."""

    def __init__(self, config: SALConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        attn_cfg = config.attention_config
        self.attn = (
            MultiGranularitySparseAttention(attn_cfg) if config.attention == "sparse" else DenseCausalAttention(attn_cfg)
        )
        self.ln_ffn = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.dropout)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, h: Tensor, valid: Tensor) -> Tensor:
        h = h + self.drop(self.attn(self.ln_attn(h), valid))
        return h + self.ffn(self.ln_ffn(h))


class SALModel(nn.Module):
    """SAL user encoder. ``item_features``: (n_items, F) fused vectors of items 1..N (frozen), or None."""

    def __init__(self, config: SALConfig, item_features: Tensor | None = None):
        super().__init__()
        self.config = config
        N, D = config.n_items, config.d_model
        if config.item_feature_dim > 0:
            if item_features is None or tuple(item_features.shape) != (N, config.item_feature_dim):
                got = None if item_features is None else tuple(item_features.shape)
                raise ValueError(f"item_features must be ({N}, {config.item_feature_dim}), got {got}")
            feats = torch.cat([torch.zeros(1, config.item_feature_dim), item_features.detach().float().cpu()])
            self.register_buffer("item_features", feats)  # (N + 1, F), row 0 = padding; frozen
            self.feature_proj = nn.Linear(config.item_feature_dim, D)
        elif item_features is not None:
            raise ValueError("item_features given but config.item_feature_dim == 0")
        self.id_embedding = nn.Embedding(N + 1, D, padding_idx=0) if config.use_id_embedding else None
        self.position = nn.Embedding(config.max_len, D)
        self.time_gap = nn.Embedding(N_TIME_BUCKETS, D) if config.time_encoding else None
        self.prev_embedding = nn.Embedding(N + 1, D, padding_idx=0) if config.prev_item else None
        # lags 2.. (prev_lags > 1): the item two, three, ... events back, one table each
        lags = config.prev_lags - 1 if config.prev_item else 0
        self.earlier_embeddings = nn.ModuleList(nn.Embedding(N + 1, D, padding_idx=0) for _ in range(lags))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SALBlock(config) for _ in range(config.n_layers))
        self.ln_out = nn.LayerNorm(D)
        self.apply(self._init_weights)
        self.seen_bias = SeenBias(N) if config.seen_bias else None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Small normal init (as GPT-2/nanoGPT): dot-product scores start near zero, softmax near uniform.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    # -- item representation ----------------------------------------------------------------------------------

    def _represent(self, items: Tensor, with_features: bool = True) -> Tensor:
        """Item indices (any shape, 0 = padding) -> (..., D), zero for padding."""
        rep = self.id_embedding(items) if self.id_embedding is not None else None
        if with_features and self.config.item_feature_dim > 0:
            proj = self.feature_proj(self.item_features[items])
            rep = proj if rep is None else rep + proj
        return rep * (items > 0)[..., None].to(rep.dtype)

    def item_embeddings(self) -> Tensor:
        """(N + 1, D) output embeddings used for scoring (row 0 = padding, zero), shared with the input side
        (ID embeddings only when ``fused_in_output`` is off)."""
        items = torch.arange(self.config.n_items + 1, device=self.position.weight.device)
        return self._represent(items, with_features=self.config.fused_in_output)

    # -- encoder ----------------------------------------------------------------------------------------------

    def forward(self, items: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """items: (B, L) long, left-padded with 0; timestamps: (B, L) long seconds or None -> hidden (B, L, D)."""
        if items.ndim != 2:
            raise ValueError(f"items must be (B, L), got {tuple(items.shape)}")
        B, L = items.shape
        if L > self.config.max_len:
            raise ValueError(f"sequence length {L} > max_len {self.config.max_len}: left-truncate first")
        if timestamps is not None and timestamps.shape != items.shape:
            raise ValueError(f"timestamps must match items {tuple(items.shape)}, got {tuple(timestamps.shape)}")
        valid = items > 0
        # NOTE: positions count from the user's first kept event (0, 1, ...), not over the padded window as in
        # SASRec, so the hidden state at t is the same for any amount of padding and for any later events.
        pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        h = self._represent(items) + self.position(pos)
        if self.time_gap is not None:
            buckets = time_gap_buckets(timestamps, valid) if timestamps is not None else torch.zeros_like(items)
            h = h + self.time_gap(buckets)
        if self.prev_embedding is not None:
            # item before each event (0 = none: the first kept event, or padding); zero for padded positions
            h = h + self.prev_embedding(F.pad(items[:, :-1], (1, 0)))
            for lag, table in enumerate(self.earlier_embeddings, start=2):  # 0 where the history is shorter
                h = h + table(F.pad(items, (lag, 0))[:, :L])
        h = self.drop(h * valid[..., None].to(h.dtype))
        for block in self.blocks:
            h = block(h, valid)
        return self.ln_out(h) * valid[..., None].to(h.dtype)

    @torch.no_grad()
    def explain_last(self, items: Tensor, timestamps: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Per layer, :meth:`MultiGranularitySparseAttention.explain_last` at each row's last event: the past
        blocks the selection branch weighted most and the branch gates (positions in the (B, L) input)."""
        if self.config.attention != "sparse":
            raise ValueError("explanations come from the sparse attention's selection branch; this model is dense")
        captured: list[tuple[Tensor, Tensor]] = []
        hooks = [block.attn.register_forward_pre_hook(lambda _m, args: captured.append((args[0], args[1])))
                 for block in self.blocks]
        was_training = self.training
        self.eval()
        try:
            self.forward(items, timestamps)
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)
        return [block.attn.explain_last(x, valid) for block, (x, valid) in zip(self.blocks, captured, strict=True)]

    # -- objective and scoring --------------------------------------------------------------------------------

    def calculate_loss(self, items: Tensor, timestamps: Tensor | None, targets: Tensor) -> Tensor:
        """Mean next-item cross-entropy over every position with a target (targets (B, L), 0 = no target)."""
        if targets.shape != items.shape:
            raise ValueError(f"targets must match items {tuple(items.shape)}, got {tuple(targets.shape)}")
        hidden = self.forward(items, timestamps)
        has_target = targets > 0
        h = hidden[has_target]  # (P, D)
        t = targets[has_target]  # (P,)
        if t.numel() == 0:
            return hidden.sum() * 0.0
        table = self.item_embeddings()  # (N + 1, D)
        seen = None if self.seen_bias is None else self.seen_bias.scored(items, has_target)
        if self.config.loss == "full":
            logits = h @ table[1:].T / self.config.temperature  # (P, N): column j = item j + 1
            if seen is not None:
                logits = self.seen_bias(logits, *seen)
            return F.cross_entropy(logits.float(), t - 1)
        return self._sampled_softmax(h, t, table, seen)

    def _sampled_softmax(self, h: Tensor, t: Tensor, table: Tensor, seen: tuple | None = None) -> Tensor:
        """Sampled softmax with in-batch + uniform negatives and logQ correction.

        Negatives: ``n`` in-batch targets drawn uniformly from the batch's P positions (so item c is drawn with
        probability count_c / P: popularity-distributed) plus ``n`` items uniform over 1..N. The expected number
        of times c enters the pool is ``E_c = n * (count_c / P + 1 / N)``; each negative's logit is corrected by
        ``- log E_c`` (Yi et al. 2019, "Sampling-bias-corrected neural modeling"), which makes
        ``exp(s_pos) + sum_neg exp(s_c - log E_c)`` an unbiased estimate of the full softmax normaliser.
        The positive is always present (weight 1, no correction); negatives equal to a row's positive are removed.
        """
        N, n = self.config.n_items, self.config.n_negatives
        P = t.numel()
        dev = t.device
        in_batch = t[torch.randint(0, P, (n,), device=dev)]
        uniform = torch.randint(1, N + 1, (n,), device=dev)
        negatives = torch.cat([in_batch, uniform])  # (2n,)
        count = torch.bincount(t, minlength=N + 1).float()  # (N + 1,)
        log_expected = torch.log(n * (count[negatives] / P + 1.0 / N))  # (2n,)
        temp = self.config.temperature
        pos_logit = (h * table[t]).sum(-1, keepdim=True) / temp  # (P, 1)
        neg_logits = h @ table[negatives].T / temp - log_expected  # (P, 2n)
        if seen is not None:
            first, rows, positions = seen
            pos_logit = pos_logit + self.seen_bias.weight * (first[rows, t] <= positions)[:, None].to(h.dtype)
            neg_logits = self.seen_bias(neg_logits, first, rows, positions, negatives)
        neg_logits = neg_logits.masked_fill(negatives[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logits], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(P, dtype=torch.long, device=dev))

    def full_sort_predict(self, items: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """Scores (B, N) of items 1..N as the next item after the last position (column j = item index j + 1)."""
        last = self.forward(items, timestamps)[:, -1]  # (B, D): left padding puts every last event at L-1
        scores = last @ self.item_embeddings()[1:].T / self.config.temperature
        return scores if self.seen_bias is None else self.seen_bias.after_last(scores, items)
