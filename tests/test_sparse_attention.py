"""Parity, causality, padding and ablation tests of the multi-granularity sparse attention (float64; on CPU, and
on CUDA too when a GPU is present: the ``device`` parameter, whose cuda cases are skipped without one).

What each branch must equal (positions counted from each row's first real event, ``rel(t)``):
- window, window >= L:   dense causal attention (SDPA reference ``dense_causal_attention``);
- window, any window:     attention over keys s with rel(t) - window < rel(s) <= rel(t);
- selected, top_k >= nb:  attention over keys s with rel(s) < bs * floor(rel(t) / bs) (every complete block
                          strictly before the query's block), zero where there is none;
- compressed, fresh weights (MLP correction zero): attention over the block means of k and v of the real blocks
                          j with (j + 1) * bs <= rel(t) + 1 (complete at t), zero where there is none; with
                          block_size 1 that is dense causal attention.
Gradients are compared too (w.r.t. the input and the projection weights). On CUDA the float64 parity tests run
SDPA's math kernel; ``test_low_precision_matches_float64`` checks the float32 / bfloat16 kernels (CUDA only).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mufasa.measure import peak_memory_mb
from mufasa.models.sparse_attention import (
    DenseCausalAttention,
    MultiGranularitySparseAttention,
    SparseAttentionConfig,
    block_layout,
    dense_causal_attention,
)

from torch_devices import DEVICES, exact_single_thread  # tests/torch_devices.py

D, H = 16, 2
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
# Every device case runs the same examples (inputs and weights are drawn on the CPU, then moved).
_one_thread = pytest.fixture(autouse=True)(exact_single_thread)


def make_module(seed: int = 0, device: str = "cpu", **overrides) -> MultiGranularitySparseAttention:
    torch.manual_seed(seed)
    cfg = SparseAttentionConfig(**{"d_model": D, "n_heads": H, **overrides})
    module = MultiGranularitySparseAttention(cfg).double()
    with torch.no_grad():  # gates away from 0.5 everywhere, so a wrong gate cannot hide
        module.gate.bias.uniform_(-2.0, 2.0)
    return module.to(device)


def make_batch(
    seed: int, B: int, L: int, pads: list[int] | None = None, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, dtype=torch.float64, generator=gen)
    if pads is None:
        pads = torch.randint(0, L, (B,), generator=gen).tolist()
        pads[0] = 0  # at least one full row
    valid = torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]
    return x.to(device), valid.to(device)


def masked_reference(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v over ``allowed`` (B, L, L) keys; rows with no allowed key are zero."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, L, L)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v


def relative_positions(valid: torch.Tensor) -> torch.Tensor:
    """(B, L): position counted from the row's first real event (negative on padding)."""
    L = valid.shape[1]
    return torch.arange(L, device=valid.device)[None, :] - (L - valid.sum(1))[:, None]


def assert_parity(module, x, valid, branch: str, reference_fn, params: list[str] = ("qkv.weight",)) -> None:
    """Branch output == reference_fn(q, k, v) at real positions; same for gradients w.r.t. x and ``params``."""
    x = x.clone().requires_grad_(True)
    out = module.branch_outputs(x, valid)
    ref = reference_fn(out["q"], out["k"], out["v"]) * valid[:, None, :, None]
    got = out[branch]
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    weight = torch.randn_like(got)  # a random linear functional of the output
    inputs = [x] + [dict(module.named_parameters())[p] for p in params]
    g_got = torch.autograd.grad((got * weight).sum(), inputs, retain_graph=True)
    g_ref = torch.autograd.grad((ref * weight).sum(), inputs)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 45),  # L
    st.sampled_from([1, 2, 3, 4, 8]),  # block_size
    st.integers(0, 10_000),  # seed
)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(shapes)
def test_window_branch_equals_dense_causal_attention_when_window_covers_the_sequence(device, shape):
    B, L, bs, seed = shape
    module = make_module(seed, device, window=L + 3, block_size=bs)
    x, valid = make_batch(seed, B, L, device=device)
    assert_parity(module, x, valid, "window", lambda q, k, v: dense_causal_attention(q, k, v, valid))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(shapes, st.integers(1, 20))
