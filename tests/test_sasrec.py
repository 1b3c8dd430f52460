"""The reference SASRec baseline: its configuration is the reference's, and its pieces do what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mufasa.models.sal import SALConfig
from mufasa.models.sasrec import SASRecConfig, SASRecModel
from mufasa.pipeline.params import parse_params, sasrec_configs
from mufasa.training.sal_trainer import SALTrainConfig, pad_sequences, train_sal, training_windows
from tests.conftest import REPO
from tests.helpers import EPOCH_BUDGET


def _shipped():
    return parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_shipped_sasrec_has_the_reference_settings():
    model, train = sasrec_configs(_shipped(), n_items=1682)
    # RecBole 1.2.1's SASRec as the anchor was measured (benchmarks/README.md)
    assert (model.d_model, model.n_layers, model.n_heads, model.inner_size) == (64, 2, 2, 256)
    assert (model.dropout, model.attn_dropout, model.max_len) == (0.5, 0.5, 200)
    assert (train.lr, train.weight_decay, train.grad_clip, train.patience, train.eval_every) == (1e-3, 0.0, None, 10, 1)
    # one evaluation an epoch and a constant learning rate, as the reference (no step floors, warm-up or decay)
    assert (train.min_eval_steps, train.warmup_steps, train.lr_schedule) == (1, 0, "constant")
    # seeded as MUFASA, so a seeded comparison reseeds both
    assert train.seed == _shipped().train_sal.train.seed
    assert not model.seen_bias  # MUFASA's learned seen-item bias is not the reference's


def test_sasrec_is_id_only():
    with pytest.raises(ValueError, match="ID-only"):
        SASRecConfig(n_items=10, item_feature_dim=8)
    with pytest.raises(ValueError, match="no item features"):
        SASRecConfig(n_items=10).build(torch.zeros(10, 4))
    model = SASRecModel(SASRecConfig(n_items=10, max_len=8, dropout=0.0, attn_dropout=0.0)).eval()
    items = torch.tensor([[0, 3, 4, 5]])
    # timestamps carry no signal into SASRec: any timestamps give the same scores
    a = model.full_sort_predict(items, torch.tensor([[0, 1, 2, 3]]))
    b = model.full_sort_predict(items, torch.tensor([[0, 10**6, 2 * 10**6, 10**9]]))
    torch.testing.assert_close(a, b)
    names = {n for n, _ in model.named_parameters()}
    assert not any("feature" in n or "time" in n for n in names)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SASRecModel(SASRecConfig(n_items=20, max_len=16, dropout=0.0, attn_dropout=p)),
        lambda p: SALConfig(n_items=20, max_len=16, window=4, block_size=4, top_k=1, dropout=0.0, attn_dropout=p,
                            time_encoding=False).build(),
        lambda p: SALConfig(n_items=20, max_len=16, attention="dense", dropout=0.0, attn_dropout=p,
                            time_encoding=False).build(),
    ],
    ids=["sasrec", "sal-sparse", "sal-dense"],
)
def test_attention_dropout_reaches_the_attention(make):
    items = torch.randint(1, 21, (3, 16))
    torch.manual_seed(0)
    off = make(0.0).train()
    # with every other dropout off, training-mode outputs are deterministic without attention dropout...
    torch.testing.assert_close(off(items), off(items))
    torch.manual_seed(0)
    on = make(0.5).train()
    on.load_state_dict(off.state_dict())
    # ...and differ between calls (and from the undropped model) once attention dropout is on
    assert not torch.allclose(on(items), on(items))
    on.eval()
    torch.testing.assert_close(on(items), off.eval()(items))


def test_prefix_gets_the_same_hidden_state_as_the_whole_sequence():
    model = SASRecModel(SASRecConfig(n_items=30, max_len=12)).eval()
    seq = torch.randint(1, 31, (1, 10))
    whole = model(seq)
    padded_prefix = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq[:, :6]], dim=1)
    torch.testing.assert_close(model(padded_prefix)[:, -1], whole[:, 5])


def test_seen_bias_option_shifts_the_scores_of_consumed_items_as_in_sal():
    torch.manual_seed(0)
    plain = SASRecModel(SASRecConfig(n_items=9, max_len=8)).eval()
    biased = SASRecModel(SASRecConfig(n_items=9, max_len=8, seen_bias=True)).eval()
    biased.load_state_dict({**plain.state_dict(), "seen_bias.weight": torch.tensor(-2.0)})
    items = torch.tensor([[0, 0, 4, 2, 4, 7]])
    targets = torch.tensor([[0, 0, 2, 4, 7, 1]])
    with torch.no_grad():
        seen = torch.zeros(9)
        seen[[3, 1, 6]] = 1.0  # items 4, 2, 7
        torch.testing.assert_close(biased.full_sort_predict(items), plain.full_sort_predict(items) - 2.0 * seen)
        logits = plain(items) @ plain.item_embedding.weight[1:].T  # (1, 6, 9)
        history = torch.zeros(1, 6, 9)
        for t in range(6):
            for item in items[0, : t + 1].tolist():
                if item:
                    history[0, t, item - 1] = 1.0
        mask = targets > 0
        expected = torch.nn.functional.cross_entropy((logits - 2.0 * history)[mask], targets[mask] - 1)
        torch.testing.assert_close(biased.calculate_loss(items, None, targets), expected)


def test_training_windows_train_every_target_exactly_once():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 2, 5, 9, 10, 23, 41])
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 50, offsets[-1])
    ts = np.arange(offsets[-1]) * 7
    max_len = 8
    w_off, w_items, w_ts = training_windows((offsets, items, ts), max_len)
    batch = pad_sequences(w_off, w_items, w_ts, np.arange(len(w_off) - 1), max_len, with_targets=True)
    got = sorted(zip(batch.items[batch.targets > 0].tolist(), batch.targets[batch.targets > 0].tolist()))
    want = sorted(
        (int(items[a + t]), int(items[a + t + 1])) for a, n in zip(offsets[:-1], lengths) for t in range(n - 1)
    )
    assert got == want  # every (input, target) pair of every user, none twice, none lost to truncation
    assert np.diff(w_off).max() <= max_len + 1
    assert training_windows((offsets[:4], items[: offsets[3]], ts[: offsets[3]]), max_len)[0].tolist() == offsets[
        :4
    ].tolist()  # short histories stay whole


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_strided_windows_train_every_target_once_with_the_promised_context(stride):
    lengths = np.array([1, 2, 5, 9, 10, 23, 41])
    offsets = np.r_[0, np.cumsum(lengths)]
    events = np.arange(1, offsets[-1] + 1)  # item = event id + 1, so each target names its own event
    max_len = 8
    windows, skip = training_windows((offsets, events, events * 7), max_len, stride, with_skip=True)
    batch = pad_sequences(*windows, np.arange(len(windows[0]) - 1), max_len, with_targets=True, skip=skip)
    has = batch.targets > 0
    target_event = batch.targets[has].numpy() - 1
    firsts = offsets[:-1]
    assert sorted(target_event.tolist()) == np.setdiff1d(np.arange(offsets[-1]), firsts).tolist()
    # context = inputs the target's position sees; the reference (one example per prefix) sees min(t, max_len)
    context = torch.cumsum((batch.items > 0).long(), dim=1)[has].numpy()
    user = np.searchsorted(offsets, target_event, side="right") - 1
    full = np.minimum(target_event - offsets[user], max_len)
    assert (context >= np.minimum(full, max_len - stride + 1)).all()
    assert (context <= full).all()
    if stride == 1:
        assert (context == full).all()
    with pytest.raises(ValueError, match="stride"):
        training_windows((offsets, events, events), max_len, max_len + 1)


@pytest.mark.parametrize("weighting", ["target", "batch"])
def test_target_weighting_gives_every_target_the_same_weight_over_an_epoch(monkeypatch, weighting):
    # Histories of very different lengths land in different batches. Optimizer steps are recorded, not taken, so
    # the weights stay put: with "target" weighting the epoch's summed gradient is n_batches x the gradient of the
    # mean loss over all targets (each target weighs the same, as in the reference's batches of random prefixes).
    rng = np.random.default_rng(1)
    lengths = np.array([3, 3, 3, 3, 40, 40, 40, 40])
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 30, offsets[-1])
    cfg = SASRecConfig(n_items=30, d_model=16, max_len=64, dropout=0.0, attn_dropout=0.0)
    train = SALTrainConfig(
        **EPOCH_BUDGET, epochs=1, batch_size=4, weight_decay=0.0, grad_clip=None, progress=False, device="cpu",
        loss_weighting=weighting)
    grads = []

    def record(self, closure=None):
        grads.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).clone())

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    result = train_sal(cfg, train, (offsets, items, np.zeros_like(items)), np.zeros(len(lengths), dtype=np.int64))
    assert len(grads) == 2
    model = result.model.train()
    batch = pad_sequences(offsets, items, np.zeros_like(items), np.arange(len(lengths)), 64, with_targets=True)
    model.zero_grad()
    model.calculate_loss(batch.items, batch.timestamps, batch.targets).backward()
    params = [p for p in model.parameters() if p.ndim >= 2] + [p for p in model.parameters() if p.ndim < 2]
    want = 2 * torch.cat([p.grad.flatten() for p in params])
    same = torch.allclose(grads[0] + grads[1], want, atol=1e-6, rtol=1e-4)
    assert same == (weighting == "target")


def test_sasrec_learns_a_deterministic_successor():
    # every user walks the same cycle 1 -> 2 -> ... -> 12 -> 1 from a random start: the next item is a function of
    # the current one, which a trained SASRec must put first
    rng = np.random.default_rng(0)
    n_items, users, length = 12, 60, 20
    seqs = [((rng.integers(0, n_items) + np.arange(length)) % n_items) + 1 for _ in range(users)]
    offsets = np.r_[0, np.cumsum([length] * users)]
    items = np.concatenate(seqs)
    valid_targets = np.array([(s[-1] % n_items) + 1 for s in seqs])
    cfg = SASRecConfig(n_items=n_items, d_model=32, max_len=32, dropout=0.1, attn_dropout=0.1)
    train = SALTrainConfig(
        **EPOCH_BUDGET, epochs=40, batch_size=16, lr=3e-3, weight_decay=0.0, grad_clip=None, patience=40,
        progress=False, device="cpu")
    result = train_sal(cfg, train, (offsets, items, np.zeros_like(items)), valid_targets)
    assert result.best["val_mrr@10"] > 0.9  # 12 items: hr@10 would be trivial, the rank must be first
