"""Throughput of MFL training and inference (items/second) on one device; a script, not a test.

    .venv/bin/python benchmarks/mfl.py                      # auto device, ML-100k-sized synthetic catalogue
    .venv/bin/python benchmarks/mfl.py --device cpu --epochs 6

Data: a synthetic catalogue of ``--n-items`` (default 1,682, MovieLens-100k's count) and ``--n-users`` (943)
users from ``mufasa.data.synthetic`` (~100k events), with encoder stand-ins of the real widths: text (N, 384)
bag-of-word-vectors over the generated titles, image (N, 1280) for ~70% of items (the rest masked), side
(N, 93) = ML-100k's side width. The collaborative space comes from the train split.

Measures (after one warm-up epoch / call):

- ``collaborative_space``: seconds for co-occurrence -> PPMI -> SVD over the train split;
- ``train``: items/s of MFL training (all four default losses on, AdamW, grad clipping), the median over epochs
  2..E of training items per epoch / training seconds of that epoch (validation excluded);
- ``train_epoch_wall``: median wall seconds of a whole epoch incl. the held-out validation and checkpoint-free
  bookkeeping;
- ``inference``: items/s of ``encode_items`` (eval mode, batch ``--infer-batch``) over all items, median of 5;
- ``diagnostics``: seconds of ``mfl_diagnostics`` over all items.

Also reports the trained model's diagnostics (title-/collaborative-kNN overlap vs. the untrained model) and
writes ``benchmarks/results/mfl-<device>.json`` and ``.md``, plus the training-curve and PCA plots as
``mfl-<device>-curves.png`` / ``mfl-<device>-projection.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from mufasa.measure import timed
from mufasa.data.features import ItemFeatures
from mufasa.data.sequences import leave_one_out
from mufasa.data.synthetic import SyntheticConfig, generate, stand_in_features
from mufasa.models.fusion import FusionConfig, MultimodalFusion
from mufasa.training.common import resolve_device
from mufasa.training.diagnostics import mfl_diagnostics, plot_fused_projection, plot_training_curves
from mufasa.training.mfl_trainer import MFLTrainConfig, collaborative_space, encode_items, train_mfl

RESULTS = Path(__file__).resolve().parent / "results"
ML100K_SIDE_DIM = 93  # 19 genres + 10 year columns + 64 KG-entity dims (data/features/meta.json)


def run(args: argparse.Namespace) -> dict:
    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    syn = SyntheticConfig(n_users=args.n_users, n_items=args.n_items, n_genres=8, clusters_per_genre=4,
                          min_events=20, max_events=400, seed=args.seed)
    ds = generate(syn)
    text, image, mask, side = stand_in_features(ds, ML100K_SIDE_DIM, args.seed).arrays()
    split = leave_one_out(ds.interactions, min_events=3)
    collab_s, (collab, collab_mask) = timed(
        lambda: collaborative_space(split.train_offsets, split.train_items, args.n_items, dim=64, seed=args.seed)
    )
    fusion = FusionConfig(side_dim=side.shape[1])
    train_cfg = MFLTrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs, seed=args.seed,
                               device=str(device), progress=False)

    torch.manual_seed(args.seed)
    untrained = MultimodalFusion(fusion).to(device)
    features = ItemFeatures(text, image, mask, side)
    tensors = features.to(device)
    before = mfl_diagnostics(encode_items(untrained, tensors).cpu().numpy(), text, collab, collab_mask)

    wall_s, result = timed(lambda: train_mfl(fusion, train_cfg, features, collab, collab_mask, ds.item_genre))
    later = result.history[1:] or result.history
    train_rate = statistics.median(r["items_per_s"] for r in later)
    epoch_wall = statistics.median(r["seconds"] for r in later)
    n_train_items = int(round(later[0]["items_per_s"] * later[0]["train_seconds"]))

    model = result.model
    encode_items(model, tensors, batch_size=args.infer_batch)  # warm-up
    infer = [timed(lambda: encode_items(model, tensors, batch_size=args.infer_batch))[0] for _ in range(5)]
    infer_s = statistics.median(infer)
    diag_s, _ = timed(lambda: mfl_diagnostics(result.fused, text, collab, collab_mask))

    stem = args.out_dir / f"mfl-{device.type}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_training_curves(result.history, Path(f"{stem}-curves.png"))
    plot_fused_projection(result.fused, ds.item_genre, list(ds.genre_names), Path(f"{stem}-projection.png"))

    n = args.n_items
    results = [
        {"name": "collaborative_space", "n": n, "seconds": collab_s, "items_per_s": n / collab_s,
         "note": f"{len(split.train_items)} train events, window 5, dim 64"},
        {"name": "train", "n": n_train_items, "seconds": n_train_items / train_rate, "items_per_s": train_rate,
         "note": f"median of epochs 2..{args.epochs}, batch {args.batch_size}, 4 losses, AdamW"},
        {"name": "train_epoch_wall", "n": n_train_items, "seconds": epoch_wall,
         "items_per_s": n_train_items / epoch_wall, "note": "whole epoch incl. held-out validation"},
        {"name": "inference", "n": n, "seconds": infer_s, "items_per_s": n / infer_s,
         "note": f"encode_items, eval mode, batch {args.infer_batch}, median of 5"},
        {"name": "diagnostics", "n": n, "seconds": diag_s, "items_per_s": n / diag_s,
         "note": "mfl_diagnostics (SVD, uniformity, 2-3 kNN overlaps)"},
    ]
    keys = ("title_knn_overlap", "collab_knn_overlap", "effective_rank", "uniformity")
    return {
        "benchmark": "mfl",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": load_at_start,
        "data": {"source": "synthetic", "n_items": n, "n_users": args.n_users, "n_events": len(ds.interactions),
                 "image_share": float(mask.mean()), "side_dim": int(side.shape[1])},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out_dir"},
        "train_wall_seconds": wall_s,
        "epochs_run": result.epochs_run,
        "results": results,
        "quality": {"untrained": {k: before.get(k) for k in keys}, "trained": {k: result.diagnostics.get(k)
                                                                             for k in keys},
                    "best_epoch": result.diagnostics.get("best_epoch")},
    }


def to_markdown(report: dict) -> str:
    d = report["data"]
    lines = [
        f"# MFL throughput ({report['device']})",
        "",
        f"device: {report['device']} ({report['device_name']}), torch {report['torch']}, python {report['python']}, "
        f"threads {report['threads']} of {report['cpu_count']} CPUs, run {report['created_utc']}, "
        f"1-min load average at start {report['loadavg_1m_at_start']}",
        f"data: synthetic, {d['n_items']} items (ML-100k size), {d['n_users']} users, {d['n_events']} events, "
        f"{d['image_share']:.0%} items with an image, side dim {d['side_dim']}; "
        f"{report['epochs_run']} epochs in {report['train_wall_seconds']:.1f} s",
        "",
        "| stage | items | seconds | items/s | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['n']} | {r['seconds']:.3f} | {r['items_per_s']:.1f} | {r['note']} |")
    q = report["quality"]
    lines += ["", f"quality after {report['epochs_run']} epochs (best epoch {q['best_epoch']:.0f}):", "",
              "| | title kNN@10 overlap | collaborative kNN@10 overlap | effective rank | uniformity |",
              "|---|---:|---:|---:|---:|"]
    for name in ("untrained", "trained"):
        v = q[name]
        lines.append(f"| {name} | {v['title_knn_overlap']:.3f} | {v['collab_knn_overlap']:.3f} | "
                     f"{v['effective_rank']:.1f} | {v['uniformity']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--n-items", type=int, default=1682, help="catalogue size (ML-100k: 1,682)")
    parser.add_argument("--n-users", type=int, default=943, help="users (ML-100k: 943)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    report = run(args)
    stem = args.out_dir / f"mfl-{report['device']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {stem}.json and {stem}.md (+ -curves.png, -projection.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
