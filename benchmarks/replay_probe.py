"""Does SAL learn to recall a replayed session far outside its window, and after how many steps?

    .venv/bin/python benchmarks/replay_probe.py --prev-item --users 4000 --epochs 12    # shipped attention sizes
    .venv/bin/python benchmarks/replay_probe.py --variant dense --prev-item --users 4000 --epochs 16

Every run behind benchmarks/results/replay-probe.md, with its command, is listed there.

Data (tests/test_sal.py ``replay_data``): per user a random session of ``--session`` items out of 200, ``--filler``
random other items, then the session replayed verbatim (``--min-filler``: gaps drawn per user). Model: full SAL
(``--variant``), 2 layers, width ``--d-model`` (64), ``--heads`` (2), no dropout, no time encoding, ``--prev-item``
for ``SALConfig.prev_item``, ``--seen-bias`` for ``SALConfig.seen_bias``; training: ``train_sal``,
``--batch-size`` (32), constant ``--lr``, ``--seed``.
Metric: NDCG@10 of the replayed items (from the replay's 2nd item) on 200 fresh users (``--test-seed``), printed
after every epoch (training resumes from its checkpoint, bit for bit) or once at the end with ``--one-shot``.
A diagnostic probe: prints, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mufasa.models.sal import SALConfig  # noqa: E402
from mufasa.training.sal_trainer import SALTrainConfig, train_sal  # noqa: E402
from tests.helpers import EPOCH_BUDGET  # noqa: E402
from tests.test_sal import replay_data, replay_ndcg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=("full", "window", "dense"), default="full")
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--session", type=int, default=32)
    ap.add_argument("--filler", type=int, default=192)
    ap.add_argument("--min-filler", type=int, default=None,
                    help="training gaps uniform in [min-filler, filler] (test users: always filler)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=None, help="default: the sequence length")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--prev-item", action="store_true", help="SALConfig.prev_item (previous-item embedding)")
    ap.add_argument("--seen-bias", action="store_true", help="SALConfig.seen_bias (learned score of consumed items)")
    ap.add_argument("--seed", type=int, default=0, help="training data and model seed")
    ap.add_argument("--test-seed", type=int, default=1, help="seed of the 200 test users")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one-shot", action="store_true", help="train all epochs in one call, evaluate once")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    n_items, S = 200, args.session
    train_rows = replay_data(args.users, n_items, seed=args.seed, session=S, filler=args.filler,
                             min_filler=args.min_filler)
    test_rows = replay_data(200, n_items, seed=args.test_seed, session=S, filler=args.filler)
    U, T = train_rows.shape
    seqs = (np.arange(U + 1) * T, train_rows.reshape(-1), np.zeros(U * T, dtype=np.int64))
    cfg = SALConfig(n_items=n_items, d_model=args.d_model, n_layers=2, n_heads=args.heads, window=args.window,
                    block_size=args.block, top_k=args.top_k, select_group=args.group, max_len=args.max_len or T,
                    dropout=0.0, time_encoding=False, prev_item=args.prev_item,
                    seen_bias=args.seen_bias)
    if args.variant == "window":
        cfg = replace(cfg, use_compressed=False, use_selected=False)
    elif args.variant == "dense":
        cfg = replace(cfg, attention="dense")
    checkpoints = None if args.one_shot else tempfile.mkdtemp(prefix="replay-probe-")
    started = time.time()
    for epochs in [args.epochs] if args.one_shot else range(1, args.epochs + 1):
        train_cfg = SALTrainConfig(**EPOCH_BUDGET, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                                   progress=False, seed=args.seed, patience=1000)
        result = train_sal(cfg, train_cfg, seqs, np.zeros(U, dtype=np.int64), checkpoint_dir=checkpoints)
        ndcg = replay_ndcg(result.model, test_rows, S)
        print(f"{args.variant} T={T} epoch {epochs} step {epochs * result.budget.steps_per_epoch} "
              f"loss {result.history[-1]['loss']:.3f} replay NDCG@10 {ndcg:.3f} ({time.time() - started:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
