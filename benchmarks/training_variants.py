"""How the training objective's details move SASRec and MUFASA on MovieLens-100k (validation decides; test is shown).

Each variant is a set of ``SALTrainConfig`` overrides (loss weighting, batching, window stride; and under the key
``"model"``, model-config overrides such as ``{"model": {"prev_item": true}}``) applied to the reference SASRec
(``evaluate.sasrec``) or to MUFASA (``train_sal``, fused vectors from ``data/fused``), trained once per seed
with the project's trainer. Results are appended to ``benchmarks/results/training-variants.jsonl`` after every
run and summarised (mean ± std over seeds) in ``training-variants.md``.

Needs the pipeline's data (``make run`` or ``mufasa stage ingest|sequences|features|train_mfl --no-track``).

    python benchmarks/training_variants.py --model sasrec --seeds 0 1 2 --workers 2 \
        --variant base '{}' --variant target-random '{"loss_weighting": "target", "batching": "random"}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_one(model: str, variant: str, overrides: dict, seed: int, threads: int) -> dict:
    import torch

    from mufasa.evaluation.protocol import evaluate_protocols
    from mufasa.pipeline.params import load_params, sal_configs, sasrec_configs
    from mufasa.pipeline.paths import ProjectPaths
    from mufasa.pipeline.sal_model import SALScorer, fit, load_inputs

    torch.set_num_threads(threads)
    params = load_params(ROOT / "params.yaml")
    inputs = load_inputs(ProjectPaths(ROOT))
    n = inputs.data.n_items
    if model == "sasrec":
        model_cfg, train_cfg = sasrec_configs(params, n_items=n)
        fused = None
    else:
        fused = inputs.fused
        model_cfg, train_cfg = sal_configs(params, n_items=n, item_feature_dim=0 if fused is None else fused.shape[1])
    train_overrides = {k: v for k, v in overrides.items() if k != "model"}
    model_cfg = dataclasses.replace(model_cfg, **overrides.get("model", {}))
    train_cfg = dataclasses.replace(train_cfg, seed=seed, progress=False, **train_overrides)
    t0 = time.perf_counter()
    result = fit(model_cfg, train_cfg, inputs, ROOT, f"variants-{model}-{variant}-{seed}", fused)
    test = evaluate_protocols(SALScorer(result.model), inputs.data.test, n, ks=(10, 50), batch_size=512)
    unfiltered = test["unfiltered"][0]
    return {
        "model": model, "variant": variant, "overrides": overrides, "seed": seed,
        "epochs": result.epochs_run, "best_epoch": result.best.get("epoch"),
        "val_ndcg@10": result.best.get("val_ndcg@10"), "val_hr@10": result.best.get("val_hr@10"),
        "test_ndcg@10": unfiltered["ndcg@10"], "test_hr@10": unfiltered["hr@10"], "test_hr@50": unfiltered["hr@50"],
        "minutes": (time.perf_counter() - t0) / 60,
    }


def summarise(rows: list[dict]) -> str:
    keys = sorted({(r["model"], r["variant"]) for r in rows})
    lines = [
        "# Training variants on MovieLens-100k (unfiltered test protocol; validation chose, test shown)",
        "",
        "Produced by `python benchmarks/training_variants.py` (raw rows: `training-variants.jsonl`). Mean ± std "
        "over seeds.",
        "",
        "| model | variant | overrides | seeds | val NDCG@10 | test NDCG@10 | test HR@10 | test HR@50 | min/run |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def ms(values):
        a = np.asarray(values, dtype=float)
        return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"

    for model, variant in keys:
        rs = [r for r in rows if r["model"] == model and r["variant"] == variant]
        lines.append(
            f"| {model} | {variant} | `{json.dumps(rs[0]['overrides'])}` | {sorted(r['seed'] for r in rs)} | "
            f"{ms([r['val_ndcg@10'] for r in rs])} | {ms([r['test_ndcg@10'] for r in rs])} | "
            f"{ms([r['test_hr@10'] for r in rs])} | {ms([r['test_hr@50'] for r in rs])} | "
            f"{np.mean([r['minutes'] for r in rs]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sasrec", "mufasa"], default="sasrec")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1, help="parallel runs (1 thread each when > 1)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "training-variants.jsonl"
    jobs = [(args.model, name, json.loads(js), seed) for seed in args.seeds for name, js in args.variant]
    threads = 1 if args.workers > 1 else 2
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, *job, threads) for job in jobs]
        for fut in futures:
            row = fut.result()
            with raw.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            rows = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
            (RESULTS / "training-variants.md").write_text(summarise(rows))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
