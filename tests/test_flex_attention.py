"""The flex_attention path of the sparse layer (``impl="flex"``, mufasa.models.sparse_flex) against the block path.

On CPU (torch 2.13): flex_attention runs forward only (no CPU backward), eagerly unfused (it materialises the
scores and applies ``mask_mod`` everywhere, ignoring the BlockMask's sparsity) or compiled by inductor's C++
template (which does visit only the BlockMask's blocks). So the CPU checks are: the BlockMask is exactly the
block image of ``mask_mod`` (what ``create_block_mask`` builds) and holds the window's blocks plus the blocks
:meth:`selection` picks; eager forward == block path in float64 (checks ``mask_mod``); compiled forward == block
path in float32 (checks the BlockMask as the kernel uses it). Gradients, the Triton kernel and the absence of
host syncs are checked on CUDA (skipped without one).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from mufasa.models import sparse_flex
from mufasa.models.sparse_attention import MultiGranularitySparseAttention, SparseAttentionConfig

from torch_devices import exact_single_thread  # tests/torch_devices.py

_one_thread = pytest.fixture(autouse=True)(exact_single_thread)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
ALL = ("window", "compressed", "selected")

# (config overrides, L, left pads): the shipped shape (window 64, blocks of 32, top-4, groups of 2) and small ones
# with odd sizes (blocks of 4/5/8, groups of 1/3, BlockMask tiles that are lcm's, one branch off)
CASES = [
    pytest.param({}, 700, [0, 100, 430, 699], id="shipped-700"),
    pytest.param({}, 256, [0, 0], id="shipped-256-nopad"),
    pytest.param({"window": 16, "block_size": 4, "top_k": 3}, 200, [0, 5, 64, 199], id="bs4"),
    pytest.param({"window": 40, "block_size": 8, "top_k": 2, "select_group": 3}, 300, [0, 33, 170], id="bs8-g3"),
    pytest.param({"window": 7, "block_size": 5, "top_k": 2, "use_compressed": False}, 131, [0, 3], id="bs5-no-cmp"),
    pytest.param({"window": 7, "block_size": 5, "top_k": 2, "use_window": False}, 131, [0, 12], id="bs5-no-win"),
    pytest.param({"window": 200, "block_size": 16, "top_k": 1, "use_selected": False}, 520, [0, 77], id="w200-no-sel"),
]


def make_pair(seed: int = 0, dtype=torch.float64, d_model: int = 16, **overrides):
    """(block module, flex module) with the same weights; gates spread and the compression MLPs nonzero, so a
    wrong gate, branch or summary cannot hide."""
    torch.manual_seed(seed)
    cfg = SparseAttentionConfig(**{"d_model": d_model, "n_heads": 2, **overrides})
    block = MultiGranularitySparseAttention(cfg).to(dtype).eval()
    with torch.no_grad():
        block.gate.bias.uniform_(-2.0, 2.0)
        for comp in (block.compress_k, block.compress_v):
            comp.w2.normal_(0.0, 0.3)
    flex = MultiGranularitySparseAttention(dataclasses.replace(cfg, impl="flex")).to(dtype).eval()
    flex.load_state_dict(block.state_dict())
    return block, flex


def make_batch(seed: int, L: int, pads: list[int], d_model: int = 16, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(pads), L, d_model, dtype=dtype, generator=gen)
    valid = torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]
    return x.to(device), valid.to(device)


def kv_sets(num: torch.Tensor, idx: torch.Tensor) -> list:
    """Per (row, head, query block) the set of key blocks a BlockMask lists (entries past the count ignored)."""
    B, H, nq = num.shape
    return [[[set(idx[b, h, i, : num[b, h, i]].tolist()) for i in range(nq)] for h in range(H)] for b in range(B)]


# ---- the BlockMask --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branches", [ALL, ("window",), ("compressed", "selected"), ("window", "selected")])
@pytest.mark.parametrize(
    "bs,g,window,L,pads",
    [(32, 2, 64, 1000, [0, 100, 640, 999]), (4, 2, 16, 300, [0, 5, 64, 299]), (8, 3, 40, 500, [0, 33, 200]),
     (5, 1, 7, 400, [0, 3]), (32, 2, 200, 1500, [0, 70, 1300]), (16, 4, 64, 640, [0, 0])],
)
def test_block_mask_is_the_exact_block_image_of_the_mask_mod(branches, bs, g, window, L, pads):
    """Closed forms (window, compressed) and block reductions (selected) == create_block_mask(mask_mod): full
    blocks exactly where every pair is allowed, partial where some are, the q-side (backward) lists too."""
    from torch.nn.attention.flex_attention import create_block_mask

    torch.manual_seed(bs * 1000 + L)
    B, H, align = len(pads), 2, bs * g
    nb = -(-L // bs)
    n = torch.tensor([L - p for p in pads])
    first, end = (L - n) - (L - n) % align, L - (L - n) % align
    geo = sparse_flex.flex_geometry(branches, bs, g, window, nb)
    selected = None
    if "selected" in branches:  # random, plus the first two key tiles selected by every group: full tiles occur
        selected = torch.rand(B, H, geo.n_groups, nb) < 0.3
        selected[..., : 2 * geo.kv_block // bs] = True
    mine = sparse_flex.build_block_mask(geo, first, end, selected, H)
    ref = create_block_mask(mine.mask_mod, B, H * len(branches), geo.q_len, geo.kv_len, device="cpu",
                            BLOCK_SIZE=(geo.q_block, geo.kv_block))
    assert kv_sets(mine.kv_num_blocks, mine.kv_indices) == kv_sets(ref.kv_num_blocks, ref.kv_indices)
    assert kv_sets(mine.full_kv_num_blocks, mine.full_kv_indices) == kv_sets(ref.full_kv_num_blocks, ref.full_kv_indices)
    assert kv_sets(mine.q_num_blocks, mine.q_indices) == kv_sets(ref.q_num_blocks, ref.q_indices)
    assert kv_sets(mine.full_q_num_blocks, mine.full_q_indices) == kv_sets(ref.full_q_num_blocks, ref.full_q_indices)
    assert int(mine.kv_num_blocks.sum()) > 0
    assert int(mine.full_kv_num_blocks.sum()) > 0 or "selected" not in branches


@pytest.mark.parametrize("pads", [[0, 0, 0], [0, 64, 333], [0, 31, 700]])
@pytest.mark.parametrize("seed", [0, 1])
def test_block_mask_holds_the_window_blocks_plus_the_blocks_selection_picks(pads, seed):
    """Shipped shape (window 64, blocks of 32, groups of 2 -> 64 x 64 BlockMask tiles): per (row, head, query
    block i) the window head lists key tiles {i-1, i} (those holding a real key), the selected head exactly the
    tiles j // 2 of the usable blocks ``selection()`` returned (the same call: same tie handling), and the
    compressed head the summary tiles of the complete real blocks before the group's end."""
    block, flex = make_pair(seed, d_model=64)
    L = 1024
    x, valid = make_batch(seed, L, pads, d_model=64)
    # ties: duplicate some key blocks so equal compressed scores occur (top-k must break them as the block path)
    x[:, 64:96] = x[:, 128:160]
    plan = flex.flex_block_mask(x, valid)
    geo, bm = plan["geometry"], plan["block_mask"]
    assert (geo.q_block, geo.kv_block) == (64, 64) and geo.branches == ALL
    partial, full = kv_sets(bm.kv_num_blocks, bm.kv_indices), kv_sets(bm.full_kv_num_blocks, bm.full_kv_indices)
    # the block path's own selection on the same input
    nb, H, bs = geo.n_blocks, 2, 32
    B = len(pads)
    from mufasa.models.sparse_attention import block_layout

    layout = block_layout(valid, bs, align=64)
    with torch.no_grad():
        xb = layout.to_blocks(x)
        q, k, _ = block.qkv(xb).view(B, nb, bs, 3, H, 32).permute(3, 0, 4, 1, 2, 5).contiguous().unbind(0)
        idx, usable = block.selection(q, block.compress_k(k), layout.valid.view(B, nb, bs).all(dim=2))
    assert torch.equal(idx, plan["indices"]) and torch.equal(usable, plan["usable"])
    for b in range(B):
        first, end = int(plan["first"][b]), int(plan["end"][b])
        for h in range(H):
            for i in range(geo.n_q_blocks):
                union = lambda r: partial[b][h * 3 + r][i] | full[b][h * 3 + r][i]  # noqa: E731
                # tile t holds real keys [max(64t, first), min(64t + 63, end - 1)]; the group's windows span
                # [64i - 63, 64i + 63]
                win = {t for t in (i - 1, i) if t >= 0 and max(64 * t, first) <= min(64 * t + 63, end - 1)
                       and min(64 * t + 63, end - 1) >= 64 * i - 63}
                assert union(0) == win, (b, h, i)
                sel = {int(j) // 2 for j, ok in zip(idx[b, h, i], usable[b, h, i]) if ok}
                assert union(2) == sel, (b, h, i)
                assert full[b][h * 3 + 2][i] == {t for t in sel if all(
                    bool(((idx[b, h, i] == j) & usable[b, h, i]).any()) for j in (2 * t, 2 * t + 1))}
                done = (i + 1) * 2  # summaries the group's last query may see: blocks [first/32, min(done, end//32))
                cmp = {geo.n_tok_blocks + c // 64 for c in range(first // 32, min(done, end // 32))}
                assert union(1) == cmp, (b, h, i)


# ---- forward parity on CPU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,L,pads", CASES)
def test_flex_forward_equals_the_block_path_float64_eager(overrides, L, pads):
    block, flex = make_pair(1, **overrides)
    x, valid = make_batch(2, L, pads)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": on purpose here
        want, got = block(x, valid), flex(x, valid)
    assert torch.allclose(got, want, rtol=0, atol=1e-12), float((got - want).abs().max())
    assert torch.all(got[~valid] == 0)


def test_flex_forward_compiled_on_cpu_equals_the_block_path_float32(tmp_path, monkeypatch):
    """inductor's C++ flex template visits only the BlockMask's blocks (full ones without mask_mod): a wrong
    BlockMask shows here even where the mask_mod is right. ~30 s of compilation on a 2-core machine."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    block, flex = make_pair(3, dtype=torch.float32, d_model=64)
    flex.flex_compile = "attention"  # flex_attention alone compiled (the whole step does not lower on CPU)
    x, valid = make_batch(4, 512, [0, 40, 300], d_model=64, dtype=torch.float32)
    with torch.no_grad():
        want, got = block(x, valid), flex(x, valid)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())


def test_a_wrong_block_mask_changes_the_compiled_output(tmp_path, monkeypatch):
    """The compiled-CPU parity test can fail: dropping the selected head's full blocks changes the output."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    block, flex = make_pair(3, dtype=torch.float32, d_model=64)
    x, valid = make_batch(4, 512, [0, 40, 300], d_model=64, dtype=torch.float32)
    with torch.no_grad():
        p = flex._flex_prepare(x, valid)
        bm = p["block_mask"]
        no_full = torch.zeros_like(bm.full_kv_num_blocks)
        broken = BlockMask(bm.seq_lengths, bm.kv_num_blocks, bm.kv_indices, no_full, bm.full_kv_indices,
                           bm.q_num_blocks, bm.q_indices, torch.zeros_like(bm.full_q_num_blocks), bm.full_q_indices,
                           BLOCK_SIZE=bm.BLOCK_SIZE, mask_mod=bm.mask_mod)
        fn = torch.compile(flex_attention)
        good = fn(p["q"], p["k"], p["v"], block_mask=bm, enable_gqa=True)
        bad = fn(p["q"], p["k"], p["v"], block_mask=broken, enable_gqa=True)
    assert (good - bad).abs().max() > 1e-3


# ---- configuration ----------------------------------------------------------------------------------------------


def test_impl_choice_auto_is_block_on_cpu_and_flex_refuses_what_it_cannot_do():
    cfg = SparseAttentionConfig(d_model=16, n_heads=2)
    auto = MultiGranularitySparseAttention(dataclasses.replace(cfg, impl="auto"))
    x, valid = make_batch(0, 64, [0, 3], dtype=torch.float32)
    assert auto.resolved_impl(x) == "block"
    if torch.cuda.is_available():
        assert auto.resolved_impl(x.cuda()) == "flex"
        dropping = MultiGranularitySparseAttention(dataclasses.replace(cfg, impl="auto", dropout=0.1)).train()
        assert dropping.resolved_impl(x.cuda()) == "block" and dropping.eval().resolved_impl(x.cuda()) == "flex"
    with pytest.raises(ValueError, match="no attention dropout"):
        SparseAttentionConfig(impl="flex", dropout=0.1)
    with pytest.raises(ValueError, match="impl must be one of"):
        SparseAttentionConfig(impl="triton")
    flex = MultiGranularitySparseAttention(dataclasses.replace(cfg, impl="flex"))
    with pytest.raises(NotImplementedError, match="forward-only"):
        flex(x, valid)  # CPU with gradients: torch has no CPU flex backward


def test_sal_config_and_params_accept_the_flex_choices_strictly():
    from mufasa.models.sal import SALConfig

    assert SALConfig(n_items=5).attention_impl == "block"  # the shipped default is unchanged
    assert SALConfig(n_items=5, attention_impl="auto", attn_dropout=0.2).attention_config.impl == "auto"
    with pytest.raises(ValueError, match="no attention dropout"):
        SALConfig(n_items=5, attention_impl="flex", attn_dropout=0.2)
    pytest.importorskip("pydantic")
    from mufasa.pipeline.params import ParamsError, parse_params

    def parse(impl, attn_dropout=0.0):
        return parse_params({"train_sal": {"model": {"attention_impl": impl, "attn_dropout": attn_dropout}}})

    assert parse("flex").train_sal.model.attention_impl == "flex"
    assert parse("auto", 0.2).train_sal.model.attention_impl == "auto"
    with pytest.raises(ParamsError, match="attention_impl"):
        parse("triton")
    with pytest.raises(ParamsError, match="no attention dropout"):
        parse("flex", 0.2)


# ---- CUDA -------------------------------------------------------------------------------------------------------


def _cuda_case(dtype, L, pads, mode, seed=0):
    block, flex = make_pair(seed, dtype=torch.float64, d_model=64)
    flex = flex.to(device="cuda", dtype=dtype)
    flex.flex_compile = mode
    block = block.cuda()
    x, valid = make_batch(seed + 1, L, pads, d_model=64, device="cuda")
    outs, grads = [], []
    for module, xx in ((block, x), (flex, x.to(dtype))):
        xx = xx.detach().clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        out = module(xx, valid)
        (out.double() * torch.linspace(-1, 1, out.shape[-1], device="cuda", dtype=torch.float64)).square().sum().backward()
        outs.append(out.double())
        grads.append([xx.grad.double()] + [p.grad.double() for p in module.parameters()])
    return outs, grads


@CUDA
@pytest.mark.parametrize(  # each case compiles fwd+bwd once (~20-40 s): three cases cover modes, dtypes, lengths
    "mode,dtype,tol,L,pads",
    [("step", torch.float32, 2e-4, 700, [0, 100, 430, 699]),
     ("step", torch.bfloat16, 4e-2, 4096, [0, 1000]),
     ("attention", torch.float32, 2e-4, 4096, [0, 1000])],
)
def test_cuda_flex_forward_and_backward_match_the_float64_block_path(mode, dtype, tol, L, pads):
    torch.backends.cuda.matmul.allow_tf32 = False
    (want, got), (gw, gg) = _cuda_case(dtype, L, pads, mode)
    scale = want.abs().max()
    assert (got - want).abs().max() <= tol * scale, float((got - want).abs().max() / scale)
    for a, b in zip(gg, gw, strict=True):
        s = b.abs().max().clamp(min=1e-12)
        assert (a - b).abs().max() <= 4 * tol * s, float((a - b).abs().max() / s)


@CUDA
@pytest.mark.parametrize("mode", ["step", "attention"])
def test_cuda_flex_step_has_no_host_sync(mode):
    """After warm-up (compilation syncs), one fwd+bwd step under ``set_sync_debug_mode("error")``: any
    synchronising call (``.item()``, ``.tolist()``, ``bool(tensor)``, ``nonzero``, a device->host copy) raises."""
    _, flex = make_pair(0, dtype=torch.float32, d_model=64)
    flex = flex.cuda().train()
    flex.flex_compile = mode
    x, valid = make_batch(1, 2048, [0, 300, 1500, 2047], d_model=64, dtype=torch.float32, device="cuda")
    x.requires_grad_(True)

    def step():
        flex.zero_grad(set_to_none=True)
        flex(x, valid).square().mean().backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    assert flex.flex_compile == mode, "the whole-step compilation fell back to flex_attention alone"
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@CUDA
def test_cuda_sal_with_auto_runs_the_flex_path_when_it_can():
    from mufasa.models.sal import SALConfig, SALModel

    torch.manual_seed(0)
    model = SALModel(SALConfig(n_items=50, max_len=512, attention_impl="auto", attn_dropout=0.0)).cuda()
    items = torch.randint(1, 51, (4, 512), device="cuda")
    items[1, :100] = 0
    calls = []
    attn = model.blocks[0].attn
    attn.register_forward_hook(lambda m, args, out: calls.append(m.resolved_impl(args[0])))
    loss = model.calculate_loss(items, None, torch.roll(items, -1, 1) * (items > 0))
    loss.backward()
    assert calls == ["flex"] and torch.isfinite(loss)
