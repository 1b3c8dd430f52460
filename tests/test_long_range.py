"""Planted long-range test targets (``tail_replay``) and the copy oracle that measures long-range recall."""

from __future__ import annotations

import numpy as np
import pytest

from mufasa.data.sequences import leave_one_out
from mufasa.data.synthetic import SyntheticConfig, generate, tail_replay_sources
from mufasa.evaluation.oracle import CopyOracleScorer, copy_scores
from mufasa.evaluation.protocol import Histories, evaluate


def test_copy_scores_prefers_the_longest_then_the_most_recent_match():
    #          0  1  2  3  4  5  6  7  8
    history = [5, 1, 2, 7, 9, 1, 2, 8, 1, 2]  # suffix (1, 2): matched at 2 and 6 (length 2, both preceded by 1)
    scores = copy_scores(np.array(history), n_items=10)
    assert scores[8 - 1] > scores[7 - 1] > -1  # after position 6 came 8, after 2 came 7: same length, 6 is later
    assert scores[3 - 1] == -1  # never followed a match
    longer = copy_scores(np.array([4, 1, 2, 3, 5, 1, 2, 6, 4, 1, 2]), n_items=10)  # (4, 1, 2) matched at 2 only
    assert np.argmax(longer) == 3 - 1


def test_tail_replay_copies_a_far_segment_over_the_last_events_and_nothing_else():
    base = SyntheticConfig(n_users=30, min_events=600, max_events=900, seed=3)
    cfg = SyntheticConfig(n_users=30, min_events=600, max_events=900, seed=3, tail_replay=8, tail_replay_gap=300)
    plain, planted = generate(base).interactions, generate(cfg).interactions
    assert (plain["timestamp"].to_numpy() == planted["timestamp"].to_numpy()).all()
    lengths = plain.groupby("user_id").size().to_numpy()
    src = tail_replay_sources(cfg, lengths)
    assert (src >= 0).all()
    for u, (n, s) in enumerate(zip(lengths, src), start=1):
        a = plain.loc[plain.user_id == u, "item_id"].to_numpy()
        b = planted.loc[planted.user_id == u, "item_id"].to_numpy()
        assert (b[: n - 8] == a[: n - 8]).all()  # only the tail changed
        assert (b[n - 8 :] == a[s : s + 8]).all() and s + 8 <= n - 8 - 300  # a copy from >= 300 events back
    with pytest.raises(ValueError, match="tail_replay"):
        SyntheticConfig(tail_replay=1)


def _test_split(cfg: SyntheticConfig):
    data = generate(cfg)
    split = leave_one_out(data.interactions)
    # test history = train + the validation event; items as indices (ids are 1..N already)
    users = split.test["user_id"].to_numpy()
    rows = np.searchsorted(split.train["user_id"].to_numpy(), users)
    seqs = [np.r_[split.train_items[split.train_offsets[r]:split.train_offsets[r + 1]], v]
            for r, v in zip(rows, split.valid["item_id"].to_numpy())]
    offsets = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
    items = np.concatenate(seqs).astype(np.int64)
    from mufasa.evaluation.protocol import EvalSet

    return EvalSet("test", Histories(users, offsets, items, np.zeros_like(items)), split.test["item_id"].to_numpy())


def test_the_oracle_recalls_planted_replays_and_not_unplanted_targets():
    common = dict(n_users=60, min_events=700, max_events=700, seed=1)
    planted = _test_split(SyntheticConfig(**common, tail_replay=8, tail_replay_gap=400))
    plain = _test_split(SyntheticConfig(**common))
    oracle = CopyOracleScorer(600)
    hit_planted = evaluate(oracle, planted, 600, ks=(10,))["hr@10"]
    hit_plain = evaluate(oracle, plain, 600, ks=(10,))["hr@10"]
    assert hit_planted > 0.9, hit_planted  # the replay's next item, found by matching the replayed prefix
    assert hit_plain < hit_planted - 0.4, (hit_plain, hit_planted)
