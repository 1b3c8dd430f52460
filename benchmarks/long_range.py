"""Long-range recall through the pipeline stages: full SAL vs dense attention vs window-only vs the copy oracle.

    .venv/bin/python benchmarks/long_range.py                                   # 1,024 events, seeds 0-2
    .venv/bin/python benchmarks/long_range.py --length 4096 --batch-size 4      # longer (GPU advised)
    .venv/bin/python benchmarks/long_range.py --length 512 --max-steps 600 --seeds 0 --out /tmp/lr   # quick look

For every seed, a fresh project folder gets the shipped ``params.yaml`` with these overrides and runs the stages
exactly as ``dvc repro`` does (``python -m mufasa.cli stage NAME --root <folder>``: ingest, validate, sequences,
features, train_mfl, train_sal, evaluate):

- data: ``ingest.synthetic`` with ``--users`` users of exactly ``--length`` + 2 events, interest blocks and random
  replays as shipped, and ``tail_replay``: every user's last ``--tail`` events replay a segment of the user's own
  history ending at least ``--gap`` events earlier (far outside the 64-event window), so the validation and test
  targets are predictable only by looking back (:func:`mufasa.data.synthetic.tail_replay_sources`);
- model: the shipped ``train_sal.model`` (window 64, blocks of 32, top-4 selection, MFL on) with ``max_len`` =
  ``--length``; training: the shipped rule with the step budget resolved from the data (``--batch-size``; at most
  ``--max-steps`` steps when given: say so when you publish);
- evaluation: ``evaluate`` with the ablations ``dense_attention`` and ``window_only`` and the baselines
  ``popularity`` and ``copy_oracle`` (:mod:`mufasa.evaluation.oracle`), test split, full ranking, history kept.

Acceptance (issue 16): mean over seeds of test HR@10, full SAL >= 0.95 x dense, >= 2 x window-only and >= 0.8 x
the oracle. Writes ``<out>.json`` (every seed's eval.json and the settings) and ``<out>.md`` after every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "sequences", "features", "train_mfl", "train_sal", "evaluate")
MODELS = ("mufasa", "dense_attention", "window_only", "copy_oracle", "popularity")


def project_params(args, seed: int) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ingest"]["source"] = "synthetic"
    raw["ingest"]["synthetic"].update({
        "n_users": args.users, "min_events": args.length + 2, "max_events": args.length + 2,
        "tail_replay": args.tail, "tail_replay_gap": args.gap, "seed": seed,
    })
    raw["features"]["progress"] = False
    raw["train_mfl"]["train"].update({"progress": False, "seed": seed})
    raw["train_sal"]["model"]["max_len"] = args.length
    train = raw["train_sal"]["train"]
    train.update({"seed": seed, "progress": False, "batch_size": args.batch_size, "warmup_steps": None,
                  "lr_schedule": "cosine", "min_eval_steps": args.min_eval_steps, "min_evals": args.min_evals})
    if args.max_steps:
        train["max_steps"] = args.max_steps
    for assignment in args.set:  # e.g. train_sal.model.dropout=0.1 (YAML values), applied last
        key, _, value = assignment.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if part not in node:
                raise SystemExit(f"--set {assignment}: no section {part!r} in params.yaml")
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"--set {assignment}: no key {leaf!r} under {'.'.join(parents)}")
        node[leaf] = yaml.safe_load(value)
    raw["evaluate"].update({"baselines": ["popularity", "copy_oracle"], "ablations": list(args.ablations),
                            "ks": [10, 50]})
    return raw


def run_seed(args, seed: int, folder: Path) -> dict:
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(project_params(args, seed), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    seconds = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "mufasa.cli", "stage", stage, "--root", str(folder), "--no-track"]
        done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"stage {stage} (seed {seed}) failed:\n{done.stderr[-4000:]}")
        seconds[stage] = time.perf_counter() - t0
        print(f"seed {seed}: {stage} {seconds[stage]:.0f} s", flush=True)
    evaluation = json.loads((folder / "metrics" / "eval.json").read_text())
    sal = json.loads((folder / "metrics" / "sal.json").read_text())
    return {"seed": seed, "models": evaluation["models"], "valid": evaluation["valid"], "sal_best": sal,
            "seconds": seconds}


def summary(per_seed: list[dict]) -> dict:
    import numpy as np

    out = {}
    for model in MODELS:
        hr = [s["models"][model]["hr@10"] for s in per_seed if model in s["models"]]
        nd = [s["models"][model]["ndcg@10"] for s in per_seed if model in s["models"]]
        if hr:
            out[model] = {"hr@10": float(np.mean(hr)), "hr@10_std": float(np.std(hr)), "ndcg@10": float(np.mean(nd)),
                          "seeds": len(hr)}
    sal = out.get("mufasa", {}).get("hr@10", float("nan"))
    ratio = lambda other: sal / out[other]["hr@10"] if other in out and out[other]["hr@10"] > 0 else float("nan")  # noqa: E731
    out["criteria"] = {
        "sal_vs_dense": {"ratio": ratio("dense_attention"), "target": 0.95},
        "sal_vs_window_only": {"ratio": ratio("window_only"), "target": 2.0},
        "sal_vs_oracle": {"ratio": ratio("copy_oracle"), "target": 0.8},
    }
    for c in out["criteria"].values():
        c["met"] = bool(c["ratio"] >= c["target"])
    return out


def markdown(payload: dict) -> str:
    s, summ = payload["settings"], payload["summary"]
    lines = [
        "# Long-range recall through the pipeline stages",
        "",
        f"`{payload['command']}`: {s['users']} synthetic users of {s['length']:,} + 2 events; every user's last "
        f"{s['tail']} events replay a segment ending >= {s['gap']} events earlier (the validation and test targets "
        f"lie inside it). Shipped model and attention (window 64, blocks of 32, top-4), max_len {s['length']}, "
        f"batch {s['batch_size']}, budget: {s['budget']}"
        + (f", overrides {', '.join(f'`{o}`' for o in s['overrides'])}" if s.get("overrides") else "")
        + ". Test split, every item ranked, history kept. "
        f"Seeds {[r['seed'] for r in payload['seeds']]}.",
        "",
        "| model | test HR@10 (mean ± std) | test NDCG@10 | seeds |",
        "|---|---:|---:|---:|",
    ]
    for model in MODELS:
        if model in summ:
            m = summ[model]
            lines.append(f"| {model} | {m['hr@10']:.4f} ± {m['hr@10_std']:.4f} | {m['ndcg@10']:.4f} | {m['seeds']} |")
    lines += ["", "| criterion | full SAL / other (HR@10) | target | met |", "|---|---:|---:|---|"]
    for name, c in summ["criteria"].items():
        lines.append(f"| {name} | {c['ratio']:.3f} | >= {c['target']} | {'yes' if c['met'] else 'no'} |")
    steps = [r["sal_best"].get("step") for r in payload["seeds"]]
    lines += ["", f"Full SAL's best validation step per seed: {steps}; stage seconds per seed: "
              + "; ".join(json.dumps({k: round(v) for k, v in r["seconds"].items()}) for r in payload["seeds"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--tail", type=int, default=8)
    ap.add_argument("--gap", type=int, default=None, help="default: half the length")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 16,384 tokens / length")
    ap.add_argument("--min-eval-steps", type=int, default=100)
    ap.add_argument("--min-evals", type=int, default=30)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--ablations", nargs="*", default=["dense_attention", "window_only"],
                    choices=["dense_attention", "window_only"],
                    help="variants trained beside full SAL (none: a quick look at full SAL alone; the criteria "
                         "against a variant left out read nan)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml value, e.g. train_sal.model.dropout=0.1 (repeatable; say so when "
                         "you publish)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "long-range")
    args = ap.parse_args()
    args.gap = args.gap if args.gap is not None else args.length // 2
    args.batch_size = args.batch_size or max(1, 16384 // args.length)
    budget = f"min_eval_steps {args.min_eval_steps}, min_evals {args.min_evals}" + (
        f", capped at {args.max_steps} steps" if args.max_steps else "")
    payload = {"command": "python benchmarks/long_range.py " + " ".join(sys.argv[1:]),
               "settings": {"length": args.length, "users": args.users, "tail": args.tail, "gap": args.gap,
                            "batch_size": args.batch_size, "budget": budget, "overrides": args.set,
                            "ablations": list(args.ablations)},
               "seeds": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"mufasa-long-range-{seed}-") as tmp:
            payload["seeds"].append(run_seed(args, seed, Path(tmp)))
        payload["summary"] = summary(payload["seeds"])
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        args.out.with_suffix(".md").write_text(markdown(payload))
        print(markdown(payload), flush=True)


if __name__ == "__main__":
    main()
