"""Full-ranking metrics against hand-computed cases, the leave-one-out inputs, and the gate rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mufasa.data import sequences as seq
from mufasa.evaluation.gate import decide
from mufasa.evaluation.metrics import metrics_from_ranks, target_ranks
from mufasa.evaluation.protocol import PopularityScorer, evaluate, load_eval_data


def test_ranks_and_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.8, 0.1]])
    ranks = target_ranks(scores, torch.tensor([2, 2]))
    # user 0: only 0.9 beats 0.5 -> rank 1; user 1: tie with item 1 counts against the target -> rank 1
    assert ranks.tolist() == [1, 1]
    m = metrics_from_ranks(ranks, ks=(1, 2))
    assert m["hr@1"] == 0.0 and m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["mrr@2"] == pytest.approx(0.5)


def test_constant_scores_get_the_worst_rank_not_the_best():
    ranks = target_ranks(torch.zeros(3, 5), torch.tensor([0, 2, 4]))
    assert ranks.tolist() == [4, 4, 4]
    assert metrics_from_ranks(ranks, ks=(1,))["hr@1"] == 0.0


def test_k_larger_than_catalogue_counts_every_target():
    ranks = target_ranks(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]))
    m = metrics_from_ranks(ranks, ks=(50,))
    assert m["hr@50"] == 1.0 and 0 < m["ndcg@50"] <= 1.0


def test_excluded_items_cannot_outrank_and_target_is_never_excluded():
    scores = torch.tensor([[5.0, 4.0, 1.0]])
    exclude = torch.tensor([[True, False, True]])  # the target (2) is marked too: it must stay rankable
    assert target_ranks(scores, torch.tensor([2]), exclude).tolist() == [1]


def _store(tmp_path, rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype("int64")
    seq.write_split(seq.leave_one_out(df), tmp_path / "sequences")
    pd.DataFrame({"item_id": np.arange(1, 8), "title": [f"t{i}" for i in range(1, 8)]}).to_parquet(
        tmp_path / "items.parquet"
    )
    return load_eval_data(tmp_path / "sequences", tmp_path / "items.parquet")


def test_leave_one_out_inputs_never_contain_their_target_event(tmp_path):
    rows = [(u, i, 10 * u + i) for u in (1, 2, 3) for i in range(1, 7)]
    data = _store(tmp_path, rows)
    for split in (data.valid, data.test):
        for u in range(len(split.targets)):
            items, ts = split.histories.user(u)
            # the history ends strictly before the target event: test targets are the last event (item 6)
            assert len(items) == (4 if split.split == "valid" else 5)
    assert data.test.targets.tolist() == data.vocab.to_index(np.array([6, 6, 6])).tolist()
    assert data.valid.targets.tolist() == data.vocab.to_index(np.array([5, 5, 5])).tolist()
    # the test history is the train history plus the validation event
    t_items, _ = data.test.histories.user(0)
    assert data.vocab.to_ids(t_items).tolist() == [1, 2, 3, 4, 5]


class FixedScorer:
    """Every user gets the same scores of items 1..N (column j = item j + 1)."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def score(self, histories):
        return self.scores.expand(len(histories), -1)


def test_history_filter_removes_other_history_items(tmp_path):
    # user 1's test history is items 1..5 (catalogue 1..7); its test target, item 6, is new to it.
    data = _store(tmp_path, [(1, i, 10 + i) for i in (1, 2, 3, 4, 5)] + [(1, 6, 30)])
    target = int(data.test.targets[0])  # index of item 6
    assert data.vocab.to_ids(np.array([target])).tolist() == [6]
    scores = np.zeros(data.n_items, dtype=np.float32)
    for item, s in {1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0, 5: 5.0, 6: 4.0, 7: 1.0}.items():
        scores[data.vocab.to_index(np.array([item]))[0] - 1] = s
    unfiltered = evaluate(FixedScorer(scores), data.test, data.n_items, ks=(1, 2, 5))
    filtered = evaluate(FixedScorer(scores), data.test, data.n_items, ks=(1, 2, 5), filter_history=True)
    # unfiltered: items 1..5 all outrank item 6 -> rank 5; filtered: the history (1..5) is removed -> rank 0.
    # A filter that does nothing leaves hr@1 at 0.
    assert unfiltered["hr@5"] == 0.0 and unfiltered["mrr@5"] == 0.0
    assert filtered["hr@1"] == 1.0


def test_history_filter_never_removes_a_target_the_user_consumed_before(tmp_path):
    # user 1 watched item 2 early and again as the test target: history 1, 2, 3, 4, 5 -> target 2.
    data = _store(tmp_path, [(1, 1, 11), (1, 2, 12), (1, 3, 13), (1, 4, 14), (1, 5, 15), (1, 2, 16)])
    assert data.vocab.to_ids(data.test.targets).tolist() == [2]
    scores = np.zeros(data.n_items, dtype=np.float32)
    for item, s in {1: 9.0, 2: 8.0, 3: 7.0, 6: 6.0, 7: 5.0}.items():
        scores[data.vocab.to_index(np.array([item]))[0] - 1] = s
    unfiltered = evaluate(FixedScorer(scores), data.test, data.n_items, ks=(1, 2))
    filtered = evaluate(FixedScorer(scores), data.test, data.n_items, ks=(1, 2), filter_history=True)
    # unfiltered: only item 1 outranks the target -> rank 1. filtered: item 1 (history) is removed and the
    # target stays -> rank 0. A filter that drops the target too would rank it last (hr@2 = 0).
    assert unfiltered["hr@1"] == 0.0 and unfiltered["hr@2"] == 1.0
    assert filtered["hr@1"] == 1.0


def test_popularity_and_history_filter(tmp_path):
    rows = [(u, i, 10 * u + i) for u in (1, 2, 3) for i in (1, 2, 3, 4)]
    data = _store(tmp_path, rows)
    pop = PopularityScorer(data.train, data.n_items)
    m = evaluate(pop, data.test, data.n_items, ks=(1, 3))
    # train counts: items 1, 2 seen 3x; test target is item 4 (never in train) -> ranked behind 1, 2 and
    # tied with the 4 other unseen items (pessimistic) -> rank 6
    assert m["hr@3"] == 0.0
    filtered = evaluate(pop, data.test, data.n_items, ks=(1, 3, 4), filter_history=True)
    # items 1, 2, 3 are in every test history: removed, the target ties with 3 other unseen items -> rank 3
    assert filtered["hr@3"] == 0.0 and filtered["hr@4"] == 1.0
    assert evaluate(pop, data.test, data.n_items, ks=(10,))["hr@10"] == 1.0


def test_gate_refuses_degraded_and_keeps_reasons():
    pop, dense = {"ndcg@10": 0.02}, {"ndcg@10": 0.05}
    champion = {"ndcg@10": 0.06}
    good = decide({"ndcg@10": 0.061}, popularity=pop, sasrec=dense, champion=champion, max_regression_vs_champion=0.002)
    assert good.passed and good.as_tags()["gate.decision"] == "promoted"
    degraded = decide({"ndcg@10": 0.03}, popularity=pop, sasrec=dense, champion=champion)
    assert not degraded.passed
    assert degraded.checks == {"beats_popularity": True, "beats_sasrec": False, "no_regression": False}
    assert "FAIL" in degraded.as_tags()["gate.reasons"]
    no_dense = decide({"ndcg@10": 0.5}, popularity=pop, sasrec=None, champion=None)
    assert not no_dense.passed  # a missing baseline is never a pass