def test_window_branch_equals_banded_dense_attention(device, shape, window):
    B, L, bs, seed = shape
    module = make_module(seed, device, window=window, block_size=bs)
    x, valid = make_batch(seed, B, L, device=device)
    rel = relative_positions(valid)
    diff = rel[:, :, None] - rel[:, None, :]  # (B, t, s)
    allowed = (diff >= 0) & (diff < window) & valid[:, None, :]
    assert_parity(module, x, valid, "window", lambda q, k, v: masked_reference(q, k, v, allowed))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(shapes)
def test_selected_branch_with_all_blocks_selected_equals_dense_over_complete_past_blocks(device, shape):
    B, L, bs, seed = shape
    module = make_module(seed, device, block_size=bs, top_k=L + 1)
    x, valid = make_batch(seed, B, L, device=device)
    rel = relative_positions(valid)
    span = bs * module.config.group_blocks  # query blocks share selections in groups
    group_start = torch.div(rel, span, rounding_mode="floor") * span  # (B, L) first position of t's group
    allowed = (rel[:, None, :] < group_start[:, :, None]) & valid[:, None, :]
    assert_parity(module, x, valid, "selected", lambda q, k, v: masked_reference(q, k, v, allowed))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(st.integers(1, 3), st.integers(1, 40), st.integers(0, 10_000))
def test_compressed_branch_with_block_size_one_equals_dense_causal_attention(device, B, L, seed):
    module = make_module(seed, device, block_size=1)  # a fresh module's compression of a 1-event block is the event
    x, valid = make_batch(seed, B, L, device=device)
    assert_parity(module, x, valid, "compressed", lambda q, k, v: dense_causal_attention(q, k, v, valid))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(shapes)
