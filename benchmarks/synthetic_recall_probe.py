"""Does SAL learn to recall on the long-range benchmark's synthetic data, and after how many steps?

    .venv/bin/python benchmarks/synthetic_recall_probe.py                        # replay rate 0.15 (shipped)
    .venv/bin/python benchmarks/synthetic_recall_probe.py --replay-prob 0.5 --lags 2

The data of ``benchmarks/long_range.py`` without the rest of the pipeline (no MFL features, no time encoding: the
model sees item IDs only), so one run is cheap enough to watch the loss plateau: ``--users`` synthetic users of
``--length`` + 2 events (600 items, the shipped generator, ``--replay-prob`` the share of interest blocks that
replay an earlier block of the same user), the last 8 events replaying a segment that ends >= L/2 events earlier.
Training: every user's first L events, ``train_sal`` (loss at every position), batch ``--batch-size``, Adam lr 3e-3
constant, no dropout. Model: SAL at the shipped attention settings (window 64, blocks of 32, top-4), 2 layers,
width 64, ``--heads`` heads, ``prev_item`` with ``--lags`` lags. Metric: test HR@10 of the first 500 users'
last event (inside the planted replay) from their previous L events, every item ranked, after every epoch
(training resumes from its checkpoint). A diagnostic probe: prints, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from mufasa.models.sal import SALConfig  # noqa: E402
from mufasa.training.sal_trainer import SALTrainConfig, train_sal  # noqa: E402
from replay_match_ceiling import N_ITEMS, long_range_histories  # noqa: E402
from tests.helpers import EPOCH_BUDGET  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lags", type=int, default=1, help="SALConfig.prev_lags")
    ap.add_argument("--replay-prob", type=float, default=0.15, help="ingest.synthetic.replay_prob")
    ap.add_argument("--seed", type=int, default=0, help="data, model and training seed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    L, U = args.length, args.users
    items, stamps = long_range_histories(L, U, args.seed, args.replay_prob)  # stamps unused: no time encoding
    seqs = (np.arange(U + 1) * L, items[:, :-2].reshape(-1), stamps[:, :-2].reshape(-1))
    test_x, test_y = torch.as_tensor(items[:500, 1:-1]), torch.as_tensor(items[:500, -1])
    cfg = SALConfig(n_items=N_ITEMS, d_model=64, n_layers=2, n_heads=args.heads, max_len=L, dropout=0.0,
                    time_encoding=False, prev_item=True, prev_lags=args.lags)
    checkpoints = tempfile.mkdtemp(prefix="synthetic-recall-probe-")
    started = time.time()
    for epochs in range(1, args.epochs + 1):
        train_cfg = SALTrainConfig(**EPOCH_BUDGET, epochs=epochs, batch_size=args.batch_size, lr=3e-3,
                                   progress=False, seed=args.seed, patience=1000)
        result = train_sal(cfg, train_cfg, seqs, np.zeros(U, dtype=np.int64), checkpoint_dir=checkpoints)
        model = result.model.eval()
        with torch.no_grad():
            top = model.full_sort_predict(test_x, None).topk(10, dim=1).indices + 1
        hr = (top == test_y[:, None]).any(dim=1).float().mean().item()
        print(f"L={L} replay_prob={args.replay_prob} lags={args.lags} epoch {epochs} "
              f"step {epochs * result.budget.steps_per_epoch} loss {result.history[-1]['loss']:.3f} "
              f"test HR@10 {hr:.3f} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
