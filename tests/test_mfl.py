"""MFL: the four losses against their formulas, the fusion module (heads, missing-image mask), the collaborative
space (train-only), the genre-mixing sampler, and training on synthetic data with planted structure (kNN
overlap vs. an untrained model, resume, determinism). On CPU, and the fusion module and training on CUDA too when
a GPU is present (the ``device`` parameter; its cuda cases are skipped without one, and on CUDA training runs bf16
autocast). No pretrained encoder is loaded — features are built from the synthetic generator's planted
genres/clusters/titles.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mufasa.data.sequences import leave_one_out, order_events
from mufasa.data.synthetic import SyntheticConfig, generate, stand_in_features
from mufasa.data.features import ItemFeatures
from mufasa.models.fusion import FusionConfig, MultimodalFusion
from mufasa.models.mfl_losses import (
    MFLLossWeights,
    collaborative_alignment_loss,
    info_nce,
    mfl_objective,
    semantic_alignment_loss,
    structure_preservation_loss,
    uniformity_loss,
    variance_covariance_loss,
)
from mufasa.training.common import CheckpointWarning
from mufasa.training.diagnostics import (
    alignment,
    effective_rank,
    knn_overlap,
    mfl_diagnostics,
    plot_fused_projection,
    plot_training_curves,
    uniformity,
)
from mufasa.training.mfl_trainer import (
    GenreMixingSampler,
    MFLTrainConfig,
    collaborative_space,
    encode_items,
    split_items,
    train_mfl,
)

from torch_devices import DEVICES, exact_single_thread  # tests/torch_devices.py

one_torch_thread = pytest.fixture(scope="module", autouse=True)(exact_single_thread)


# ---- synthetic multimodal catalogue --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue():
    ds = generate(SyntheticConfig(n_users=300, n_items=480, n_genres=6, clusters_per_genre=4, seed=0))
    text, image, mask, side = stand_in_features(ds).arrays()
    split = leave_one_out(ds.interactions, min_events=3)
    collab, collab_mask = collaborative_space(split.train_offsets, split.train_items, len(ds.items))
    return {"ds": ds, "text": text, "image": image, "mask": mask, "side": side, "split": split,
            "collab": collab, "collab_mask": collab_mask, "genres": ds.item_genre}


@pytest.fixture(scope="module")
def tiny():
    """A small catalogue for the loop mechanics (resume, determinism): seconds, not tens of seconds."""
    ds = generate(SyntheticConfig(n_users=60, n_items=120, n_genres=3, clusters_per_genre=2, max_events=60, seed=1))
    text, image, mask, side = stand_in_features(ds, seed=1).arrays()
    split = leave_one_out(ds.interactions, min_events=3)
    collab, collab_mask = collaborative_space(split.train_offsets, split.train_items, 120, dim=16)
    fusion = FusionConfig(side_dim=side.shape[1], d_model=32, out_dim=16, collab_dim=16, n_heads=2)
    arrays = (text, image, mask, side, collab, collab_mask, ds.item_genre)
    return fusion, arrays


def _tensors(*arrays, device: str = "cpu"):
    return [torch.as_tensor(a).to(device) for a in arrays]


# ---- losses: each as its formula says --------------------------------------------------------------------------


def test_info_nce_matches_hand_computed_value():
    # Two orthonormal pairs at τ = 1: logits = I, so each row's CE is -log(e / (e + 1)) = log(1 + e^-1).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = math.log(1 + math.exp(-1))
    assert info_nce(a, a * 3.0, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)  # scale-invariant
    # Swapped pairs: the positive now has the lower logit -> log(1 + e).
    assert info_nce(a, a.flip(0), temperature=1.0).item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_semantic_alignment_lower_for_aligned_than_shuffled_and_masks_exclude():
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(32, 16, generator=g)
    aligned = anchor + 0.1 * torch.randn(32, 16, generator=g)
    shuffled = aligned[torch.randperm(32, generator=g)]
    assert semantic_alignment_loss(anchor, {"image": aligned}, None, 0.1) < 0.2
    assert semantic_alignment_loss(anchor, {"image": shuffled}, None, 0.1) > 2.0
    # Masked-out rows are neither positives nor negatives: scrambling them changes nothing.
    mask = torch.arange(32) % 2 == 0
    scrambled = aligned.clone()
    scrambled[~mask] = torch.randn(16, 16, generator=g) * 100
    base = semantic_alignment_loss(anchor, {"image": aligned}, {"image": mask}, 0.1)
    assert semantic_alignment_loss(anchor, {"image": scrambled}, {"image": mask}, 0.1) == pytest.approx(base.item())
    # ... and the loss is the mean over modalities of InfoNCE on each modality's valid rows.
    side = torch.randn(32, 16, generator=g)
    both = semantic_alignment_loss(anchor, {"image": aligned, "side": side}, {"image": mask}, 0.1)
    by_hand = 0.5 * (info_nce(aligned[mask], anchor[mask], 0.1) + info_nce(side, anchor, 0.1))
    torch.testing.assert_close(both, by_hand)


def test_collaborative_alignment_lower_for_aligned_pairs_and_skips_masked_items():
    g = torch.Generator().manual_seed(1)
    fused = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    collab = fused + 0.05 * torch.randn(40, 8, generator=g)
    aligned = collaborative_alignment_loss(fused, collab, 0.1)
    shuffled = collaborative_alignment_loss(fused, collab[torch.randperm(40, generator=g)], 0.1)
    assert aligned < 0.5 < 2.0 < shuffled
    mask = torch.arange(40) < 30
    broken = collab.clone()
    broken[~mask] = -broken[~mask]  # items without a collaborative vector: anything there is ignored
    torch.testing.assert_close(
        collaborative_alignment_loss(fused, broken, 0.1, mask), info_nce(fused[:30], collab[:30], 0.1)
    )


def test_structure_preservation_high_when_collapsed_zero_when_equal_and_matches_formula():
    g = torch.Generator().manual_seed(2)
    title = torch.randn(24, 32, generator=g)
    assert structure_preservation_loss(title.clone(), title, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.ones(24, 8) + 1e-4 * torch.randn(24, 8, generator=g)
    assert structure_preservation_loss(collapsed, title, 0.1) > 1.0
    # 3 rows by hand: title sims (unit rows) and fused sims, softmax over j != i, KL(P || Q) averaged over rows.
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    tau = 0.5
    total = 0.0
    for i in range(3):
        js = [j for j in range(3) if j != i]
        p = torch.softmax(torch.stack([t[i] @ t[j] for j in js]) / tau, 0)
        q = torch.softmax(torch.stack([f[i] @ f[j] for j in js]) / tau, 0)
        total += float((p * (p.log() - q.log())).sum())
    assert structure_preservation_loss(f, t, tau).item() == pytest.approx(total / 3, rel=1e-5)
    assert total > 0.05  # the example is not trivially zero


def test_uniformity_lower_for_spread_than_clustered_and_formula():
    g = torch.Generator().manual_seed(3)
    spread = torch.randn(64, 16, generator=g)
    clustered = torch.ones(64, 16) + 0.05 * torch.randn(64, 16, generator=g)
    assert uniformity_loss(spread) < uniformity_loss(clustered) - 1.0
    # Two antipodal unit vectors: ||x - y||² = 4, so log exp(-2 · 4) = -8; identical rows give log 1 = 0.
    assert uniformity_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-8.0, abs=1e-5)
    assert uniformity_loss(torch.tensor([[0.0, 2.0], [0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-6)
    # Numpy diagnostic and torch loss agree.
    assert uniformity(spread.numpy()) == pytest.approx(uniformity_loss(spread).item(), abs=1e-4)


def test_variance_covariance_penalises_collapse():
    g = torch.Generator().manual_seed(4)
    assert variance_covariance_loss(torch.randn(256, 8, generator=g)) < 0.2
    collapsed = torch.ones(256, 8) + 1e-3 * torch.randn(256, 8, generator=g)
    assert variance_covariance_loss(collapsed) > 0.9


def test_zero_weight_terms_are_not_computed_and_all_zero_is_refused():
    with pytest.raises(ValueError, match="every MFL loss weight is 0"):
        MFLLossWeights(semantic=0, collaborative=0, structure=0, uniformity=0)
    with pytest.raises(ValueError, match="temperature"):
        MFLLossWeights(temperature=0.0)
    g = torch.Generator().manual_seed(5)
    tokens = {"text": torch.randn(8, 4, generator=g), "side": torch.randn(8, 4, generator=g)}
    masks = {"text": torch.ones(8, dtype=torch.bool), "side": torch.ones(8, dtype=torch.bool)}
    fused = torch.randn(8, 4, generator=g)
    weights = MFLLossWeights(semantic=2.0, collaborative=0.0, structure=0.0, uniformity=0.5)
    total, terms = mfl_objective(tokens, masks, fused, torch.randn(8, 6, generator=g), None, None, weights)
    assert set(terms) == {"semantic", "uniformity"}  # collab=None is fine: that term is off
    torch.testing.assert_close(total, 2.0 * terms["semantic"] + 0.5 * terms["uniformity"])


# ---- the fusion module ---------------------------------------------------------------------------------------


def _batch(n=16, side_dim=5, seed=0, share=0.5, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=-1)
    image = torch.randn(n, 1280, generator=g).abs() * 3
    mask = torch.rand(n, generator=g) < share
    image[~mask] = 0.0
    side = torch.randn(n, side_dim, generator=g)
    return text.to(device), image.to(device), mask.to(device), side.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_fusion_shapes_unit_rows_and_config_checks(device):
    cfg = FusionConfig(side_dim=5)
    model = MultimodalFusion(cfg).to(device).eval()
    out = model(*_batch(device=device))
    assert out.fused.shape == (16, 64) and out.fused.device.type == device
    torch.testing.assert_close(out.fused.norm(dim=-1), torch.ones(16, device=device))
    assert out.attention.shape == (16, 4, 3) and out.order == ("text", "image", "side")
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(16, 4, device=device))
    assert {k: tuple(v.shape) for k, v in out.tokens.items()} == {m: (16, 128) for m in ("text", "image", "side")}
    # Title-only ablation takes no image/side inputs at all.
    text_only = MultimodalFusion(FusionConfig(side_dim=0, modalities=("text",))).to(device).eval()
    assert text_only(_batch(device=device)[0]).attention.shape == (16, 4, 1)
    with pytest.raises(ValueError, match="anchor"):
        FusionConfig(side_dim=5, modalities=("image", "side"))
    with pytest.raises(ValueError, match="side_dim is 0"):
        FusionConfig(side_dim=0)
    with pytest.raises(ValueError, match="image_mask"):
        model(_batch(device=device)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_missing_image_items_ignore_image_head_and_features(device):
    torch.manual_seed(0)
    model = MultimodalFusion(FusionConfig(side_dim=5)).to(device).eval()
    text, image, mask, side = _batch(n=32, seed=1, device=device)
    assert 0 < mask.sum() < 32
    before = model(text, image, mask, side).fused
    # 1) garbage (even NaN) in the image rows of image-less items changes nothing anywhere
    garbage = image.clone()
    garbage[~mask] = torch.nan
    torch.testing.assert_close(model(text, garbage, mask, side).fused, before, rtol=0, atol=0)
    # 2) perturbing every image-head weight leaves image-less items bit-identical but moves the others
    with torch.no_grad():
        for p in model.heads["image"].parameters():
            p.add_(torch.randn_like(p))
    after = model(text, image, mask, side).fused
    torch.testing.assert_close(after[~mask], before[~mask], rtol=0, atol=0)
    assert (after[mask] - before[mask]).abs().max() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_reach_every_projection_head(catalogue, device):
    c = catalogue
    torch.manual_seed(0)
    cfg = FusionConfig(side_dim=c["side"].shape[1])
    model = MultimodalFusion(cfg).to(device).train()
    rows = np.arange(64)
    text, image, mask, side, collab, cmask = _tensors(
        c["text"][rows], c["image"][rows], c["mask"][rows], c["side"][rows], c["collab"][rows], c["collab_mask"][rows],
        device=device,
    )
    out = model(text, image, mask, side)
    total, terms = mfl_objective(out.tokens, out.masks, out.fused, text, model.project_collab(collab), cmask,
                                 MFLLossWeights(variance_covariance=1.0))
    assert set(terms) == {"semantic", "collaborative", "structure", "uniformity", "variance_covariance"}
    total.backward()
    for name in ("text", "image", "side"):
        for pname, p in model.heads[name].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient on heads.{name}.{pname}"
    assert model.missing_image.grad.abs().sum() > 0
    assert model.collab_proj.parametrizations.weight.original.grad.abs().sum() > 0


# ---- collaborative space: train arrays only --------------------------------------------------------------------


def test_collaborative_space_depends_only_on_the_train_arrays(catalogue):
    ds, split = catalogue["ds"], catalogue["split"]
    n = len(ds.items)
    vec, mask = catalogue["collab"], catalogue["collab_mask"]
    assert vec.shape == (n, 64) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec[mask], axis=1), 1.0, rtol=1e-5)
    assert not vec[~mask].any()
    # Changing every validation and test target leaves train arrays, hence the space, untouched ...
    inter = ds.interactions.copy()
    order = order_events(inter)  # positions sorted by (user, time): each user's last two are valid, test
    users = inter["user_id"].to_numpy()[order]
    last = np.r_[users[1:] != users[:-1], True]
    second_last = np.r_[last[1:], False]
    held_out = order[last | second_last]
    assert len(held_out) == len(split.valid) + len(split.test)
    inter.loc[held_out, "item_id"] = (inter.loc[held_out, "item_id"] % n) + 1
    split2 = leave_one_out(inter, min_events=3)
    np.testing.assert_array_equal(split2.train_items, split.train_items)
    vec2, mask2 = collaborative_space(split2.train_offsets, split2.train_items, n)
    np.testing.assert_array_equal(vec2, vec)
    np.testing.assert_array_equal(mask2, mask)
    # ... while a change in the train arrays does move it (so the equality above is not vacuous).
    items3 = split.train_items.copy()
    items3[::7] = (items3[::7] % n) + 1
    vec3, _ = collaborative_space(split.train_offsets, items3, n)
    assert np.abs(vec3 - vec).max() > 0.1


def test_collaborative_space_hand_example_and_unseen_items():
    # Users [1,3], [2,3], [4,5]; item 6 never occurs. Window 1 pairs: (1,3), (2,3), (4,5) -> symmetric counts,
    # marginals 1:1 2:1 3:2 4:1 5:1, ΣC = 6; PPMI_13 = PPMI_23 = log(6/2) > 0, PPMI_45 = log 6 > 0.
    # Item vectors are PPMI rows' singular directions (second-order similarity): 1 and 2 have the same profile
    # (both next to 3) -> cosine 1; 3 has another profile -> 0; the {4,5} block is orthogonal to {1,2,3}.
    offsets = np.array([0, 2, 4, 6])
    items = np.array([1, 3, 2, 3, 4, 5])
    vec, mask = collaborative_space(offsets, items, n_items=6, dim=4, window=1)
    assert mask.tolist() == [True, True, True, True, True, False]
    assert not vec[5].any()
    cos = vec @ vec.T
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert abs(cos[0, 2]) < 1e-5 and abs(cos[0, 3]) < 1e-5 and abs(cos[2, 4]) < 1e-5
    # Same arrays -> same output (deterministic SVD), and out-of-range indices are refused.
    np.testing.assert_array_equal(collaborative_space(offsets, items, n_items=6, dim=4, window=1)[0], vec)
    with pytest.raises(ValueError, match="1..6"):
        collaborative_space(offsets, np.array([1, 3, 2, 3, 4, 7]), n_items=6)


def test_collaborative_space_reflects_planted_clusters(catalogue):
    vec, mask, cl = catalogue["collab"], catalogue["collab_mask"], catalogue["ds"].item_cluster
    cos = vec[mask] @ vec[mask].T
    same = cl[mask][:, None] == cl[mask][None, :]
    off = ~np.eye(len(cos), dtype=bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.2


# ---- sampler ---------------------------------------------------------------------------------------------------


def test_genre_mixing_sampler_mixes_covers_and_is_seeded():
    genres = np.repeat([0, 1, 2, 3], [100, 50, 30, 20])  # 200 items, unequal genres
    sampler = GenreMixingSampler(genres, batch_size=40, seed=7)
    batches = sampler.epoch_batches(0)
    assert len(batches) == len(sampler) == 5
    assert sorted(np.concatenate(batches).tolist()) == list(range(200))  # every item exactly once
    assert {len(b) for b in batches} == {40}
    for b in batches:
        counts = np.bincount(genres[b], minlength=4)
        np.testing.assert_allclose(counts, [20, 10, 6, 4], atol=1)  # proportional mix in every batch
    again = GenreMixingSampler(genres, batch_size=40, seed=7).epoch_batches(0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(sampler.epoch_batches(1)))


def test_split_items_is_seeded_and_disjoint():
    tr, va = split_items(100, 0.1, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 100
    np.testing.assert_array_equal(split_items(100, 0.1, seed=3)[1], va)


# ---- diagnostics -----------------------------------------------------------------------------------------------


def test_diagnostics_on_known_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    assert effective_rank(np.outer(rng.normal(size=200), rng.normal(size=16))) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.eye(16)) == pytest.approx(16.0)
    assert knn_overlap(x, 3.0 * x) == 1.0  # cosine kNN is scale invariant
    assert knn_overlap(x, rng.normal(size=(200, 16))) < 0.2
    assert alignment(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(x) < uniformity(x + 10.0) - 1.0
    d = mfl_diagnostics(x, x, x, np.ones(200, bool))
    assert d["title_knn_overlap"] == 1.0 and d["collab_knn_overlap"] == 1.0
    history = [{"epoch": e, "loss": 3 - e, "semantic": 1.0 / e, "structure": 0.1, "val_loss": 2.5 - e / 2,
                "val_semantic": 1.2 / e, "val_title_knn": 0.3 + e / 10} for e in (1, 2, 3)]
    for path in (plot_training_curves(history, tmp_path / "curves.png"),
                 plot_fused_projection(x, rng.integers(0, 4, 200), ["a", "b", "c", "d"], tmp_path / "proj.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


# ---- training --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_training_raises_title_and_collaborative_knn_overlap(catalogue, tmp_path, device):
    c = catalogue
    fusion = FusionConfig(side_dim=c["side"].shape[1])
    torch.manual_seed(0)
    untrained = MultimodalFusion(fusion)
    fused0 = encode_items(untrained, ItemFeatures(*_tensors(c["text"], c["image"], c["mask"], c["side"]))).numpy()
    before = mfl_diagnostics(fused0, c["text"], c["collab"], c["collab_mask"])

    seen = []
    cfg = MFLTrainConfig(epochs=25, batch_size=128, patience=25, seed=0, device=device, progress=False)
    result = train_mfl(fusion, cfg, ItemFeatures(c["text"], c["image"], c["mask"], c["side"]), c["collab"], c["collab_mask"],
                       c["genres"], checkpoint_dir=tmp_path, on_metrics=lambda step, m: seen.append((step, m)))
    after = result.diagnostics
    assert after["title_knn_overlap"] > before["title_knn_overlap"] + 0.15, (before, after)
    assert after["collab_knn_overlap"] > before["collab_knn_overlap"] + 0.10, (before, after)
    assert after["effective_rank"] > 20  # not collapsed
    # The result is consistent: fused = the returned (best) model in eval mode over all items, unit rows.
    assert result.fused.shape == (len(c["text"]), 64) and result.fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.fused, axis=1), 1.0, rtol=1e-5)
    refused = encode_items(result.model, ItemFeatures(*_tensors(c["text"], c["image"], c["mask"], c["side"], device=device)))
    refused = refused.cpu().numpy()
    np.testing.assert_allclose(refused, result.fused, atol=1e-6)
    # History, callback and the best epoch agree.
    assert result.epochs_run == len(result.history) == 25 and result.resumed_from is None
    assert [s for s, _ in seen[:-1]] == list(range(1, 26)) and "diag_title_knn_overlap" in seen[-1][1]
    vals = [r["val_loss"] for r in result.history]
    assert after["best_epoch"] == 1 + int(np.argmin(vals))
    assert {"semantic", "collaborative", "structure", "uniformity", "val_loss"} <= set(result.history[0])


def _run(tiny, epochs, ckpt=None, seed=0, device="cpu", **kw):
    fusion, arrays = tiny
    cfg = MFLTrainConfig(epochs=epochs, batch_size=32, patience=50, seed=seed, device=device, progress=False, **kw)
    return train_mfl(fusion, cfg, ItemFeatures(*arrays[:4]), *arrays[4:], checkpoint_dir=ckpt)


def _gap(a, b) -> float:
    """Largest difference between two MFL runs: epoch curves, fused vectors, final weights."""
    curves = max(abs(x[k] - y[k]) for x, y in zip(a.history, b.history, strict=True)
                 for k in ("loss", "semantic", "collaborative", "structure", "uniformity", "val_loss"))
    weights = max(float((v - w).abs().max()) for v, w in
                  zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True))
    return max(curves, float(np.abs(a.fused - b.fused).max()), weights)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_from_checkpoint_continues_the_same_curve(tiny, tmp_path, device):
    """On CUDA (bf16 autocast, kernels with atomics) the resumed run must be as close to the uninterrupted one as
    a second uninterrupted run is (the noise floor); on CPU to float tolerance."""
    full = _run(tiny, 4, tmp_path / "full", device=device)
    first = _run(tiny, 2, tmp_path / "resumed", device=device)
    assert first.epochs_run == 2
    resumed = _run(tiny, 4, tmp_path / "resumed", device=device)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 4
    assert len(resumed.history) == 4
    if device == "cuda":
        noise, gap = _gap(_run(tiny, 4, device=device), full), _gap(resumed, full)
        print(f"cuda: largest difference resumed vs uninterrupted {gap:.2e}, rerun vs uninterrupted {noise:.2e}")
        assert gap <= 10 * noise + 1e-5, (gap, noise)
    else:
        for a, b in zip(full.history, resumed.history):
            for key in ("loss", "semantic", "collaborative", "structure", "uniformity", "val_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a["epoch"])
        np.testing.assert_allclose(resumed.fused, full.fused, atol=1e-5)
        for (k, v), (k2, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
            assert k == k2
            torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)
    # A finished checkpoint is not trained further, and a different configuration is refused.
    again = _run(tiny, 4, tmp_path / "resumed", device=device)
    assert again.resumed_from == 4 and again.epochs_run == 4
    np.testing.assert_allclose(again.fused, resumed.fused if device == "cuda" else full.fused, atol=1e-5)
    with pytest.warns(CheckpointWarning, match="different configuration or dataset"):
        other = _run(tiny, 4, tmp_path / "resumed", lr=5e-4, device=device)
    assert other.resumed_from is None and len(list((tmp_path / "resumed").glob("last.pt.stale-*"))) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_result_other_seed_differs(tiny, device):
    a, b, c = _run(tiny, 2, device=device), _run(tiny, 2, device=device), _run(tiny, 2, seed=1, device=device)
    other = np.abs(a.fused - c.fused).max()
    assert other > 1e-3
    if device == "cuda":  # bitwise only if CUDA's kernels happen to be deterministic: far closer than another seed
        same = np.abs(a.fused - b.fused).max()
        print(f"cuda: same seed max |fused diff| {same:.2e}, other seed {other:.2e}")
        assert same < 1e-2 * other
        assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history], rel=1e-3)
    else:
        np.testing.assert_array_equal(a.fused, b.fused)
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


@pytest.mark.parametrize("device", DEVICES)
def test_title_only_without_collaborative_loss(tiny, device):
    fusion, (text, *_rest, genres) = tiny
    cfg = MFLTrainConfig(epochs=2, batch_size=32, device=device, progress=False,
                         losses=MFLLossWeights(semantic=0.0, collaborative=0.0))
    title_only = FusionConfig(side_dim=0, d_model=32, out_dim=16, collab_dim=0, n_heads=2, modalities=("text",))
    result = train_mfl(title_only, cfg, ItemFeatures(text), None, None, genres)
    assert set(result.history[0]) >= {"structure", "uniformity"} and "semantic" not in result.history[0]
    assert "collab_knn_overlap" not in result.diagnostics and result.fused.shape == (len(text), 16)
    with pytest.raises(ValueError, match="collab_dim is 0"):
        train_mfl(title_only, MFLTrainConfig(epochs=1, device="cpu", progress=False), ItemFeatures(text), None, None,
                  genres)


def test_bad_inputs_raise_clear_errors(tiny):
    fusion, (text, image, mask, side, collab, cmask, genres) = tiny
    cfg = MFLTrainConfig(epochs=1, batch_size=32, device="cpu", progress=False)
    with pytest.raises(ValueError, match="wrong shapes"):
        train_mfl(fusion, cfg, ItemFeatures(text, image[:, :-1], mask, side), collab, cmask, genres)
    with pytest.raises(ValueError, match="disagree on the number of items"):
        ItemFeatures(text, image[:-1], mask, side)
    with pytest.raises(ValueError, match="come together"):
        ItemFeatures(text, image, None, side)
    bad = text.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_mfl(fusion, cfg, ItemFeatures(bad, image, mask, side), collab, cmask, genres)
