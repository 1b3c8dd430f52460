"""The ``flex_attention`` form of :class:`~mufasa.models.sparse_attention.MultiGranularitySparseAttention`.

All three branches run as ONE ``torch.nn.attention.flex_attention`` call, with the branch as a query head:

- queries: the block-layout queries (B, H, Lp, dh), repeated once per enabled branch as query heads
  ``h * n_branches + r`` (r = the branch's rank among the enabled ones; ``enable_gqa`` maps the ``n_branches``
  query heads of a head onto its key/value head);
- keys/values: the tokens (B, H, Lk, dh), followed (when the compressed branch is on) by the block summaries
  ``phi_k``/``phi_v`` (B, H, nb -> padded, dh);
- ``mask_mod`` (exact, per token): branch "window" sees tokens ``0 <= q - kv < window`` that are real;
  "selected" sees the tokens of the blocks :meth:`selection` picked for the query's group (a (B, H, groups,
  blocks) table built on the device by one scatter); "compressed" sees the summaries of the complete real
  blocks that end at or before the query. No ``score_mod``.
- ``BlockMask`` (B, H * n_branches, query blocks, key blocks), built on the device from closed forms (window,
  compressed) and block-level reductions of the selection table (selected): per (row, head, branch, query
  block) ``full_kv_indices`` = key blocks the mask allows entirely (no mask_mod evaluated there),
  ``kv_indices`` = key blocks it allows in part. It is the exact block image of ``mask_mod``: what
  ``create_block_mask(mask_mod, ...)`` would build, without an element-level pass (tests compare the two).

Why one call with the branch as a head, not one call over the union of the window and selected keys: the
branches are gated per (token, head) AFTER each branch's own softmax, ``g_win * softmax_W(.) V + g_sel *
softmax_S(.) V``, which a softmax over the union cannot give (it normalises both sets together). Separate heads
give each branch its own softmax, exactly as the block path, in one kernel launch (forward and backward); the
cost is the same as separate calls (each head only visits its own blocks).

Granularity. BlockMask blocks are ``QB = lcm(select_group * block_size, FLEX_TILE)`` queries by ``KB =
lcm(block_size, FLEX_TILE)`` keys (64 x 64 at the shipped 2 x 32 groups and blocks of 32). 64: the default
Triton tiles of flex_attention (torch 2.13: forward BLOCK_M/BLOCK_N 64 for head_dim 32; backward 64 on sm90 in
bf16) must divide the sparse block sizes, and inductor filters the backward tile configs on its defaults before
``kernel_options`` apply, so 32-key blocks fail to compile the backward on an H100/H200 in bf16 unless
max-autotune is on. The price: a selected 32-event block shares its 64-key tile with a neighbour, so the
selected branch touches up to 2 x top_k x 32 keys (masked exactly by ``mask_mod``), the window 128 keys per 64
queries (as the CPU block path's tiles).

No host synchronisation: every quantity is a device tensor or a Python int derived from shapes; no ``.item()``,
``.tolist()``, ``bool(tensor)`` or data-dependent branch. Left padding is not re-validated here (that needs a
sync); rows must be left-padded as everywhere in this package (``valid = items > 0`` of left-padded items).

Precision/semantics notes: a query with nothing to attend to in a branch (before the first complete block,
groups without a usable selection, padding) gets 0 from flex_attention (fully masked rows are zero, their
gradient too), which equals the block path's placeholder-key-then-zero. flex_attention has no attention dropout:
the flex path refuses to train with ``dropout > 0`` (``impl="auto"`` falls back to the block path then).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FLEX_TILE", "FlexGeometry", "block_level_masks", "build_block_mask", "flex_geometry", "ordered"]

# Sparse block sizes are multiples of this (see the module docstring: the default flex_attention tiles).
FLEX_TILE = 64


@dataclass(frozen=True)
class FlexGeometry:
    """Shapes of one flex call (all Python ints: they depend on the batch's shape only)."""

    branches: tuple[str, ...]  # enabled branches, in BRANCHES order; query head h * len(branches) + r is branch r
    block_size: int
    group: int  # query blocks per selection group
    window: int
    n_blocks: int  # nb (block layout)
    n_groups: int  # ng
    q_block: int  # QB: queries per BlockMask row block (a multiple of group * block_size)
    kv_block: int  # KB: keys per BlockMask column block (a multiple of block_size)
    n_q_blocks: int
    n_tok_blocks: int  # key blocks over the tokens
    n_cmp_blocks: int  # key blocks over the summaries (0 when the compressed branch is off)

    @property
    def q_len(self) -> int:
        return self.n_q_blocks * self.q_block

    @property
    def tok_len(self) -> int:  # Lk: tokens, padded to whole key blocks
        return self.n_tok_blocks * self.kv_block

    @property
    def kv_len(self) -> int:
        return (self.n_tok_blocks + self.n_cmp_blocks) * self.kv_block

    @property
    def n_kv_blocks(self) -> int:
        return self.n_tok_blocks + self.n_cmp_blocks


def flex_geometry(
    branches: tuple[str, ...], block_size: int, group: int, window: int, n_blocks: int, tile: int = FLEX_TILE
) -> FlexGeometry:
    bs, g, nb = block_size, group, n_blocks
    ng = -(-nb // g)
    G = g * bs
    QB = math.lcm(G, tile)
    KB = math.lcm(bs, tile)
    Lp = nb * bs
    n_q = -(-ng * G // QB)
    n_tok = -(-Lp // KB)
    n_cmp = -(-nb // KB) if "compressed" in branches else 0
    return FlexGeometry(branches, bs, g, window, nb, ng, QB, KB, n_q, n_tok, n_cmp)


def ordered(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Dense (..., rows, cols) bool -> (counts (..., rows) int32, indices (..., rows, cols) int32): per row the
    True columns in ascending order first (the BlockMask format; entries past the count are unused)."""
    counts = mask.sum(-1, dtype=torch.int32)
    idx = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, idx


def block_level_masks(
    geo: FlexGeometry, first: Tensor, end: Tensor, selected: Tensor | None, n_heads: int
) -> tuple[Tensor, Tensor]:
    """(any, all): (B, H * n_branches, n_q_blocks, n_kv_blocks) bool. ``any``: the BlockMask block holds at
    least one allowed (query, key) pair; ``all``: every pair of it is allowed.

    ``first``, ``end`` (B,): the real events of a row occupy block-layout slots [first, end) (``first`` a
    multiple of the group length); ``selected`` (B, H, ng, nb) bool: block j is selected for group i.
    """
    B = first.shape[0]
    dev = first.device
    bs, W, QB, KB = geo.block_size, geo.window, geo.q_block, geo.kv_block
    nq, nt, nc = geo.n_q_blocks, geo.n_tok_blocks, geo.n_cmp_blocks
    q0 = (torch.arange(nq, device=dev) * QB)[None, :, None]  # (1, nq, 1) first query of the row block
    q1 = q0 + QB - 1
    first_, end_ = first[:, None, None], end[:, None, None]  # (B, 1, 1)
    out_any, out_all = [], []
    for name in geo.branches:
        any_ = torch.zeros(B, n_heads, nq, nt + nc, dtype=torch.bool, device=dev)
        all_ = torch.zeros_like(any_)
        if name == "window":  # keys s with q - W < s <= q, first <= s < end
            s0 = (torch.arange(nt, device=dev) * KB)[None, None, :]  # (1, 1, nt)
            s1 = s0 + KB - 1
            a, c = torch.maximum(s0, first_), torch.minimum(s1, end_ - 1)  # real keys of the block: [a, c]
            win_any = (a <= c) & (a <= q1) & (c >= q0 - W + 1)  # (B, nq, nt): [a, c] meets [q0 - W + 1, q1]
            win_all = (s1 <= q0) & (q1 - s0 <= W - 1) & (s0 >= first_) & (s1 <= end_ - 1)
            any_[..., :nt] = win_any[:, None]
            all_[..., :nt] = win_all[:, None]
        elif name == "compressed":  # summaries c of complete real blocks, c < (q + 1) // bs
            c0 = (torch.arange(nc, device=dev) * KB)[None, None, :]
            c1 = c0 + KB - 1
            ca, cb = first_ // bs, end_ // bs  # complete real blocks: [ca, cb)
            a, e = torch.maximum(c0, ca), torch.minimum(c1, cb - 1)
            cmp_any = (a <= e) & (a < (q1 + 1) // bs)
            cmp_all = (c0 >= ca) & (c1 <= cb - 1) & (c1 < (q0 + 1) // bs)
            any_[..., nt:] = cmp_any[:, None]
            all_[..., nt:] = cmp_all[:, None]
        else:  # selected: block-level reductions of the (group, block) table
            sel = _padded_selection(geo, selected)  # (B, H, nq * m, nt * n)
            m, n = QB // (geo.group * bs), KB // bs
            sel = sel.view(B, n_heads, nq, m, nt, n)
            any_[..., :nt] = sel.any(dim=5).any(dim=3)
            all_[..., :nt] = sel.all(dim=5).all(dim=3)
        out_any.append(any_)
        out_all.append(all_)
    nbr = len(geo.branches)
    stack = lambda ts: torch.stack(ts, dim=2).view(B, n_heads * nbr, nq, nt + nc)  # noqa: E731  head h*nbr + r
    return stack(out_any), stack(out_all)


def _padded_selection(geo: FlexGeometry, selected: Tensor) -> Tensor:
    """(B, H, ng, nb) -> (B, H, n_q_blocks * m, n_tok_blocks * n): groups and blocks padded with False."""
    G = geo.group * geo.block_size
    pad_groups = geo.n_q_blocks * (geo.q_block // G) - geo.n_groups
    pad_blocks = geo.n_tok_blocks * (geo.kv_block // geo.block_size) - geo.n_blocks
    return F.pad(selected, (0, pad_blocks, 0, pad_groups))


def make_mask_mod(
    geo: FlexGeometry, first: Tensor, end: Tensor, selected: Tensor | None
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The exact per-token mask (see the module docstring); ``first``/``end``/``selected`` as in
    :func:`block_level_masks`. Captured tensors are indexed only in range (flex requires it)."""
    nbr = len(geo.branches)
    bs, W, G, Lk = geo.block_size, geo.window, geo.group * geo.block_size, geo.tok_len
    sel = _padded_selection(geo, selected) if "selected" in geo.branches else None

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        r = h % nbr
        is_tok = kv < Lk
        allowed = None
        for rank, name in enumerate(geo.branches):
            if name == "window":
                term = is_tok & (q >= kv) & (q - kv < W) & (kv >= first[b]) & (kv < end[b])
            elif name == "selected":
                blk = torch.minimum(kv, torch.full_like(kv, Lk - 1)) // bs
                term = is_tok & sel[b, h // nbr, q // G, blk]
            else:
                c = kv - Lk
                term = (~is_tok) & (c < (q + 1) // bs) & (c >= first[b] // bs) & (c < end[b] // bs)
            term = term & (r == rank) if nbr > 1 else term
            allowed = term if allowed is None else allowed | term
        return allowed

    return mask_mod


def build_block_mask(geo: FlexGeometry, first: Tensor, end: Tensor, selected: Tensor | None, n_heads: int):
    """The BlockMask of one flex call, built on the device (no host sync): see the module docstring."""
    from torch.nn.attention.flex_attention import BlockMask

    any_, all_ = block_level_masks(geo, first, end, selected, n_heads)
    partial = any_ & ~all_
    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(all_)
    q_num, q_idx = ordered(partial.transpose(-1, -2))
    full_q_num, full_q_idx = ordered(all_.transpose(-1, -2))
    return BlockMask(
        (geo.q_len, geo.kv_len),
        kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx,
        BLOCK_SIZE=(geo.q_block, geo.kv_block),
        mask_mod=make_mask_mod(geo, first, end, selected),
    )