def test_compressed_branch_equals_attention_over_complete_block_means(device, shape):
    B, L, bs, seed = shape
    module = make_module(seed, device, block_size=bs)  # fresh: compression = block mean (MLP correction starts at 0)
    x, valid = make_batch(seed, B, L, device=device)
    rel = relative_positions(valid)
    blocks = torch.arange(-(-L // bs), device=device)

    def reference(q, k, v):
        # block j of row b covers rel positions [j*bs, (j+1)*bs); it exists once every position is real
        member = (torch.div(rel, bs, rounding_mode="floor")[:, None, :] == blocks[None, :, None])
        member = member & valid[:, None, :]  # (B, nb, L)
        complete = member.sum(-1) == bs  # (B, nb)
        w = member.double() / bs
        k_mean = torch.einsum("bjs,bhsd->bhjd", w, k)
        v_mean = torch.einsum("bjs,bhsd->bhjd", w, v)
        block_end = (blocks + 1) * bs - 1  # rel position of each block's last event
        allowed = complete[:, None, :] & (block_end[None, None, :] <= rel[:, :, None])  # (B, L, nb)
        scores = q @ k_mean.transpose(-1, -2) * q.shape[-1] ** -0.5
        probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1).nan_to_num(0.0)
        return probs @ v_mean

    assert_parity(module, x, valid, "compressed", reference)


CONFIGS = {
    "all": {},
    "window": {"use_compressed": False, "use_selected": False},
    "compressed": {"use_window": False, "use_selected": False},
    "selected": {"use_window": False, "use_compressed": False},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_future_leakage_by_perturbation_and_gradient(name, device):
    # 37 events, blocks of 4, window 6, top-2: selection is a real choice among up to 8 candidate blocks.
    module = make_module(1, device, window=6, block_size=4, top_k=2, **CONFIGS[name])
    with torch.no_grad():  # a trained-looking compression, so selections and summaries depend on content
        for comp in (module.compress_k, module.compress_v):
            comp.w2.normal_(0.0, 0.5)
    x, valid = make_batch(3, 3, 37, pads=[0, 5, 14], device=device)
    base = module(x, valid)
    for t in (5, 14, 15, 22, 35):
        # perturbation: everything after t changes, outputs up to t must not
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
        torch.testing.assert_close(module(x2, valid)[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-12)
        # gradient: d out[:, t] / d x[:, s] must be exactly zero for s > t
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(xg, valid)[:, t].sum(), xg)
        assert grad[:, t + 1 :].abs().max().item() == 0.0
        if name != "selected" or t >= 4 * module.config.group_blocks:  # the first group selects nothing
            assert grad[:, : t + 1].abs().max().item() > 0.0  # the past does matter (the test can fail)


@pytest.mark.parametrize("device", DEVICES)
def test_events_beyond_the_window_reach_the_output_only_through_compressed_and_selected_blocks(device):
    """Perturb one block far outside the window: window-only output must not move, full SAL's must."""
    x, valid = make_batch(11, 2, 48, pads=[0, 0], device=device)
    far = slice(4, 8)  # block 1 (block_size 4); queries from t = 40 on are > 30 events away (window 6)
    x2 = x.clone()
    x2[:, far] += torch.randn_like(x2[:, far]) * 3
    for name, expect_change in (("window", False), ("compressed", True), ("selected", True), ("all", True)):
        module = make_module(12, device, window=6, block_size=4, top_k=12, **CONFIGS[name])  # top_k >= blocks
        with torch.no_grad():
            delta = (module(x2, valid) - module(x, valid))[:, 40:].abs().max().item()
        assert (delta > 1e-3) == expect_change, (name, delta)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", [1, 2, 3])
def test_selection_is_shared_per_query_group_and_only_picks_complete_past_blocks(group, device):
    module = make_module(2, device, block_size=4, top_k=3, select_group=group)
    x, valid = make_batch(5, 2, 40, pads=[0, 9], device=device)
    with torch.no_grad():
        out = module.branch_outputs(x, valid)
        from mufasa.models.sparse_attention import block_layout

        layout = block_layout(valid, 4, align=4 * group)
        q = out["q"]  # selection works in the block layout: rebuild it as the module does
        B, L = valid.shape
        qb = layout.to_blocks(q.transpose(1, 2).reshape(B, L, D)).view(B, layout.n_blocks, 4, H, D // H)
        qb = qb.permute(0, 3, 1, 2, 4)
        kb = layout.to_blocks(out["k"].transpose(1, 2).reshape(B, L, D)).view(B, layout.n_blocks, 4, H, D // H)
        k_cmp = module.compress_k(kb.permute(0, 3, 1, 2, 4).contiguous())
        block_ok = layout.valid.view(B, layout.n_blocks, 4).all(-1)
        idx, usable = module.selection(qb.contiguous(), k_cmp, block_ok)
    nb = layout.n_blocks
    ng = -(-nb // group)
    assert idx.shape == (B, H, ng, 3)
    group_start = (torch.arange(ng, device=device) * group)[None, None, :, None].expand_as(idx)
    assert bool((idx[usable] < group_start[usable]).all())  # blocks before the group only
    rows = torch.arange(B, device=device)[:, None, None, None].expand_as(idx)
    assert bool(block_ok[rows[usable], idx[usable]].all())
    assert not bool(usable[:, :, 0].any())  # group 0 has no past
    n_candidates = (block_ok.long().cumsum(1) - block_ok.long())[:, :: group]  # real blocks before each group
    expected_usable = n_candidates.clamp(max=3)[:, None, :].expand(B, H, ng)
    assert torch.equal(usable.sum(-1), expected_usable)


@pytest.mark.parametrize("device", DEVICES)
def test_gates_lie_in_unit_interval_and_disabled_branches_have_none(device):
    x, valid = make_batch(0, 2, 30, device=device)
    full = make_module(0, device, block_size=4).branch_outputs(x, valid)["gates"]
    assert full.shape == (2, H, 30, 3)
    assert bool(((full > 0) & (full < 1))[valid[:, None, :, None].expand_as(full)].all())
    assert full.std() > 0.05  # per-query, per-head gates, not a constant
    ablated = make_module(0, device, block_size=4, use_compressed=False).branch_outputs(x, valid)
    assert "compressed" not in ablated
    assert bool((ablated["gates"][..., 1] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(st.integers(1, 40), st.integers(1, 20), st.sampled_from([1, 3, 4, 8]), st.integers(0, 10_000))
def test_left_padding_has_no_effect_on_real_positions(device, n, extra, bs, seed):
    module = make_module(seed, device, window=5, block_size=bs, top_k=2)
    with torch.no_grad():
        module.compress_k.w2.normal_(0.0, 0.5)
    x, _ = make_batch(seed, 1, n, pads=[0], device=device)
    alone = module(x, torch.ones(1, n, dtype=torch.bool, device=device))
    # the same events behind `extra` padding slots holding garbage, batched with a longer random row
    L = n + extra
    xp = torch.randn(2, L, D, dtype=torch.float64).to(device) * 5
    xp[0, extra:] = x[0]
    valid = torch.ones(2, L, dtype=torch.bool, device=device)
    valid[0, :extra] = False
    padded = module(xp, valid)
    torch.testing.assert_close(padded[0, extra:], alone[0], rtol=1e-9, atol=1e-10)
    assert bool((padded[0, :extra] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bs", [1, 4, 7])
def test_prefix_gives_the_same_outputs_as_the_whole_sequence(bs, device):
    """What next-item training on whole sequences relies on: blocks are laid out from the first event."""
    module = make_module(4, device, window=9, block_size=bs, top_k=2)
    with torch.no_grad():
        module.compress_k.w2.normal_(0.0, 0.5)
    x, valid = make_batch(6, 1, 29, pads=[0], device=device)
    whole = module(x, valid)
    for t in (0, bs - 1, bs, 2 * bs + 1, 28):
        prefix = module(x[:, : t + 1], valid[:, : t + 1])
        torch.testing.assert_close(prefix[:, -1], whole[:, t], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("off", ["window", "compressed", "selected"])
def test_a_disabled_branch_contributes_nothing(off, device):
    full = make_module(7, device, window=5, block_size=4, top_k=2)
    ablated = make_module(8, device, window=5, block_size=4, top_k=2, **{f"use_{off}": False})
    ablated.load_state_dict(full.state_dict())  # same weights: only the switch differs
    x, valid = make_batch(9, 2, 33, device=device)
    with torch.no_grad():
        parts = full.branch_outputs(x, valid)
        mixed = sum(
            parts["gates"][..., i : i + 1] * parts[name]
            for i, name in enumerate(("window", "compressed", "selected"))
            if name != off
        )  # (B, H, L, dh)
        expected = full.out(mixed.transpose(1, 2).reshape(2, 33, D)) * valid[..., None]
        got = ablated(x, valid)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
        assert (got - full(x, valid)).abs().max() > 1e-3  # the branch did contribute when it was on


@pytest.mark.parametrize("device", DEVICES)
def test_dense_module_matches_the_reference_with_padding(device):
    torch.manual_seed(0)
    module = DenseCausalAttention(SparseAttentionConfig(d_model=D, n_heads=H)).double().to(device)
    x, valid = make_batch(1, 3, 23, device=device)
    q, k, v = module.qkv(x).view(3, 23, 3, H, D // H).permute(2, 0, 3, 1, 4)
    rel = relative_positions(valid)
    allowed = (rel[:, None, :] <= rel[:, :, None]) & valid[:, None, :] & valid[:, :, None]
    ref = masked_reference(q, k, v, allowed).transpose(1, 2).reshape(3, 23, D)
    torch.testing.assert_close(module(x, valid), module.out(ref) * valid[..., None], rtol=1e-9, atol=1e-10)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        SparseAttentionConfig(use_window=False, use_compressed=False, use_selected=False)
    with pytest.raises(ValueError, match="multiple"):
        SparseAttentionConfig(d_model=10, n_heads=3)
    module = make_module(0)
    x, _ = make_batch(0, 2, 10)
    right_padded = torch.ones(2, 10, dtype=torch.bool)
    right_padded[0, -3:] = False
    with pytest.raises(ValueError, match="left-padded"):
        module(x, right_padded)
    with pytest.raises(ValueError, match=r"\(B, L, 16\)"):
        module(x[..., :8], torch.ones(2, 10, dtype=torch.bool))


@pytest.mark.parametrize("device", DEVICES)
def test_8k_events_forward_backward_stays_linear_in_memory(device):
    """L = 8192, batch 1, default shape: runs, gives finite gradients, and allocates far less than one L x L."""
    torch.manual_seed(0)
    module = MultiGranularitySparseAttention(SparseAttentionConfig()).to(device)  # fp32, d_model 64, 2 heads
    L = 8192
    x = torch.randn(1, L, 64).to(device).requires_grad_(True)
    valid = torch.ones(1, L, dtype=torch.bool, device=device)
    valid[0, :100] = False  # some left padding, for the general path

    def step():
        module(x, valid).square().mean().backward()

    peak = peak_memory_mb(step, device)
    assert torch.isfinite(x.grad).all() and x.grad[0, 100:].abs().sum() > 0
    one_dense_score_matrix = L * L * 4 / 2**20  # 256 MB per head
    assert peak < one_dense_score_matrix / 2, f"peak {peak:.0f} MB"


@pytest.mark.parametrize("device", DEVICES)
def test_config_grid_runs_and_shapes(device):
    """Odd combinations (window < block, window spanning many blocks, L < one block) all run and keep shapes."""
    for window, bs, L in itertools.product((1, 3, 17), (2, 16), (1, 5, 33)):
        module = make_module(0, device, window=window, block_size=bs, top_k=2)
        x, valid = make_batch(window + bs + L, 2, L, device=device)
        y = module(x, valid)
        assert y.shape == (2, L, D) and torch.isfinite(y).all()
        assert bool((y[~valid] == 0).all())


CUDA_ONLY = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize(
    "dtype, top_k",
    [("float32", 4), ("float32", 10_000), ("bfloat16", 10_000)],
    ids=["float32-top4", "float32-all-blocks", "bfloat16-all-blocks"],
)
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
def test_low_precision_matches_float64(dtype, top_k, padded, device):
    """The kernels training runs (float32, and bf16 autocast as the trainers use on CUDA: SDPA's memory-efficient /
    flash kernels with masks, not the math kernel of the float64 tests) give the float64 CPU result: output and
    gradients (input, projections), as relative errors in norm. bf16 with every block selected, so that rounding
    cannot flip a top-k choice; float32 also with a real top-4 choice among up to 9 blocks."""
    import copy

    torch.manual_seed(0)
    ref = MultiGranularitySparseAttention(SparseAttentionConfig(top_k=top_k))  # default shape, d_model 64, 2 heads
    with torch.no_grad():
        ref.gate.bias.uniform_(-2.0, 2.0)
        for comp in (ref.compress_k, ref.compress_v):  # content-dependent summaries (and selections)
            comp.w2.normal_(0.0, 0.1)
    low = copy.deepcopy(ref).to(device)
    ref = ref.double()
    gen = torch.Generator().manual_seed(1)
    B, L = 3, 300
    x = torch.randn(B, L, 64, generator=gen)
    weight = torch.randn(B, L, 64, generator=gen, dtype=torch.float64)  # a random linear functional of the output
    valid = torch.ones(B, L, dtype=torch.bool)
    if padded:
        valid[1, :37] = False
        valid[2, :150] = False

    def run(module, x, valid, amp):
        x = x.clone().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            y = module(x, valid)
        (y.double() * weight.to(y.device)).sum().backward()
        return [t.detach().double().cpu() for t in (y, x.grad, module.qkv.weight.grad, module.out.weight.grad)]

    expected = run(ref, x.double(), valid, False)
    got = run(low, x.to(device), valid.to(device), dtype == "bfloat16")
    bound = {"float32": 1e-5, "bfloat16": 4e-2}[dtype]
    for name, a, b in zip(("output", "grad x", "grad qkv.weight", "grad out.weight"), got, expected):
        rel = float((a - b).norm() / b.norm())
        assert rel < bound, f"{name}: relative error {rel:.2e} >= {bound:.0e} ({dtype} on {device})"


WHOLE_LAYER = [
    dict(window=8, block_size=4, top_k=2, select_group=2),
    dict(window=4, block_size=4, top_k=1, select_group=1),
    dict(window=6, block_size=3, top_k=3, select_group=2, use_compressed=False),
    dict(window=8, block_size=2, top_k=2, select_group=4, use_window=False),
    dict(window=8, block_size=4, top_k=2, select_group=2, use_selected=False),
]


@pytest.mark.parametrize("overrides", WHOLE_LAYER, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
@pytest.mark.parametrize("L,pads", [(37, [0, 5, 20]), (16, [0, 0, 3]), (45, [0, 44, 13])])
def test_whole_layer_equals_the_readable_reference_in_outputs_and_gradients(overrides, L, pads):
    """The fast block path and the library's O(L^2) reference of the whole layer (masks, three branches, gate
    mix, output projection) agree in float64 on padded batches, outputs and gradients w.r.t. input and weights."""
    from mufasa.models.sparse_attention import reference_sparse_attention

    module = make_module(seed=len(pads) + L, **overrides).eval()
    with torch.no_grad():  # a non-zero compression MLP, so phi is more than the block mean
        module.compress_k.w2.normal_(0, 0.3)
        module.compress_v.w2.normal_(0, 0.3)
    x, valid = make_batch(L, 3, L, pads=pads)
    x.requires_grad_(True)
    fast = module(x, valid)
    ref = reference_sparse_attention(module, x, valid)
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)
    weight = torch.randn_like(fast)
    params = [x, *module.parameters()]
    g_fast = torch.autograd.grad((fast * weight).sum(), params, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        if a is None or b is None:
            assert a is None or not a.any()
            assert b is None or not b.any()
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_reference_is_selectable_as_the_layer_implementation():
    module = make_module(seed=3, window=8, block_size=4, top_k=2).eval()
    ref_module = MultiGranularitySparseAttention(dataclasses.replace(module.config, impl="reference")).double()
    ref_module.load_state_dict(module.state_dict())
    x, valid = make_batch(1, 2, 30, pads=[0, 7])
    torch.testing.assert_close(ref_module.eval()(x, valid), module(x, valid), rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="impl"):
        SparseAttentionConfig(d_model=D, n_heads=H, impl="fast")


@pytest.mark.parametrize("pad", [0, 37])
def test_explain_last_names_the_past_block_the_selection_picks_in_the_callers_positions(pad):
    """Shipped settings (window 64, blocks of 32, top-4, groups of 2). q = k = x and a marker vector in block 3
    of the row's real events and at the query that scores the last group's selection: block 3 must come first,
    reported at the caller's positions (a left-padded row's blocks start at its first real event), and it must be
    one of the blocks :meth:`selection` itself picks."""
    cfg = SparseAttentionConfig(d_model=8, n_heads=1)
    attn = MultiGranularitySparseAttention(cfg).eval()
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[:8].copy_(torch.eye(8))  # q = x
        attn.qkv.weight[8:16].copy_(torch.eye(8))  # k = x
    L = 320
    gen = torch.Generator().manual_seed(0)
    x = 0.01 * torch.randn(1, L, 8, generator=gen)
    valid = torch.arange(L)[None, :] >= pad
    marker = torch.zeros(8)
    marker[0] = 5.0
    start = pad + 3 * 32
    x[0, start : start + 32] += marker
    n_real = L - pad
    shift = pad % 64
    last_slot = n_real - 1
    first = (last_slot // 32) // 2 * 2  # the last position's selection group starts at this block
    x[0, pad + (first - 1) * 32 + 31] += marker  # the query closing the block before the group
    x = x * valid[..., None]
    out = attn.explain_last(x, valid)
    assert out["block_start"][0, 0, 0].item() == start and out["block_end"][0, 0, 0].item() == start + 32
    assert out["block_weight"][0, 0, 0] > 0.9 and (out["block_weight"][0, 0] <= out["block_weight"][0, 0, 0]).all()
    assert shift == pad  # (both pads are below the 64-event alignment)
    # the same blocks as the selection branch's own choice for that group
    layout = block_layout(valid, 32, align=64)
    xb = layout.to_blocks(x)
    q = xb.view(1, layout.n_blocks, 32, 1, 8).permute(0, 3, 1, 2, 4).contiguous()
    block_ok = layout.valid.view(1, layout.n_blocks, 32).all(dim=2) if pad else None
    idx, usable = attn.selection(q, attn.compress_k(q), block_ok)
    chosen = {int(b) * 32 + pad for b, ok in zip(idx[0, 0, first // 2], usable[0, 0, first // 2]) if ok}
    assert {int(s) for s in out["block_start"][0, 0] if s >= 0} == chosen
    # gates at the last position, as branch_outputs reports them
    gates = attn.branch_outputs(x, valid)["gates"][0, :, L - 1]
    torch.testing.assert_close(out["gates"][0], gates)


def test_explain_last_reports_no_block_before_the_first_selection_group():
    attn = MultiGranularitySparseAttention(SparseAttentionConfig(d_model=8, n_heads=1)).eval()
    out = attn.explain_last(torch.randn(1, 50, 8), torch.ones(1, 50, dtype=torch.bool))
    assert (out["block_start"] == -1).all() and (out["block_weight"] == 0).all()
