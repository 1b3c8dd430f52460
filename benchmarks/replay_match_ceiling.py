"""How long a match must a model make to recall the long-range test targets of the synthetic data?

    .venv/bin/python benchmarks/replay_match_ceiling.py                      # L = 512 .. 8,192

The long-range benchmark (``benchmarks/long_range.py``) plants, per user, a replay of an earlier segment over the
last 8 events (``ingest.synthetic.tail_replay``, the source ending >= L/2 events back); the test target is the
replay's last event. The copy oracle (:func:`mufasa.evaluation.oracle.copy_scores`) finds it by matching the
history's suffix as far back as needed. A model only makes the matches its inputs allow in one query-key product:
with ``SALConfig.prev_item`` a key carries the item before it, so one attention step matches the *current* item
(a match of length 1); a match of length 2 needs the item before that as well.

For each history length this prints and writes the test HR@10 of the copy oracle with its match capped at 1, 2, 3
and 64 events (``max_match``): the ceiling of a model that recalls through matches of that length. Synthetic data
as the benchmark makes it (the shipped generator settings, ``--users`` users of L + 2 events, tail 8, gap L/2,
seed 0). Writes ``benchmarks/results/replay-match-ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mufasa.data.synthetic import SyntheticConfig, generate  # noqa: E402
from mufasa.evaluation.oracle import copy_scores  # noqa: E402

MATCHES = (1, 2, 3, 64)


N_ITEMS = 600


def long_range_histories(length: int, users: int, seed: int, replay_prob: float = 0.15) -> tuple[np.ndarray, ...]:
    """(items, timestamps), each (users, length + 2): the synthetic users ``benchmarks/long_range.py`` makes (the
    shipped generator, the last 8 events replaying a segment that ends >= length / 2 events earlier)."""
    cfg = SyntheticConfig(n_users=users, n_items=N_ITEMS, min_events=length + 2, max_events=length + 2,
                          tail_replay=8, tail_replay_gap=length // 2, seed=seed, replay_prob=replay_prob)
    data = generate(cfg).interactions
    return tuple(data[c].to_numpy().reshape(users, length + 2) for c in ("item_id", "timestamp"))


def ceiling(length: int, users: int, seed: int) -> dict:
    histories, _ = long_range_histories(length, users, seed)
    row = {"length": length, "users": users}
    for m in MATCHES:
        hits, candidates = [], []
        for seq in histories:
            history, target = seq[:-1], int(seq[-1])
            scores = copy_scores(history, N_ITEMS, max_match=m)
            ranked = np.argsort(-scores, kind="stable")[:10] + 1
            hits.append(target in ranked[scores[ranked - 1] > -1])
            candidates.append(int((scores > -1).sum()))
        row[f"hr@10_match{m}"] = float(np.mean(hits))
        row[f"candidates_median_match{m}"] = float(np.median(candidates))
    # match of length 1 weighed as equal attention logits weigh it: by how often each item followed the last item
    hits = []
    for seq in histories:
        history, target = seq[:-1], int(seq[-1])
        followers = history[1:][history[:-1] == history[-1]]
        items, counts = np.unique(followers, return_counts=True)
        top = items[np.argsort(-counts, kind="stable")[:10]]
        hits.append(target in top)
    row["hr@10_match1_by_count"] = float(np.mean(hits))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "replay-match-ceiling")
    args = ap.parse_args()
    rows = []
    for length in args.lengths:
        rows.append(ceiling(length, args.users, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/replay_match_ceiling.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = ["# The match length that recalling the long-range test targets needs", "",
             f"`{command.strip()}`: synthetic users as `benchmarks/long_range.py` makes them ({args.users} users of "
             "L + 2 events, the last 8 replaying a segment that ends >= L/2 events earlier, seed "
             f"{args.seed}). Test HR@10 of the copy oracle with its match capped at m events (the item that "
             "followed each earlier occurrence of the history's last m items, ranked by match length, then recency); "
             "in brackets the median number of candidates (items that followed an earlier occurrence of the "
             "history's last item, the same set for every m: m only orders them). *By count*: the items that "
             "followed the last item ranked by how often they did, as equal attention logits on every match weigh "
             "them.", "",
             "| L | " + " | ".join(f"m = {m}" for m in MATCHES) + " | m = 1, by count |",
             "|---:|" + "---:|" * (len(MATCHES) + 1)]
    for r in rows:
        lines.append(f"| {r['length']:,} | " + " | ".join(
            f"{r[f'hr@10_match{m}']:.3f} ({r[f'candidates_median_match{m}']:.0f})" for m in MATCHES)
                     + f" | {r['hr@10_match1_by_count']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
