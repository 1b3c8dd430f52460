"""Two GPU checks of the flex_attention path (issue 17), for scripts/gpu_check.sh; a script, not a test.

    python3 benchmarks/flex_gpu.py profile --device cuda --dtype bfloat16 --length 16384   # -> results/flex-profile-*
    python3 benchmarks/flex_gpu.py train --device cuda                                      # -> results/flex-train-*

``profile``: one fwd+bwd step of one SAL attention layer (d_model 64, 2 heads x 32, shipped sparse shape,
batch = ``--tokens`` / L) for each of block (the eager block path), flex (``impl="flex"``, whole step compiled),
flex-attn (only flex_attention compiled) and dense (cuDNN/flash SDPA), after warm-up, under torch.profiler:
GPU kernels launched, summed kernel time, wall time of the step (CUDA events), and *GPU busy* = kernel time /
wall time (near 1: the GPU is the bottleneck; well below 1: launch/host-bound), plus the top kernels. Also the
host syncs (``torch.cuda.set_sync_debug_mode("warn")`` warnings counted) in one step.

``train``: a short ``train_sal`` on a synthetic long-history dataset (users with ``--events`` events, a planted
successor pattern, ``max_len`` = ``--events``), ``attention_impl="flex"`` then ``"block"`` (attn_dropout 0: flex
has no attention dropout), the same seed and steps: ms per optimizer step, first loss, last loss, validation
NDCG@10. On CPU (``--device cpu``, dry run) it trains the block path only, tiny.

Every variant that fails is recorded with its error; the script still writes its JSON/Markdown.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import mufasa  # noqa: F401  (offline env vars first)
from mufasa.models.sparse_attention import DenseCausalAttention, MultiGranularitySparseAttention, SparseAttentionConfig

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _module(variant: str, cfg: SparseAttentionConfig) -> torch.nn.Module:
    if variant == "dense":
        return DenseCausalAttention(cfg)
    impl = "block" if variant == "block" else "flex"
    m = MultiGranularitySparseAttention(replace(cfg, impl=impl))
    if variant == "flex-attn":
        m.flex_compile = "attention"
    return m


def profile_variant(variant: str, L: int, tokens: int, dtype: torch.dtype, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    cfg = SparseAttentionConfig()
    module = _module(variant, cfg).to(device=device, dtype=dtype)
    B = max(1, tokens // L)
    x = torch.randn(B, L, cfg.d_model, device=device, dtype=dtype, requires_grad=True)
    valid = torch.ones(B, L, dtype=torch.bool, device=device)
    valid[1:, : L // 7] = False  # some left padding (rows after the first), as real batches have

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x, valid).float().square().mean().backward()

    started = time.perf_counter()
    step()  # compiles (flex)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    row: dict = {"variant": variant, "L": L, "B": B, "first_call_s": round(time.perf_counter() - started, 1)}
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            step()
            stop.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(stop))
        row["step_ms"] = float(np.median(times))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        row["host_syncs"] = sum("synchroniz" in str(w.message).lower() for w in caught)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["profiled_wall_ms"] = (time.perf_counter() - t0) * 1e3
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    row["kernels"] = len(kernels)
    row["kernel_ms"] = sum(e.device_time for e in kernels) / 1e3 if kernels else 0.0
    if device.type == "cuda" and row.get("step_ms"):
        row["gpu_busy"] = row["kernel_ms"] / row["step_ms"]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name[:90], []).append(e.device_time / 1e3)
    row["top_kernels"] = sorted(([n, len(t), round(sum(t), 3)] for n, t in by_name.items()), key=lambda r: -r[2])[:12]
    row["cpu_ops"] = len([e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU])
    return row


def main_profile(args) -> None:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows = []
    for variant in args.variants:
        try:
            rows.append(profile_variant(variant, args.length, args.tokens, dtype, device))
        except Exception as exc:  # noqa: BLE001  (one failed variant is a result)
            rows.append({"variant": variant, "L": args.length, "error": _error(exc), "trace": traceback.format_exc()[-2000:]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("top_kernels", "trace")}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": args.dtype,
              "torch": torch.__version__, "tokens": args.tokens, "length": args.length, "rows": rows}
    stem = args.out or RESULTS / f"flex-profile-{device.type}-{args.dtype}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# One fwd+bwd step, profiled — {result['device']}, {args.dtype}, L = {args.length:,}, "
             f"batch = {args.tokens} tokens / L, torch {result['torch']}", "",
             "GPU busy = summed kernel time / step wall time (CUDA events, median of 5): near 1 = GPU-bound, "
             "well below 1 = launch/host-bound. Host syncs: `set_sync_debug_mode('warn')` warnings in one step.", "",
             "| variant | step ms | kernels | kernel ms | GPU busy | host syncs | CPU ops | first call s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'].replace('|', '/')} |||||||")
            continue
        lines.append(f"| {r['variant']} | {r.get('step_ms', float('nan')):.2f} | {r['kernels']} | {r['kernel_ms']:.2f} | "
                     f"{r.get('gpu_busy', float('nan')):.2f} | {r.get('host_syncs', '?')} | {r['cpu_ops']} | {r['first_call_s']} |")
    for r in rows:
        if r.get("top_kernels"):
            lines += ["", f"## {r['variant']}: top kernels (name, launches, ms)", "", "```"]
            lines += [f"{ms:9.3f} ms {n:5d}x  {name}" for name, n, ms in r["top_kernels"]]
            lines += ["```"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json/.md")


def successor_data(n_users: int, n_items: int, events: int, seed: int = 0):
    """Long histories with a planted successor: each next item is succ[item] with probability 0.8."""
    rng = np.random.default_rng(seed)
    succ = rng.permutation(n_items) + 1
    seqs = []
    for _ in range(n_users):
        s = np.empty(events, dtype=np.int64)
        s[0] = rng.integers(1, n_items + 1)
        follow = rng.random(events) < 0.8
        rand = rng.integers(1, n_items + 1, events)
        for t in range(1, events):
            s[t] = succ[s[t - 1] - 1] if follow[t] else rand[t]
        seqs.append(s)
    train = [s[:-1] for s in seqs]
    offsets = np.r_[0, np.cumsum([len(s) for s in train])]
    items = np.concatenate(train)
    ts = np.arange(len(items), dtype=np.int64) * 300 + 1_600_000_000
    return (offsets, items, ts), np.array([s[-1] for s in seqs])


def main_train(args) -> None:
    from mufasa.models.sal import SALConfig
    from mufasa.training.sal_trainer import SALTrainConfig, train_sal

    device = torch.device(args.device)
    seqs, targets = successor_data(args.users, 200, args.events, seed=0)
    impls = ["flex", "block"] if device.type == "cuda" else ["block"]
    rows = []
    for impl in impls:
        cfg = SALConfig(n_items=200, d_model=64, n_layers=2, n_heads=2, max_len=args.events, dropout=0.1,
                        attn_dropout=0.0, attention_impl=impl, time_encoding=True)
        tcfg = SALTrainConfig(epochs=1, batch_size=args.batch_size, lr=3e-3, max_steps=args.steps, min_eval_steps=args.steps,
                              min_evals=1, warmup_steps=0, lr_schedule="constant", progress=False, device=args.device,
                              seed=0)
        try:
            started = time.perf_counter()
            result = train_sal(cfg, tcfg, seqs, targets)
            seconds = time.perf_counter() - started
            hist = result.history
            rows.append({"impl": impl, "steps": result.steps_run, "seconds": round(seconds, 1),
                         "ms_per_step_incl_compile_and_eval": round(1e3 * seconds / max(result.steps_run, 1), 1),
                         "first_loss": hist[0].get("loss") if hist else None,
                         "last_loss": hist[-1].get("loss") if hist else None,
                         "val_ndcg@10": result.best.get("val_ndcg@10") if result.best else None})
        except Exception as exc:  # noqa: BLE001
            rows.append({"impl": impl, "error": _error(exc), "trace": traceback.format_exc()[-2000:]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "users": args.users, "events": args.events, "batch_size": args.batch_size, "steps": args.steps, "rows": rows}
    stem = args.out or RESULTS / f"flex-train-{device.type}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Short train_sal on long synthetic histories — {result['device']}, torch {result['torch']}", "",
             f"{args.users} users x {args.events} events (planted successor, p = 0.8), max_len {args.events}, batch "
             f"{args.batch_size}, {args.steps} steps, d_model 64, 2 layers, attn_dropout 0. Time includes compilation "
             "and the one validation pass.", "",
             "| impl | steps | s | ms/step | first loss | last loss | val NDCG@10 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | failed: {r['error'].replace('|', '/')} ||||||")
        else:
            lines.append(f"| {r['impl']} | {r['steps']} | {r['seconds']} | {r['ms_per_step_incl_compile_and_eval']} | "
                         f"{r['first_loss']} | {r['last_loss']} | {r['val_ndcg@10']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json/.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--variants", nargs="+", default=["block", "flex", "flex-attn", "dense"])
    p.add_argument("--out", type=Path, default=None)
    t = sub.add_parser("train")
    t.add_argument("--device", default="cuda")
    t.add_argument("--users", type=int, default=64)
    t.add_argument("--events", type=int, default=4096)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available")
    (main_profile if args.cmd == "profile" else main_train)(args)


if __name__ == "__main__":
    main()
