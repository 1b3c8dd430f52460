"""Multi-granularity causal sparse attention: sliding window + compressed blocks + top-k selected blocks.

After Native Sparse Attention (NSA): J. Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively
Trainable Sparse Attention" (arXiv:2502.11089). Every query attends through three branches, per head:

(a) **window**: exact causal attention over the last ``window`` events (itself included);
(b) **compressed**: attention over one key/value per *complete* block of ``block_size`` events, produced by a
    learned compression of the block. A block is visible to position t only if it ends at or before t;
(c) **selected**: the compressed-attention scores pick the ``top_k`` most relevant past blocks, and exact token
    attention runs inside them;

and a per-head sigmoid gate computed from the query's input combines them: ``o = g_win*o_win + g_cmp*o_cmp +
g_sel*o_sel``. A disabled branch is neither computed nor gated in.

Cost per query is O(window + L/block_size + top_k*block_size), never O(L): nothing here builds an L x L score
matrix. On CPU the fast form is *block-structured* (benchmarks/README.md: per-query gathers are dominated by
``aten::gather``): queries are grouped by block and every branch is one call of PyTorch's SDPA (the CPU flash
kernel: no probability matrix is stored for the backward) on a batch of small problems, one per (row, head,
query block):
- window: the query block against its own and the previous ``ceil((window-1)/block_size)`` key blocks (laid side
  by side by one block-shift op), masked to the exact window;
- compressed: all queries against the L/block_size block summaries, masked to the complete blocks;
- selected: the top-k key/value blocks of each group of ``select_group`` query blocks, gathered as whole
  contiguous rows (one ``index_select`` per tensor; its backward is one sparse-dense matmul, see
  :class:`_GatherRows`).

Block layout and padding. Inputs are left-padded (``valid[b, t]`` True for real events, all padding first). Blocks
are laid out from each row's *first real event*: internally every row is shifted so its first real event starts a
block, and the tail is padded to a whole number of blocks. Hence (i) the output at a real position depends on
neither the amount of left padding nor the events after it (a prefix gives the same outputs as the whole
sequence: what next-item training on whole sequences needs), and (ii) no block mixes padding and real events.

Departures from NSA (marked ``NOTE:`` in the code):
- blocks for compression and selection coincide and do not overlap (NSA allows a compression stride < block),
  and they are laid out from each user's first event;
- selection is shared by the queries of ``select_group`` consecutive query blocks (default 2 x 32 = 64 queries,
  the window's length) and decided by the last query *before* the group
  (NSA: per query, shared across a GQA group) — so no query's selection depends on later events;
- selection candidates are complete blocks strictly before the query's group; the group's own blocks are left
  to the window branch, and NSA's always-on initial/local blocks are not forced in;
- compression = mean pooling + a zero-initialised MLP correction over the flattened block (NSA: the MLP alone),
  so training starts from attention over block means.

References: :func:`reference_sparse_attention` (end of this file, ``impl="reference"``) is the whole layer as
the paper reads — per row, (n, n) masks for the three branches, the gate mix, the output projection — in ~50
lines; the tests hold the block path to it in float64, outputs and gradients.
:meth:`MultiGranularitySparseAttention.branch_outputs` returns each branch alone (and the q, k, v it used) so
tests can also compare a branch with :func:`dense_causal_attention` or a masked dense reference.
Implementations (``SparseAttentionConfig.impl``): "block" (above; CPU and GPU, attention dropout, the default);
"flex" (:mod:`mufasa.models.sparse_flex`: the three branches as ONE ``flex_attention`` call, each branch a query
head of its own so each keeps its softmax and gate, with a ``BlockMask`` built on the device from the selection;
on CUDA the whole step is ``torch.compile``'d, with no host synchronisation inside it; no attention dropout; on
CPU forward only and unfused, for tests); "auto" (flex on CUDA unless training with attention dropout, block
elsewhere); "reference" (below). The tests hold "flex" to "block": the BlockMask against ``create_block_mask``
and the selection, forward parity on CPU (float64 eager, float32 compiled), and on CUDA outputs and gradients
against the float64 block path and no host sync (tests/test_flex_attention.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BRANCHES",
    "DenseCausalAttention",
    "MultiGranularitySparseAttention",
    "SparseAttentionConfig",
    "block_layout",
    "dense_causal_attention",
    "reference_sparse_attention",
]

BRANCHES = ("window", "compressed", "selected")
IMPLS = ("auto", "block", "flex", "reference")
# Query tile of the window branch, in events: the CPU flash kernel does ~1.7x more scores per ms on 64-query
# tiles against 128 keys than on 32-query tiles against 96 (measured on the 2-core machine of benchmarks/README.md), which
# more than pays for the extra masked keys. Capped by the window (a short window needs no long tile).
WINDOW_TILE = 64
# Query chunks of the compressed branch: chunk c attends only to the summaries that exist by its end, so the
# masked (future) half of the query x summary scores is mostly skipped: 8 chunks compute ~56 % of them.
CMP_CHUNKS = 8


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Shape of one sparse attention layer; defaults sized for recommender sequences (hundreds to 16k events)."""

    # Recommender-sized model width: item sequences need far less than LLM widths (the reference shapes, benchmarks/README.md).
    d_model: int = 64
    # Two heads of 32: enough for a "recent interest" and a "long-range recall" head at this width.
    n_heads: int = 2
    # 64 recent events ~ a few sessions of the synthetic data (mean block 12): short-term interest is exact.
    window: int = 64
    # 32: a query block of 32 fills CPU matmul tiles while L/32 summaries stay cheap up to 16k events.
    block_size: int = 32
    # 4 selected blocks = 128 exact far-past events per query, the same order as the window.
    top_k: int = 4
    # Consecutive query blocks that share one selection (NSA shares per query group): 2 x 32 = 64 queries, the
    # window's length, so the blocks a group cannot select (its own) are the ones the window sees. 64-query
    # problems run ~1.7x more scores per ms in the CPU flash kernel than 32-query ones (the reference machine, benchmarks/README.md).
    # Capped at window // block_size (see group_blocks).
    select_group: int = 2
    # Each branch can be switched off for ablations (at least one must stay on).
    use_window: bool = True
    use_compressed: bool = True
    use_selected: bool = True
    # Dropout on attention probabilities; off by default (the SAL blocks already drop residuals).
    dropout: float = 0.0
    # "block": the fast block-structured path (CPU and GPU, attention dropout included); "flex": the same layer
    # as one flex_attention call with a BlockMask built on the device (mufasa.models.sparse_flex; GPU speed path,
    # no host sync, no attention dropout; on CPU forward only, unfused: for tests); "auto": flex on CUDA unless
    # training with attention dropout, block elsewhere; "reference": reference_sparse_attention, the readable
    # O(L^2) masked form (same parameters and results; for checking and reading, not for speed).
    impl: Literal["auto", "block", "flex", "reference"] = "block"

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if self.window < 1 or self.block_size < 1 or self.top_k < 1 or self.select_group < 1:
            raise ValueError("window, block_size, top_k and select_group must be >= 1")
        if not (self.use_window or self.use_compressed or self.use_selected):
            raise ValueError("at least one attention branch must be enabled")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.impl == "flex" and self.dropout > 0:
            raise ValueError("impl='flex' has no attention dropout (flex_attention cannot drop probabilities): "
                             "set dropout 0, or use impl='auto' (block path while training with dropout)")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def group_blocks(self) -> int:
        """Query blocks per selection group: ``select_group``, capped so a group never spans more than the window
        (the blocks a group cannot select must be ones its window sees; window 64 / blocks of 32 -> 2)."""
        return max(1, min(self.select_group, self.window // self.block_size))

    @property
    def enabled(self) -> tuple[bool, bool, bool]:
        return (self.use_window, self.use_compressed, self.use_selected)


# ---- references --------------------------------------------------------------------------------------------


def check_left_padded(valid: Tensor, length: int, *, content: bool = True) -> None:
    """Raise unless ``valid`` is a (B, length) bool mask with all padding before all real events in each row.
    ``content=False``: the dtype/shape checks only (the padding check reads the tensor: a host sync on a GPU)."""
    if valid.dtype != torch.bool or valid.ndim != 2 or valid.shape[1] != length:
        raise ValueError(f"valid must be a (B, {length}) bool tensor, got {valid.dtype} {tuple(valid.shape)}")
    if content and length > 1 and bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        raise ValueError("valid must be left-padded: a padding position follows a real event")


def dense_causal_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """Dense causal attention (PyTorch SDPA): the reference and the SASRec-style baseline.

    q, k, v: (B, H, L, dh); valid: (B, L) bool, True = real event (left-padded) or None for all real.
    Returns (B, H, L, dh); padded query positions are zero.
    """
    if valid is None or bool(valid.all()):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    L = q.shape[-2]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    # Padded keys are masked; the diagonal stays on so a padded query row is never empty (it is zeroed below).
    mask = (causal & valid[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=q.device)  # (B, 1, L, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out * valid[:, None, :, None].to(out.dtype)


# ---- block layout ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockLayout:
    """How a left-padded (B, L) batch maps onto (B, n_blocks * block_size) rows whose real events start a block."""

    length: int  # L, the caller's length
    n_blocks: int
    block_size: int
    valid: Tensor  # (B, Lp) bool in the block layout
    gather_in: Tensor | None  # (B * Lp,) rows of the (B * (L + 1), C) input with a zero row appended per batch
    gather_out: Tensor | None  # (B * L,) rows of the (B * (Lp + 1), C) block-layout output, zero row appended

    @property
    def padded_length(self) -> int:
        return self.n_blocks * self.block_size

    def to_blocks(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, Lp, C)."""
        B, L, C = x.shape
        Lp = self.padded_length
        if self.gather_in is None:
            return x if Lp == L else F.pad(x, (0, 0, 0, Lp - L))
        x = F.pad(x, (0, 0, 0, 1)).reshape(B * (L + 1), C)  # a zero row per batch row, for out-of-range slots
        return gather_rows(x, self.gather_in).view(B, Lp, C)

    def from_blocks(self, y: Tensor) -> Tensor:
        """(B, Lp, C) -> (B, L, C); positions without a block-layout source (padding) become zero."""
        B, Lp, C = y.shape
        L = self.length
        if self.gather_out is None:
            return y if Lp == L else y[:, :L]
        y = F.pad(y, (0, 0, 0, 1)).reshape(B * (Lp + 1), C)
        return gather_rows(y, self.gather_out).view(B, L, C)


def block_layout(valid: Tensor, block_size: int, align: int | None = None, *, always_gather: bool = False) -> BlockLayout:
    """Shift each row left by ``(#padding mod align)`` so its first real event starts a block (and a group of
    ``align / block_size`` blocks; ``align`` defaults to ``block_size``).

    NOTE: NSA cuts blocks from position 0 of a sequence without padding; with left-padded batches that would make
    block boundaries (and thus outputs) depend on the padding, so blocks start at each row's first real event.
    Selection groups (``select_group`` blocks) must start there too: hence ``align``.
    ``always_gather``: build the gathers even when no row needs a shift (skips the ``shift.any()`` host sync).
    """
    align = block_size if align is None else align
    if align % block_size:
        raise ValueError(f"align ({align}) must be a multiple of block_size ({block_size})")
    B, L = valid.shape
    n_blocks = max(1, -(-L // block_size))
    Lp = n_blocks * block_size
    shift = (L - valid.sum(1)) % align  # (B,)
    if not always_gather and not bool(shift.any()):
        aligned = valid if Lp == L else F.pad(valid, (0, Lp - L))
        return BlockLayout(L, n_blocks, block_size, aligned, None, None)
    dev = valid.device
    rows = torch.arange(B, device=dev)[:, None]
    src = torch.arange(Lp, device=dev)[None, :] + shift[:, None]  # (B, Lp) source position of each slot
    src = torch.where(src < L, src, L)  # slot L is the appended zero row
    gather_in = (src + rows * (L + 1)).reshape(-1)
    aligned = F.pad(valid, (0, 1)).gather(1, src)  # (B, Lp)
    dst = torch.arange(L, device=dev)[None, :] - shift[:, None]  # (B, L) block-layout slot of each position
    dst = torch.where(dst >= 0, dst, Lp)
    gather_out = (dst + rows * (Lp + 1)).reshape(-1)
    return BlockLayout(L, n_blocks, block_size, aligned, gather_in, gather_out)


# ---- the sparse layer --------------------------------------------------------------------------------------


class BlockCompression(nn.Module):
    """phi: (B, H, nb, bs, dh) blocks -> (B, H, nb, dh) summaries: mean pooling + a learned per-head MLP correction.

    The MLP reads the whole flattened block (bs * dh inputs), so every intra-block position has its own weights:
    that *is* NSA's intra-block position encoding (an added position embedding before a linear layer would only
    add a constant bias). NOTE: NSA's phi is the MLP alone; we add it as a residual on mean pooling with a
    zero-initialised output layer, so compressed attention starts as attention over block means (a random MLP
    would start from meaningless summaries and a random top-k selection) and learns from there.
    """

    def __init__(self, n_heads: int, block_size: int, head_dim: int):
        super().__init__()
        fan_in = block_size * head_dim
        self.w1 = nn.Parameter(torch.randn(n_heads, fan_in, head_dim) / math.sqrt(fan_in))
        self.b1 = nn.Parameter(torch.zeros(n_heads, 1, head_dim))
        self.w2 = nn.Parameter(torch.zeros(n_heads, head_dim, head_dim))
        self.b2 = nn.Parameter(torch.zeros(n_heads, 1, head_dim))

    def forward(self, blocks: Tensor) -> Tensor:
        B, H, nb, bs, dh = blocks.shape
        flat = blocks.transpose(0, 1).reshape(H, B * nb, bs * dh)  # (H, B*nb, bs*dh): one matmul per head
        # mean pooling as a fixed (bs*dh, dh) matrix, so one matmul gives both the MLP's first layer and the mean
        pool = torch.eye(dh, dtype=self.w1.dtype, device=self.w1.device).repeat(bs, 1) / bs
        w = torch.cat([self.w1, pool.expand(H, -1, -1)], dim=2)  # (H, bs*dh, 2dh)
        z = torch.bmm(flat, w)  # (H, B*nb, 2dh)
        hidden = F.gelu(z[..., :dh] + self.b1)  # (H, B*nb, dh)
        out = torch.baddbmm(z[..., dh:] + self.b2, hidden, self.w2)  # mean + MLP correction
        return out.view(H, B, nb, dh).transpose(0, 1)  # (B, H, nb, dh)


class _GatherRows(torch.autograd.Function):
    """``src.index_select(0, rows)`` with a backward that is robust on a busy CPU.

    The backward is a scatter-add of ``grad`` rows into ``src``'s rows. CPU ``index_add_`` runs one parallel region
    per row: fine on an idle machine, 10-30x slower when another process holds a core (measured on the 2-core
    machine of benchmarks/README.md). On CPU we instead multiply by the (n_src, n_rows) 0/1 selection matrix in CSR form
    (one sparse-dense matmul, one parallel region); on GPUs ``index_add_`` (atomics) is the fast path.
    """

    @staticmethod
    def forward(ctx, src: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        ctx.n_src = src.shape[0]
        return src.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        grad = grad.contiguous()
        if grad.device.type != "cpu":
            return grad.new_zeros(ctx.n_src, *grad.shape[1:]).index_add_(0, rows, grad), None
        order = torch.argsort(rows, stable=True)
        crow = F.pad(torch.bincount(rows, minlength=ctx.n_src).cumsum(0), (1, 0))
        ones = grad.new_ones(rows.shape[0])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on CSR @ dense only
            warnings.simplefilter("ignore", UserWarning)
            select = torch.sparse_csr_tensor(crow, order, ones, size=(ctx.n_src, rows.shape[0]))
            out = select @ grad.view(rows.shape[0], -1)
        return out.view(ctx.n_src, *grad.shape[1:]), None


def gather_rows(src: Tensor, rows: Tensor) -> Tensor:
    """Rows ``rows`` of the 2-D ``src`` (differentiable in ``src``)."""
    return _GatherRows.apply(src, rows)


class _WindowBlocks(torch.autograd.Function):
    """(N, nb, bs, dh) -> (N, nb, (nw+1)*bs, dh): row i holds blocks i-nw, ..., i (zeros before block 0).

    One op, so that the backward is one copy and ``nw`` shifted adds instead of the zero-filled full-size gradient
    that each slice of a pad + cat would create.
    """

    @staticmethod
    def forward(ctx, x: Tensor, nw: int) -> Tensor:  # type: ignore[override]
        N, nb, bs, dh = x.shape
        out = x.new_empty(N, nb, nw + 1, bs, dh)
        for m in range(nw + 1):  # slot m holds block i - (nw - m)
            lag = min(nw - m, nb)
            out[:, lag:, m] = x[:, : nb - lag]
            out[:, :lag, m] = 0
        ctx.nw = nw
        return out.view(N, nb, (nw + 1) * bs, dh)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        nw = ctx.nw
        N, nb, wk, dh = grad.shape
        g = grad.reshape(N, nb, nw + 1, wk // (nw + 1), dh)
        out = g[:, :, nw].clone()  # lag 0 covers every block
        for m in range(nw):
            lag = nw - m
            if lag < nb:
                out[:, : nb - lag] += g[:, lag:, m]
        return out, None


def _sdpa(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float) -> Tensor:
    """SDPA with a boolean ``allowed`` mask (True = attend) or an additive float mask (0 / -inf). Callers guarantee
    no row is fully masked (so every backend is NaN-free) and zero the rows they had to give a placeholder key."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


_COMPILED_FLEX = None


def _is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.compile (Dynamo/Inductor), not from running the step."""
    from torch._dynamo import exc as dynamo_exc

    kinds = tuple(k for k in (getattr(dynamo_exc, n, None) for n in ("TorchDynamoException", "BackendCompilerFailed"))
                  if isinstance(k, type))
    return isinstance(exc, kinds) or type(exc).__module__.startswith("torch._inductor")


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask, gqa: bool, compiled: bool) -> Tensor:
    """flex_attention, compiled (the fused kernel; inside a compiled step Dynamo traces it directly) or eager
    (unfused: materialises the scores, for CPU tests)."""
    global _COMPILED_FLEX
    from torch.nn.attention import flex_attention as fa

    if compiled and not torch.compiler.is_compiling():
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(fa.flex_attention, fullgraph=True)
        return _COMPILED_FLEX(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    return fa.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)


class MultiGranularitySparseAttention(nn.Module):
    """Causal NSA-style attention: forward(x (B, L, D), valid (B, L) bool, left-padded) -> (B, L, D)."""

    def __init__(self, config: SparseAttentionConfig):
        super().__init__()
        self.config = config
        D, H = config.d_model, config.n_heads
        self.qkv = nn.Linear(D, 3 * D)
        self.gate = nn.Linear(D, 3 * H)  # one sigmoid gate per (head, branch), from the query's input
        self.out = nn.Linear(D, D)
        # All branch parameters always exist, so weights load into any ablation of the same shape.
        self.compress_k = BlockCompression(H, config.block_size, config.head_dim)
        self.compress_v = BlockCompression(H, config.block_size, config.head_dim)

    # -- branches on the block layout: q, k, v are (B, H, nb, bs, dh), contiguous ---------------------------------

    @property
    def _dropout_p(self) -> float:
        return self.config.dropout if self.training else 0.0

    # Each branch returns (out (B, H, nb, bs, dh), keep): ``keep`` (broadcastable to (B, H, nb, bs, 1)) zeroes
    # the queries that had nothing to attend to and got a placeholder key, or is None. The caller folds it into
    # the gate, so zeroing costs no extra pass over the outputs.

    def _window(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None) -> tuple[Tensor, None]:
        """Each query tile against itself and the previous ``nw`` key tiles, masked to the exact window.

        A tile is ``m`` consecutive blocks (an implementation choice: the window's meaning does not depend on it).
        """
        cfg = self.config
        B, H, nb, bs, dh = q.shape
        dev = q.device
        m = max(1, -(-min(cfg.window, WINDOW_TILE) // bs))  # blocks per query tile
        T = m * bs  # tile length
        nt = -(-nb // m)  # tiles (the last one padded with empty blocks, whose outputs are dropped)
        nw = -(-(cfg.window - 1) // T)  # earlier tiles the window can reach
        wk = (nw + 1) * T

        def tiles(t: Tensor) -> Tensor:  # (B, H, nb, bs, dh) -> (B*H, nt, T, dh)
            t = t.view(B * H, nb, bs, dh)
            if nt * m != nb:
                t = F.pad(t, (0, 0, 0, 0, 0, nt * m - nb))
            return t.view(B * H, nt, T, dh)

        k_win = _WindowBlocks.apply(tiles(k), nw)  # (B*H, nt, wk, dh)
        v_win = _WindowBlocks.apply(tiles(v), nw)
        # query offset r, key slot c: distance = (nw*T + r) - c; inside the window iff 0 <= distance < window
        dist = nw * T + torch.arange(T, device=dev)[:, None] - torch.arange(wk, device=dev)[None, :]
        key_tile = torch.arange(nt, device=dev)[:, None] - nw + torch.arange(wk, device=dev) // T  # (nt, wk)
        allowed = (dist >= 0) & (dist < cfg.window) & (key_tile >= 0)[:, None, :]  # (nt, T, wk)
        if valid is not None:  # some padding: mask padded keys
            key_ok = F.pad(valid, (0, nt * T - nb * bs)).view(B, nt, T)
            key_ok = F.pad(key_ok, (0, 0, nw, 0))  # (B, nw + nt, T)
            key_ok = torch.cat([key_ok[:, j : j + nt] for j in range(nw + 1)], dim=2)  # (B, nt, wk)
            # the diagonal stays on so a padded query's row is never empty (its output is discarded)
            allowed = allowed & (key_ok[:, :, None, :] | (dist == 0))  # (B, nt, T, wk)
        # heads=1, batch=(B, H, nt): the CPU flash kernel's fastest layout (with heads > 1 its backward works on
        # (batch, length, heads, dh) gradient buffers: zero-fills and transposing copies). The mask varies by
        # tile (the first nw tiles lack keys), so it is materialised per problem, directly as the additive float
        # bias SDPA would otherwise build from a boolean mask (in forward and again in backward).
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=dev).masked_fill_(~allowed, float("-inf"))
        bias = bias.view(-1, 1, nt, T, wk).expand(B, H, nt, T, wk).reshape(B * H * nt, 1, T, wk)
        q_w, k_w, v_w = tiles(q).view(-1, 1, T, dh), k_win.view(-1, 1, wk, dh), v_win.view(-1, 1, wk, dh)
        out = _sdpa(q_w, k_w, v_w, bias, self._dropout_p).view(B, H, nt * m, bs, dh)
        if nt * m != nb:
            out = out[:, :, :nb].contiguous()
        return out, None  # padded queries: finite garbage, discarded by the caller

    def _compressed(self, q: Tensor, k_cmp: Tensor, v_cmp: Tensor, block_ok: Tensor | None) -> tuple[Tensor, Tensor]:
        """Every query against the summaries of the complete blocks ending at or before it."""
        B, H, nb, bs, dh = q.shape
        dev = q.device
        # block j is complete at query (i, r) iff j < i, or j == i and r is the block's last position
        n_done = (torch.arange(nb, device=dev)[:, None] + (torch.arange(bs, device=dev) == bs - 1)).view(-1)
        allowed = (torch.arange(nb, device=dev)[None, :] < n_done[:, None])[None, None]  # (1, 1, Lp, nb)
        if block_ok is not None:
            allowed = allowed & block_ok[:, None, None, :]  # (B, 1, Lp, nb)
        has_any = allowed.any(dim=-1, keepdim=True)  # False before the first complete real block
        allowed = allowed | (~has_any & (torch.arange(nb, device=dev) == 0))  # placeholder key, zeroed via keep
        if allowed.shape[0] > 1:  # per-row padding: one mask per (row, head) for the heads=1 layout
            allowed = allowed.expand(B, H, nb * bs, nb).reshape(B * H, 1, nb * bs, nb)
        q_c, k_c, v_c = q.view(B * H, 1, nb * bs, dh), k_cmp.reshape(B * H, 1, nb, dh), v_cmp.reshape(B * H, 1, nb, dh)
        # Causality skips work: the queries of blocks [a, b) see at most the summaries [0, b), so the query range
        # is cut into chunks, each against its key prefix (~half the masked scores of one call at any length).
        # (torch.split, not slicing: the backward of a slice zero-fills a full-size gradient per chunk)
        bounds = torch.linspace(0, nb, min(CMP_CHUNKS, nb) + 1).round().long().tolist()
        sizes = [(b - a) * bs for a, b in zip(bounds[:-1], bounds[1:])]
        outs = [
            _sdpa(q_part, k_c[:, :, :b], v_c[:, :, :b], mask_part[..., :b], self._dropout_p)
            for q_part, mask_part, b in zip(q_c.split(sizes, dim=2), allowed.split(sizes, dim=2), bounds[1:])
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B*H, 1, Lp, dh)
        return out.view(B, H, nb, bs, dh), has_any.view(-1, 1, nb, bs, 1)

    def _groups(self, nb: int) -> tuple[int, int]:
        """(query blocks per selection group, number of groups)."""
        g = min(self.config.group_blocks, nb)
        return g, -(-nb // g)

    def selection(self, q: Tensor, k_cmp: Tensor, block_ok: Tensor | None) -> tuple[Tensor, Tensor]:
        """Top-k past blocks of every query group: (indices, usable), both (B, H, ng, k).

        NOTE: NSA selects per query (shared across a GQA group); here the ``select_group`` consecutive query
        blocks of group i (blocks i*g ... i*g+g-1) share one selection, scored by the compressed-attention logits
        of the last query before the group (position i*g*bs - 1), so no query's selection depends on its future.
        Candidates: complete, real blocks before the group (none for group 0). ``usable`` is False for the slots
        of a row that has fewer than k candidates.
        """
        B, H, nb, bs, dh = q.shape
        g, ng = self._groups(nb)
        k_eff = min(self.config.top_k, max(nb - 1, 1))
        with torch.no_grad():
            first = torch.arange(ng, device=q.device) * g  # (ng,) first block of each group
            q_prev = q[:, :, (first - 1).clamp(min=0), -1]  # (B, H, ng, dh): the query closing block first-1
            logits = torch.matmul(q_prev, k_cmp.transpose(-1, -2)).float()  # (B, H, ng, nb)
            cand = torch.arange(nb, device=q.device)[None, :] < first[:, None]  # (ng, nb): block j before group
            if block_ok is not None:
                cand = cand & block_ok[:, None, None, :]  # (B, 1, ng, nb)
            logits.masked_fill_(~cand, float("-inf"))
            top, idx = logits.topk(k_eff, dim=-1, sorted=False)  # (B, H, ng, k)
        return idx, torch.isfinite(top)

    def _selected(self, q: Tensor, k: Tensor, v: Tensor, k_cmp: Tensor, block_ok: Tensor | None) -> tuple[Tensor, Tensor]:
        """Exact attention inside the selected blocks (all strictly before the group: no causal mask needed)."""
        B, H, nb, bs, dh = q.shape
        g, ng = self._groups(nb)
        idx, usable = self.selection(q, k_cmp, block_ok)
        k_eff = idx.shape[-1]
        # One contiguous (bs*dh) row per selected block: a block gather, not a per-query gather.
        base = (torch.arange(B * H, device=q.device) * nb).view(B, H, 1, 1)
        rows = (base + idx).reshape(-1)  # (B*H*ng*k,)
        # heads=1, batch=(B, H, ng): see _window
        k_sel = gather_rows(k.view(B * H * nb, bs * dh), rows).view(-1, 1, k_eff * bs, dh)  # (B*H*ng, 1, k*bs, dh)
        v_sel = gather_rows(v.view(B * H * nb, bs * dh), rows).view(-1, 1, k_eff * bs, dh)
        has_any = usable.any(dim=-1, keepdim=True)  # (B, H, ng, 1)
        slot_ok = usable.clone()
        slot_ok[..., 0] |= ~has_any[..., 0]  # placeholder key for groups without a usable block, zeroed via keep
        allowed = slot_ok[..., None].expand(B, H, ng, k_eff, bs).reshape(-1, 1, 1, k_eff * bs)
        q_g = q.view(B * H, nb, bs, dh)
        if ng * g != nb:  # the last group is short: pad it with empty query blocks, dropped below
            q_g = F.pad(q_g, (0, 0, 0, 0, 0, ng * g - nb))
        out = _sdpa(q_g.view(-1, 1, g * bs, dh), k_sel, v_sel, allowed, self._dropout_p)
        out = out.view(B, H, ng * g, bs, dh)
        keep = has_any[..., None].expand(B, H, ng, g, 1).reshape(B, H, ng * g, 1, 1)
        if ng * g != nb:
            out, keep = out[:, :, :nb].contiguous(), keep[:, :, :nb]
        return out, keep  # keep: (B, H, nb, 1, 1)

    # -- public ----------------------------------------------------------------------------------------------

    def _run(self, x: Tensor, valid: Tensor) -> tuple[BlockLayout, dict[str, tuple[Tensor, Tensor | None]], Tensor, bool]:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must be (B, L, {cfg.d_model}), got {tuple(x.shape)}")
        B, L, D = x.shape
        check_left_padded(valid, L)
        H, dh, bs = cfg.n_heads, cfg.head_dim, cfg.block_size
        layout = block_layout(valid, bs, align=bs * cfg.group_blocks)
        nb, Lp = layout.n_blocks, layout.padded_length
        xb = layout.to_blocks(x)  # (B, Lp, D)
        qkv = self.qkv(xb).view(B, nb, bs, 3, H, dh).permute(3, 0, 4, 1, 2, 5).contiguous()
        q, k, v = qkv.unbind(0)  # (B, H, nb, bs, dh) each, contiguous
        gates = torch.sigmoid(self.gate(xb)).view(B, Lp, H, 3).permute(3, 0, 2, 1)  # (3, B, H, Lp)
        # None = no padding anywhere (the common benchmark/long-sequence case): static, broadcast masks
        padded = not bool(layout.valid.all())
        key_valid = layout.valid if padded else None
        block_ok = layout.valid.view(B, nb, bs).all(dim=2) if padded else None  # (B, nb): complete, real blocks

        outs: dict[str, tuple[Tensor, Tensor | None]] = {}
        if cfg.use_window:
            outs["window"] = self._window(q, k, v, key_valid)
        if cfg.use_compressed or cfg.use_selected:
            k_cmp = self.compress_k(k)  # (B, H, nb, dh)
            if cfg.use_compressed:
                outs["compressed"] = self._compressed(q, k_cmp, self.compress_v(v), block_ok)
            if cfg.use_selected:
                outs["selected"] = self._selected(q, k, v, k_cmp, block_ok)
        return layout, outs, gates, padded

    def resolved_impl(self, x: Tensor) -> str:
        """The implementation a call on ``x`` runs: ``impl``, with "auto" = "flex" on CUDA unless training with
        attention dropout (flex_attention has none), "block" elsewhere. Depends on the device only (no sync)."""
        impl = self.config.impl
        if impl == "auto":
            dropout = self.training and self.config.dropout > 0
            return "flex" if x.device.type == "cuda" and not dropout else "block"
        return impl

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (B, L, D), valid: (B, L) bool (True = real event, left-padded) -> (B, L, D), zero at padding."""
        impl = self.resolved_impl(x)
        if impl == "flex":
            return self._flex_entry(x, valid)
        if impl == "reference":
            if self.training and self.config.dropout > 0:
                raise ValueError("the reference implementation has no attention dropout: use impl='block' to train")
            return reference_sparse_attention(self, x, valid)
        B, L, D = x.shape
        layout, outs, gates, padded = self._run(x, valid)
        H, nb, bs = self.config.n_heads, layout.n_blocks, layout.block_size
        mixed = None
        for b, name in enumerate(BRANCHES):
            if name not in outs:
                continue  # a disabled branch contributes nothing
            out, keep = outs[name]
            g = gates[b].reshape(B, H, nb, bs, 1)
            if keep is not None:
                g = g * keep.to(g.dtype)
            mixed = out * g if mixed is None else torch.addcmul(mixed, out, g)  # (B, H, nb, bs, dh)
        y = mixed.permute(0, 2, 3, 1, 4).reshape(B, nb * bs, D)  # (B, Lp, H*dh)
        y = self.out(layout.from_blocks(y))  # (B, L, D)
        return y * valid[..., None].to(y.dtype) if padded else y

    # -- the flex_attention path (mufasa.models.sparse_flex) --------------------------------------------------

    # How the flex path runs: "eager" (flex_attention unfused: it materialises the scores; CPU tests), "attention"
    # (only flex_attention compiled: the fused kernel, the rest eager), "step" (the whole layer step compiled,
    # fullgraph: mask construction, selection, gather and gates fused too). None = "step" on CUDA, "eager" else.
    flex_compile: str | None = None
    # Re-check the left padding of ``valid`` in the flex path (a host sync: off by default; the block path
    # always checks).
    flex_check_padding: bool = False

    def _flex_mode(self, x: Tensor) -> str:
        mode = self.flex_compile or ("step" if x.device.type == "cuda" else "eager")
        if mode not in ("eager", "attention", "step"):
            raise ValueError(f"flex_compile must be None, 'eager', 'attention' or 'step', got {mode!r}")
        return mode

    def _flex_entry(self, x: Tensor, valid: Tensor) -> Tensor:
        cfg = self.config
        if self.training and cfg.dropout > 0:
            raise ValueError("impl='flex' has no attention dropout (flex_attention cannot drop probabilities): "
                             "train with dropout 0, or impl='block'/'auto'")
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must be (B, L, {cfg.d_model}), got {tuple(x.shape)}")
        check_left_padded(valid, x.shape[1], content=self.flex_check_padding)
        if x.device.type == "cpu" and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            raise NotImplementedError("impl='flex' on CPU is forward-only (torch has no CPU flex_attention "
                                      "backward): run under torch.no_grad(), or use impl='block'")
        if self._flex_mode(x) == "step" and not torch.compiler.is_compiling():
            step = self.__dict__.get("_flex_step_compiled")
            if step is None:
                step = torch.compile(self._flex_forward, fullgraph=True)
                self.__dict__["_flex_step_compiled"] = step  # not a submodule/parameter: kept out of state_dict
            if self.__dict__.get("_flex_step_ok"):
                return step(x, valid)
            try:  # the first call compiles; a compiler failure falls back to compiling flex_attention alone
                out = step(x, valid)
            except Exception as exc:  # noqa: BLE001
                if not _is_compile_error(exc):
                    raise
                warnings.warn(f"flex path: compiling the whole step failed ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:200]}); compiling flex_attention alone")
                self.flex_compile = "attention"
                return self._flex_forward(x, valid)
            self.__dict__["_flex_step_ok"] = True
            return out
        return self._flex_forward(x, valid)

    def _flex_forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """The whole layer as one flex_attention call; no host synchronisation (see mufasa.models.sparse_flex)."""
        p = self._flex_prepare(x, valid)
        B, L, D = x.shape
        H, dh, geo, Lp, nbr = self.config.n_heads, self.config.head_dim, p["geometry"], p["Lp"], len(p["geometry"].branches)
        out = _flex_attention(p["q"], p["k"], p["v"], p["block_mask"], nbr > 1, self._flex_mode(x) != "eager")
        out = out.view(B, H, nbr, geo.q_len, dh)[:, :, :, :Lp]
        mixed = None
        for r, name in enumerate(geo.branches):
            term = out[:, :, r] * p["gates"][BRANCHES.index(name)][..., None]  # (B, H, Lp, dh)
            mixed = term if mixed is None else mixed + term
        y = mixed.transpose(1, 2).reshape(B, Lp, D)
        y = F.pad(y, (0, 0, 0, 1)).reshape(B * (Lp + 1), D).index_select(0, p["gather_out"]).view(B, L, D)
        return self.out(y) * valid[..., None].to(y.dtype)

    @torch.no_grad()
    def flex_block_mask(self, x: Tensor, valid: Tensor) -> dict:
        """What the flex path attends with, for tests and diagnostics: ``block_mask`` (BlockMask, query heads
        ``h * n_branches + r``), ``geometry`` (:class:`~mufasa.models.sparse_flex.FlexGeometry`), and the
        selection it was built from, ``indices``/``usable`` (B, H, ng, k) as :meth:`selection` returns them."""
        check_left_padded(valid, x.shape[1])
        p = self._flex_prepare(x, valid)
        return {key: p[key] for key in ("block_mask", "geometry", "indices", "usable", "first", "end")}

    def _flex_prepare(self, x: Tensor, valid: Tensor) -> dict:
        """Block layout, projections, gates, selection and the BlockMask of the flex call (no host sync)."""
        from mufasa.models import sparse_flex

        cfg = self.config
        B, L, D = x.shape
        H, dh, bs = cfg.n_heads, cfg.head_dim, cfg.block_size
        align = bs * cfg.group_blocks
        layout = block_layout(valid, bs, align=align, always_gather=True)
        nb, Lp = layout.n_blocks, layout.padded_length
        g, _ = self._groups(nb)
        branches = tuple(name for name, on in zip(BRANCHES, cfg.enabled) if on)
        geo = sparse_flex.flex_geometry(branches, bs, g, cfg.window, nb)
        # plain index_select gathers (autograd: index_add backward), traceable by torch.compile
        xb = F.pad(x, (0, 0, 0, 1)).reshape(B * (L + 1), D).index_select(0, layout.gather_in).view(B, Lp, D)
        qkv = self.qkv(xb).view(B, nb, bs, 3, H, dh).permute(3, 0, 4, 1, 2, 5).contiguous()
        q, k, v = qkv.unbind(0)  # (B, H, nb, bs, dh)
        gates = torch.sigmoid(self.gate(xb)).view(B, Lp, H, 3).permute(3, 0, 2, 1)  # (3, B, H, Lp)
        n_real = valid.sum(1)
        first = (L - n_real) - (L - n_real) % align  # (B,) block-layout slots of the real events: [first, end)
        end = L - (L - n_real) % align
        block_ok = layout.valid.view(B, nb, bs).all(dim=2)  # (B, nb): complete, real blocks
        selected = idx = usable = None
        if cfg.use_compressed or cfg.use_selected:
            k_cmp = self.compress_k(k)  # (B, H, nb, dh)
            if cfg.use_selected:
                idx, usable = self.selection(q, k_cmp, block_ok)  # (B, H, ng, k): exactly the block path's
                selected = torch.zeros(B, H, idx.shape[2], nb, dtype=torch.bool, device=x.device)
                selected.scatter_(-1, idx, usable)
        nbr = len(branches)
        q_t = F.pad(q.view(B, H, Lp, dh), (0, 0, 0, geo.q_len - Lp))
        q_t = q_t[:, :, None].expand(B, H, nbr, geo.q_len, dh).reshape(B, H * nbr, geo.q_len, dh)
        k_t = F.pad(k.view(B, H, Lp, dh), (0, 0, 0, geo.tok_len - Lp))
        v_t = F.pad(v.view(B, H, Lp, dh), (0, 0, 0, geo.tok_len - Lp))
        if cfg.use_compressed:
            n_cmp = geo.n_cmp_blocks * geo.kv_block - nb
            k_t = torch.cat([k_t, F.pad(k_cmp, (0, 0, 0, n_cmp))], dim=2)
            v_t = torch.cat([v_t, F.pad(self.compress_v(v), (0, 0, 0, n_cmp))], dim=2)
        block_mask = sparse_flex.build_block_mask(geo, first, end, selected, H)
        return {"q": q_t, "k": k_t, "v": v_t, "block_mask": block_mask, "geometry": geo, "gates": gates, "Lp": Lp,
                "gather_out": layout.gather_out, "indices": idx, "usable": usable, "first": first, "end": end}

    def branch_outputs(self, x: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Each enabled branch alone, in the caller's layout, for tests and diagnostics.

        Returns ``q``, ``k``, ``v`` (B, H, L, dh) as the branches saw them, one (B, H, L, dh) output
        per enabled branch (before gating and the output projection; zero at padding), and ``gates``
        (B, H, L, 3) in :data:`BRANCHES` order with disabled branches' columns zero.
        """
        B, L, D = x.shape
        cfg = self.config
        H, dh = cfg.n_heads, cfg.head_dim
        layout, outs, gates, _ = self._run(x, valid)
        nb, bs = layout.n_blocks, layout.block_size
        qkv = self.qkv(x).view(B, L, 3, H, dh).permute(2, 0, 3, 1, 4)  # (3, B, H, L, dh)
        keep = valid[:, None, :, None]

        def unblock(t: Tensor) -> Tensor:  # (B, H, nb, bs, dh) -> (B, H, L, dh)
            y = layout.from_blocks(t.permute(0, 2, 3, 1, 4).reshape(B, nb * bs, H * dh))
            return y.view(B, L, H, dh).transpose(1, 2) * keep.to(y.dtype)

        result = {"q": qkv[0], "k": qkv[1], "v": qkv[2]}
        for name, (out, zero_mask) in outs.items():
            result[name] = unblock(out if zero_mask is None else out * zero_mask.to(out.dtype))
        g = layout.from_blocks(gates.permute(1, 3, 2, 0).reshape(B, nb * bs, H * 3)).view(B, L, H, 3).transpose(1, 2)
        result["gates"] = g * torch.tensor(cfg.enabled, dtype=g.dtype, device=g.device)
        return result


    @torch.no_grad()
    def explain_last(self, x: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Why the last position of each row (where the next item is predicted) attends where it does.

        Returns, per row and head, the ``top_k`` past blocks the selection branch chose for that position's query
        group (:meth:`selection`): ``block_start`` / ``block_end`` (B, H, k) long, the blocks' event positions in
        the caller's layout (end exclusive; -1 for a slot with no usable block), ``block_weight`` (B, H, k) the
        blocks' share of the softmax of the selection logits over all candidate blocks, and ``gates`` (B, H, 3)
        the branch gates at that position in :data:`BRANCHES` order (zero for a disabled branch).
        """
        cfg = self.config
        B, L, D = x.shape
        check_left_padded(valid, L)
        H, dh, bs = cfg.n_heads, cfg.head_dim, cfg.block_size
        layout = block_layout(valid, bs, align=bs * cfg.group_blocks)
        nb = layout.n_blocks
        xb = layout.to_blocks(x)
        qkv = self.qkv(xb).view(B, nb, bs, 3, H, dh).permute(3, 0, 4, 1, 2, 5).contiguous()
        q, k, _ = qkv.unbind(0)
        k_cmp = self.compress_k(k)  # (B, H, nb, dh)
        shift = (L - valid.sum(1)) % (bs * cfg.group_blocks)  # (B,) the layout's left shift of each row
        last = (L - 1) - shift  # (B,) block-layout slot of the last event
        g, _ = self._groups(nb)
        first = (last // bs) // g * g  # (B,) first block of the last position's query group
        rows = torch.arange(B, device=x.device)
        q_prev = q[rows, :, (first - 1).clamp(min=0), -1]  # (B, H, dh): the query closing the block before
        logits = torch.einsum("bhd,bhnd->bhn", q_prev, k_cmp).float()  # (B, H, nb)
        block_ok = layout.valid.view(B, nb, bs).all(dim=2)  # complete, real blocks
        cand = (torch.arange(nb, device=x.device)[None, :] < first[:, None]) & block_ok  # (B, nb)
        logits = logits.masked_fill(~cand[:, None, :], float("-inf"))
        k_eff = min(cfg.top_k, max(nb - 1, 1))
        top, idx = logits.topk(k_eff, dim=-1)  # (B, H, k), best first
        usable = torch.isfinite(top)
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0).gather(-1, idx)
        start = idx * bs + shift[:, None, None]
        gates = torch.sigmoid(self.gate(xb[rows, last])).view(B, H, 3)
        gates = gates * torch.tensor(cfg.enabled, dtype=gates.dtype, device=gates.device)
        return {
            "block_start": torch.where(usable, start, -1),
            "block_end": torch.where(usable, start + bs, -1),
            "block_weight": torch.where(usable, weights, 0.0),
            "gates": gates,
        }


class DenseCausalAttention(nn.Module):
    """SASRec-style dense causal self-attention (SDPA) with the same interface: the baseline and ablation."""

    def __init__(self, config: SparseAttentionConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        B, L, D = x.shape
        check_left_padded(valid, L)
        H, dh = self.config.n_heads, self.config.head_dim
        q, k, v = self.qkv(x).view(B, L, 3, H, dh).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, dh) each
        p = self.config.dropout if self.training else 0.0
        y = dense_causal_attention(q, k, v, valid, dropout_p=p).transpose(1, 2).reshape(B, L, D)
        return self.out(y) * valid[..., None].to(y.dtype)


# ---- the readable reference of the whole layer -------------------------------------------------------------


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v over the ``allowed`` (.., Lq, Lk) keys; a query with none gets zeros."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    return probs @ v


def reference_sparse_attention(module: MultiGranularitySparseAttention, x: Tensor, valid: Tensor) -> Tensor:
    """The whole layer written as the paper reads, one row at a time with (n, n) masks: O(L^2), for tests.

    Same parameters, same result (outputs and gradients) as ``module(x, valid)`` in eval mode; no dropout.
    For each row, on its n real events (positions t, s count from the first real event; block j = events
    [j*bs, (j+1)*bs); only complete blocks are summarised or selected):

      window      o_win[t]  = attn(q_t, {k_s : 0 <= t - s < window})
      compressed  o_cmp[t]  = attn(q_t, {phi_k(block j) : block j ends at or before t})
      selected    group i = query blocks [i*g, (i+1)*g); its top_k blocks j < i*g by q_{i*g*bs-1} . phi_k(block j)
                  o_sel[t]  = attn(q_t, {k_s : s in the selected blocks of t's group})
      output      y[t] = W_o concat_h( sum_b sigmoid(gate(x_t))_{h,b} * o_b[t] )   (an empty branch gives 0)
    """
    cfg = module.config
    B, L, D = x.shape
    check_left_padded(valid, L)
    H, dh, bs = cfg.n_heads, cfg.head_dim, cfg.block_size
    n_blocks_batch = max(1, -(-L // bs))  # the batch's block count caps the group size and k, as in the fast path
    g = min(cfg.group_blocks, n_blocks_batch)
    top_k = min(cfg.top_k, max(n_blocks_batch - 1, 1))
    out = torch.zeros_like(x)
    for b in range(B):
        xr = x[b, valid[b]]  # (n, D): the row's real events
        n = xr.shape[0]
        if n == 0:
            continue
        q, k, v = module.qkv(xr).view(n, 3, H, dh).permute(1, 2, 0, 3).unbind(0)  # (H, n, dh) each
        gates = torch.sigmoid(module.gate(xr)).view(n, H, 3).permute(1, 0, 2)  # (H, n, 3)
        t = torch.arange(n, device=x.device)
        nb = n // bs  # complete blocks
        phi_k = module.compress_k(k[None, :, : nb * bs].reshape(1, H, nb, bs, dh))[0]  # (H, nb, dh)
        phi_v = module.compress_v(v[None, :, : nb * bs].reshape(1, H, nb, bs, dh))[0]
        branches = {}
        if cfg.use_window:
            dist = t[:, None] - t[None, :]
            branches["window"] = _masked_attention(q, k, v, (dist >= 0) & (dist < cfg.window))
        if cfg.use_compressed:
            block_end = torch.arange(nb, device=x.device) * bs + bs - 1
            branches["compressed"] = _masked_attention(q, phi_k, phi_v, block_end[None, :] <= t[:, None])
        if cfg.use_selected:
            chosen = torch.zeros(H, n, n, dtype=torch.bool, device=x.device)  # (H, query, key)
            for first in range(g, nb + 1, g):  # group of query blocks [first, first + g): blocks before it complete
                if first * bs >= n:
                    break
                with torch.no_grad():
                    scores = (q[:, first * bs - 1, None] @ phi_k[:, :first].transpose(-1, -2))[:, 0]  # (H, first)
                    picked = scores.topk(min(top_k, first), dim=-1).indices  # (H, <= top_k)
                for h in range(H):
                    for j in picked[h].tolist():
                        chosen[h, first * bs : (first + g) * bs, j * bs : (j + 1) * bs] = True
            branches["selected"] = _masked_attention(q, k, v, chosen)
        mixed = sum(gates[..., BRANCHES.index(name), None] * o for name, o in branches.items())  # (H, n, dh)
        out[b, valid[b]] = module.out(mixed.transpose(0, 1).reshape(n, D))
    return out
