"""SAL's sparse attention vs dense SDPA causal attention: time and peak memory per length; a script, not a test.

    .venv/bin/python benchmarks/attention.py                              # CPU, L in 256..16k, threads 2 and 1
    .venv/bin/python benchmarks/attention.py --lengths 1024 4096 --threads 2 --reps 5
    python3 benchmarks/attention.py --device cuda --dtype bfloat16 \
        --lengths 256 1024 4096 8192 16384 32768 65536 --reps 10 --warmup 3   # GPU (scripts/gpu_check.sh)

Shapes follow the reference figures in ``benchmarks/README.md``: one attention layer *with its projections*, d_model 64, 2 heads x 32, batch
B = tokens / L (16,384 tokens), fp32 on CPU, no padding. For every L both modules run in the same process, side
by side (sparse and dense alternate within each repetition, so a noisy neighbour hits both), and we report the
median of ``--reps`` after ``--warmup`` untimed runs:

- ``fwd_bwd``: forward + backward of ``out.square().mean()`` w.r.t. the input and all weights;
- ``fwd``: forward under ``torch.no_grad``;
- ``peak_mb``: peak memory allocated by torch during one forward + backward, from ``torch.profiler``'s allocation
  events (profile_memory=True; CPU allocations are invisible to tracemalloc, and RSS deltas hide the allocator's
  caching), beyond the inputs and weights that exist before the step. On CUDA: ``torch.cuda.max_memory_allocated``
  (peak statistics reset before the step) minus what was allocated before it.

On CUDA (``--device cuda``) each run is timed with CUDA events around the step (the device is synchronised
first; the sparse layer's few host syncs are part of its cost), ``--dtype`` chooses float32 or bfloat16 (module
and input cast to it; float32 runs with PyTorch's default matmul precision, which is full float32: no TF32), and
the SDPA kernels each module ran are recorded (``sdpa_kernels``: flash / memory-efficient / cuDNN / math, as
PyTorch picked them). A length that fails (out of memory, say) is recorded with its error and the run goes on.

``OMP_WAIT_POLICY`` defaults to PASSIVE here (see the comment at the top): the machine is shared.

Sparse = :class:`MultiGranularitySparseAttention` with the default ``SparseAttentionConfig`` (window 64, blocks
of 32, top-4 selection shared by groups of 2 query blocks, all three branches, gates). Dense = :class:`DenseCausalAttention` (same projections,
``F.scaled_dot_product_attention(is_causal=True)``, the CPU flash kernel; on CUDA whichever kernel PyTorch picks).
With ``--profile-length`` the sparse layer's top operators (torch.profiler, self CPU time; self device time on
CUDA) at that length are written to the Markdown report.

Writes ``benchmarks/results/attention-cpu.json``, ``.md`` (table) and ``.png`` (time and memory vs L) for the
float32 CPU run, ``attention-<device>-<dtype>.*`` otherwise (``attention-cuda-bfloat16.*``); ``--out`` overrides.

``--flex`` (CUDA) also times the ``flex_attention`` path (``impl="flex"``, whole step compiled, one compilation
per length after ``torch._dynamo.reset()``; fwd+bwd only), checks its no-grad output against the block path and
adds a flex table (vs dense and vs block, peak memory, compile seconds); writes ``attention-cuda-<dtype>-flex.*``.

``--compile`` (CPU, float32) asks whether ``torch.compile`` (inductor's C++/OpenMP backend, ``dynamic=False``)
speeds the sparse block path up. For every (threads, L) four modules with the same weights alternate within each
repetition: eager sparse, the whole sparse module compiled (``module.compile()``; Dynamo splits it at every
data-dependent ``bool(tensor)`` and at the custom autograd Functions it cannot trace), the block-path pieces
compiled separately (window tiles, block compression MLPs, selection scoring; the rest eager) and eager dense
SDPA. Compilation is timed apart (the first fwd+bwd call and the first no-grad call, cold: a fresh inductor cache
per run unless ``TORCHINDUCTOR_CACHE_DIR`` is set, Dynamo reset and ``inductor.config.cpp.threads`` set per thread
count, since the generated OpenMP code bakes the thread count in); the compiled outputs and gradients (input and
every weight) are checked against eager (fp32 allclose) before anything is timed; graph breaks are counted per
variant (Dynamo's counters) and the whole module's break reasons recorded (``torch._dynamo.explain``). Writes
``results/attention-cpu-compile.{json,md}`` (defaults: L in 1024, 4096, 8192, 7 repetitions, 2 warm-up)::

    .venv/bin/python benchmarks/attention.py --compile
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a machine shared with other jobs, spinning workers steal the
# core the busy thread needs, and every parallel region then waits a scheduler slice: measured here, that made a
# 2-thread sparse fwd+bwd at L = 4k ~3x slower (1.2 s vs 0.38 s) and dense ~1.2x slower. Must be set before
# OpenMP starts (before torch is imported); an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import mufasa  # noqa: E402, F401  (offline env vars first)
from mufasa.measure import peak_memory_mb, step_ms, sync  # noqa: E402
from mufasa.models.sparse_attention import (  # noqa: E402
    DenseCausalAttention,
    MultiGranularitySparseAttention,
    SparseAttentionConfig,
)

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def make_step(module: torch.nn.Module, x: torch.Tensor, valid: torch.Tensor, backward: bool) -> Callable[[], None]:
    def step() -> None:
        if backward:
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x, valid).square().mean().backward()
        else:
            with torch.no_grad():
                module(x, valid)

    return step


def clear_grads(module: torch.nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None


def top_ops(step: Callable[[], None], device: torch.device, rows: int = 15) -> str:
    """The top operators of one ``step``: by self CPU time on CPU, by self device time on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):  # the name changed across torch versions
        try:
            return averages.table(sort_by=key, row_limit=rows)
        except (AttributeError, KeyError, TypeError):
            continue
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows)


def sdpa_kernels(step: Callable[[], None], device: torch.device) -> list[str]:
    """The attention operators (flash / efficient / cuDNN / math SDPA, forward and backward) one ``step`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        sync(device)
    return sorted({e.key for e in prof.key_averages() if "attention" in e.key.lower() and e.key.startswith("aten::")})


def make_inputs(L: int, tokens: int, d_model: int, device: torch.device, dtype: torch.dtype):
    B = max(1, tokens // L)
    x = torch.randn(B, L, d_model, device=device, dtype=dtype, requires_grad=True)
    return x, torch.ones(B, L, dtype=torch.bool, device=device)


def run_length(
    L: int,
    tokens: int,
    cfg: SparseAttentionConfig,
    reps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    flex: bool = False,
) -> dict:
    B = max(1, tokens // L)
    torch.manual_seed(0)
    modules = {
        "sparse": MultiGranularitySparseAttention(cfg).to(device=device, dtype=dtype),
        "dense": DenseCausalAttention(cfg).to(device=device, dtype=dtype),
    }
    x, valid = make_inputs(L, tokens, cfg.d_model, device, dtype)
    row: dict = {"L": L, "B": B}
    if flex:  # the flex path, whole step compiled (fwd+bwd only: a no-grad forward is one more compilation)
        import dataclasses

        import torch._dynamo

        torch._dynamo.reset()  # one compilation per length, never the recompile limit (then: eager, O(L^2))
        module = MultiGranularitySparseAttention(dataclasses.replace(cfg, impl="flex")).to(device=device, dtype=dtype)
        module.load_state_dict(modules["sparse"].state_dict())
        started = time.perf_counter()
        make_step(module, x, valid, True)()
        sync(device)
        row["flex_compile_s"] = round(time.perf_counter() - started, 1)
        row["flex_compiled"] = module.flex_compile or "step"  # "attention" if the whole step fell back
        with torch.no_grad():
            diff = (module(x, valid).float() - modules["sparse"](x, valid).float()).abs().max()
        row["flex_max_abs_diff_vs_block"] = float(diff)
        modules = {"sparse": modules["sparse"], "flex": module, "dense": modules["dense"]}
    for mode, backward in (("fwd_bwd", True), ("fwd", False)):
        steps = {name: make_step(m, x, valid, backward) for name, m in modules.items() if backward or name != "flex"}
        for _ in range(warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(reps):
            for name, step in steps.items():  # alternate: a noisy neighbour hits both
                times[name].append(step_ms(step, device))
        for name, ts in times.items():
            row[f"{name}_{mode}_ms"] = statistics.median(ts)
            row[f"{name}_{mode}_all_ms"] = [round(t, 2) for t in ts]
        row[f"speedup_{mode}"] = row[f"dense_{mode}_ms"] / row[f"sparse_{mode}_ms"]
        if f"flex_{mode}_ms" in row:
            row[f"flex_speedup_{mode}"] = row[f"dense_{mode}_ms"] / row[f"flex_{mode}_ms"]
            row[f"flex_vs_block_{mode}"] = row[f"sparse_{mode}_ms"] / row[f"flex_{mode}_ms"]
    for name, m in modules.items():
        if device.type == "cuda":  # gradients left by earlier steps would count as "before" and be freed inside
            for other in modules.values():
                clear_grads(other, x)
        row[f"{name}_peak_mb"] = peak_memory_mb(make_step(m, x, valid, True), device)
    return row


def failure_row(L: int, tokens: int, device: torch.device, exc: Exception) -> dict:
    """``{"L", "B", "error"}`` for a length that failed (out of memory, a kernel error), memory released."""
    message = str(exc).strip()
    error = f"{type(exc).__name__}: {message.splitlines()[0][:300] if message else ''}"
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"L": L, "B": max(1, tokens // L), "error": error}


def write_reports(result: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = result["config"]
    cuda = result.get("device_type", "cpu") == "cuda"
    dtype = SHORT_DTYPE.get(result.get("dtype", "float32"), result.get("dtype"))
    ms = "{:.2f}" if cuda else "{:.0f}"  # GPU steps take milliseconds, CPU ones hundreds
    lines = [
        f"# Sparse (SAL) vs dense SDPA causal attention — {result['device']}" + (f", {dtype}" if cuda else ""),
        "",
        f"{result['timestamp']}; torch {result['torch']}; {result['cpu']}; batch = {result['tokens']} tokens / L; "
        f"d_model {cfg['d_model']}, {cfg['n_heads']} heads; sparse: window {cfg['window']}, blocks of "
        f"{cfg['block_size']}, top-{cfg['top_k']} shared by {cfg.get('select_group', 1)} query block(s). One layer "
        f"with its projections, {dtype}, median of "
        f"{result['reps']} after {result['warmup']} warm-up; sparse and dense alternate in each repetition. "
        + (
            "Times from CUDA events. Peak = torch.cuda.max_memory_allocated during one fwd+bwd beyond what was "
            "allocated before it."
            if cuda
            else "Peak = torch allocations during one fwd+bwd (profiler memory events)."
        ),
        "",
    ]
    if cuda:
        lines += [
            f"CUDA {result.get('cuda')}, cuDNN {result.get('cudnn')}; TF32 matmul {result.get('allow_tf32')}; "
            f"SDPA backends enabled: {result.get('sdpa_enabled')}.",
            "",
        ]
        for name, ops in (result.get("sdpa_kernels") or {}).items():
            lines.append(f"- {name} ran (fwd+bwd, L = {result.get('profile_length') or '?'}): {', '.join(ops) or '?'}")
        lines.append("")
    else:
        lines += [
            f"Machine load (1/5/15 min) at start: {result['load_start']}, at end: {result['load_end']} "
            "(2 cores shared with other jobs: compare ratios, not absolute times). "
            f"OMP_WAIT_POLICY={result['omp_wait_policy']}.",
            "",
        ]
    for run in result["runs"]:
        lines += [
            f"## {run['threads']} thread(s)" if not cuda else f"## {result['device']}, {dtype}",
            "",
            "| L | B | sparse fwd+bwd ms | dense fwd+bwd ms | speedup | sparse fwd ms | dense fwd ms | speedup fwd "
            "| sparse peak MB | dense peak MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {r['L']:,} | {r['B']} | failed: {r['error'].replace('|', '/')} |||||||| ")
                continue
            lines.append(
                f"| {r['L']:,} | {r['B']} | {ms.format(r['sparse_fwd_bwd_ms'])} | {ms.format(r['dense_fwd_bwd_ms'])} "
                f"| {r['speedup_fwd_bwd']:.2f}x | {ms.format(r['sparse_fwd_ms'])} | {ms.format(r['dense_fwd_ms'])} "
                f"| {r['speedup_fwd']:.2f}x | {r['sparse_peak_mb']:.0f} | {r['dense_peak_mb']:.0f} |"
            )
        lines.append("")
    if any("flex_fwd_bwd_ms" in r for run in result["runs"] for r in run["rows"]):
        lines += [
            "## flex path (`impl=\"flex\"`, whole step compiled) vs block path vs dense, fwd+bwd",
            "",
            "| L | B | flex ms | block ms | dense ms | flex vs dense | flex vs block | flex peak MB | compile s "
            "| compiled | max abs diff vs block (fwd) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for r in result["runs"][0]["rows"]:
            if "flex_fwd_bwd_ms" not in r:
                continue
            lines.append(
                f"| {r['L']:,} | {r['B']} | {ms.format(r['flex_fwd_bwd_ms'])} | {ms.format(r['sparse_fwd_bwd_ms'])} "
                f"| {ms.format(r['dense_fwd_bwd_ms'])} | {r['flex_speedup_fwd_bwd']:.2f}x | {r['flex_vs_block_fwd_bwd']:.2f}x "
                f"| {r.get('flex_peak_mb', float('nan')):.0f} | {r['flex_compile_s']} | {r['flex_compiled']} "
                f"| {r['flex_max_abs_diff_vs_block']:.2e} |"
            )
        lines.append("")
    if result.get("profile"):
        lines += [
            f"## Where the sparse layer's time goes (fwd+bwd, L = {result['profile_length']:,}, "
            + (
                "torch.profiler, self device time)"
                if cuda
                else f"{result['runs'][0]['threads']} thread(s), torch.profiler, self CPU time)"
            ),
            "",
            "```",
            result["profile"].rstrip(),
            "```",
            "",
        ]
    elif result.get("profile_error"):
        lines += [f"Operator profile failed: {result['profile_error']}", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        rows = [r for r in run["rows"] if "error" not in r]
        Ls = [r["L"] for r in rows]
        style = "-" if run["threads"] == result["runs"][0]["threads"] else "--"
        tag = dtype if cuda else f"{run['threads']} thr"
        ax_t.plot(Ls, [r["sparse_fwd_bwd_ms"] for r in rows], "o" + style, color="C0", label=f"sparse, {tag}")
        ax_t.plot(Ls, [r["dense_fwd_bwd_ms"] for r in rows], "s" + style, color="C3", label=f"dense SDPA, {tag}")
        flex_rows = [r for r in rows if "flex_fwd_bwd_ms" in r]
        if flex_rows:
            ax_t.plot([r["L"] for r in flex_rows], [r["flex_fwd_bwd_ms"] for r in flex_rows], "^" + style, color="C2",
                      label=f"sparse flex, {tag}")
    rows0 = [r for r in result["runs"][0]["rows"] if "error" not in r]
    Ls = [r["L"] for r in rows0]
    ax_m.plot(Ls, [r["sparse_peak_mb"] for r in rows0], "o-", color="C0", label="sparse")
    ax_m.plot(Ls, [r["dense_peak_mb"] for r in rows0], "s-", color="C3", label="dense SDPA")
    for ax, title, ylabel in ((ax_t, "fwd+bwd time", "ms"), (ax_m, "peak memory (fwd+bwd)", "MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequence length L (batch = {result['tokens']} / L)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, {result['device']} {dtype}" if cuda else title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


# ---- --compile: torch.compile on the sparse block path (CPU) ------------------------------------------------

COMPILE_VARIANTS = ("eager", "compiled", "pieces", "dense")
COMPILE_LABELS = {
    "eager": "eager sparse",
    "compiled": "compiled sparse (whole module)",
    "pieces": "compiled sparse (block-path pieces)",
    "dense": "eager dense SDPA",
}


def compile_pieces(module: MultiGranularitySparseAttention) -> None:
    """Compile the block path's pieces in place: the window-tile attention (incl. its block-shift Function), both
    compression MLPs and the selection scoring. Layout, the compressed branch (its chunk bounds are a host list),
    the row gathers (their CSR backward has a data-dependent shape), the gate mix and projections stay eager."""
    module._window = torch.compile(module._window, dynamic=False)  # type: ignore[method-assign]
    module.selection = torch.compile(module.selection, dynamic=False)  # type: ignore[method-assign]
    module.compress_k.compile(dynamic=False)
    module.compress_v.compile(dynamic=False)


def grads_of(module: torch.nn.Module, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and [x.grad, every weight's grad] of one fwd+bwd of ``out.square().mean()``."""
    clear_grads(module, x)
    out = module(x, valid)
    out.square().mean().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    clear_grads(module, x)
    return out.detach(), grads


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, bool]:
    """Largest absolute difference and whether every pair is fp32-allclose (rtol 1e-4, atol 1e-5)."""
    diff = max(float((s - t).abs().max()) for s, t in zip(a, b))
    return diff, all(torch.allclose(s, t, rtol=1e-4, atol=1e-5) for s, t in zip(a, b))


def graph_break_reasons(module: torch.nn.Module, x: torch.Tensor, valid: torch.Tensor) -> dict:
    """``torch._dynamo.explain`` of the whole module: graphs, breaks and each distinct reason with its code line."""
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(x, valid)
    reasons: dict[str, int] = {}
    for br in explained.break_reasons:
        frame = br.user_stack[-1] if br.user_stack else None
        where = f"{Path(frame.filename).name}:{frame.lineno} `{(frame.line or '').strip()}`" if frame else "?"
        key = f"{br.reason.strip().splitlines()[0][:120]} at {where}"
        reasons[key] = reasons.get(key, 0) + 1
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count, "reasons": reasons}


def run_compile_length(
    L: int, tokens: int, cfg: SparseAttentionConfig, reps: int, warmup: int, profile: bool = False
) -> dict:
    """One (threads, L) cell of ``--compile``: compile (timed, checked), then the four variants side by side;
    with ``profile`` also the compiled module's top operators (``row["profile"]``)."""
    import copy

    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    device = torch.device("cpu")
    torch._dynamo.reset()  # every cell compiles from scratch (and recompiles never hit a limit)
    torch._inductor.config.cpp.threads = torch.get_num_threads()  # baked into the generated OpenMP code
    torch.manual_seed(0)
    eager = MultiGranularitySparseAttention(cfg)
    compiled, pieces = copy.deepcopy(eager), copy.deepcopy(eager)
    compiled.compile(dynamic=False)
    compile_pieces(pieces)
    modules = {"eager": eager, "compiled": compiled, "pieces": pieces, "dense": DenseCausalAttention(cfg)}
    x, valid = make_inputs(L, tokens, cfg.d_model, device, torch.float32)
    row: dict = {"L": L, "B": x.shape[0], "threads": torch.get_num_threads()}

    ref_out, ref_grads = grads_of(eager, x, valid)
    with torch.no_grad():
        ref_fwd = eager(x, valid)
    for name in ("compiled", "pieces"):
        counters.clear()
        started = time.perf_counter()
        out, grads = grads_of(modules[name], x, valid)  # first call: trace + compile forward and backward
        row[f"{name}_compile_fwd_bwd_s"] = round(time.perf_counter() - started, 1)
        row[f"{name}_graph_breaks"] = sum(counters["graph_break"].values())  # of the fwd+bwd compilation
        row[f"{name}_graphs"] = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        with torch.no_grad():
            fwd = modules[name](x, valid)  # grad mode is guarded: the no-grad forward compiles again
        row[f"{name}_compile_fwd_s"] = round(time.perf_counter() - started, 1)
        row[f"{name}_max_abs_diff_out"], ok_out = max_diff([out, fwd], [ref_out, ref_fwd])
        row[f"{name}_max_abs_diff_grad"], ok_grad = max_diff(grads, ref_grads)
        row[f"{name}_matches_eager"] = ok_out and ok_grad

    for mode, backward in (("fwd_bwd", True), ("fwd", False)):
        steps = {name: make_step(m, x, valid, backward) for name, m in modules.items()}
        for _ in range(warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(reps):
            for name, step in steps.items():  # alternate: a noisy neighbour hits all four
                times[name].append(step_ms(step, device))
        for name, ts in times.items():
            row[f"{name}_{mode}_ms"] = statistics.median(ts)
            row[f"{name}_{mode}_all_ms"] = [round(t, 2) for t in ts]
        for name in ("eager", "compiled", "pieces"):
            row[f"{name}_vs_dense_{mode}"] = row[f"dense_{mode}_ms"] / row[f"{name}_{mode}_ms"]
        for name in ("compiled", "pieces"):
            row[f"{name}_vs_eager_{mode}"] = row[f"eager_{mode}_ms"] / row[f"{name}_{mode}_ms"]
    for name, m in modules.items():
        clear_grads(m, x)
        row[f"{name}_peak_mb"] = peak_memory_mb(make_step(m, x, valid, True), device)
    if profile:
        row["profile"] = top_ops(make_step(compiled, x, valid, True), device, rows=20)
    torch._dynamo.reset()
    return row


def write_compile_report(result: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = result["config"]
    lines = [
        f"# torch.compile on SAL's sparse attention — {result['device']}, fp32",
        "",
        f"{result['timestamp']}; torch {result['torch']}; {result['cpu']}; batch = {result['tokens']} tokens / L; "
        f"d_model {cfg['d_model']}, {cfg['n_heads']} heads; sparse: window {cfg['window']}, blocks of "
        f"{cfg['block_size']}, top-{cfg['top_k']} shared by {cfg['select_group']} query block(s). One layer with its "
        f"projections; median of {result['reps']} after {result['warmup']} warm-up (after compilation); the four "
        "modules (same weights) alternate in each repetition. inductor, `dynamic=False`, default mode; "
        f"compilation cold (fresh inductor cache: {result['cold_cache']}), Dynamo reset per cell.",
        "",
        f"Machine load (1/5/15 min) at start: {result['load_start']}, at end: {result['load_end']}. The 2 cores are "
        "shared with other engineers' jobs, so **absolute times are noisy**: compare the ratios within a row "
        f"(measured side by side). OMP_WAIT_POLICY={result['omp_wait_policy']}.",
        "",
        "Variants: " + "; ".join(f"**{k}** = {v}" for k, v in COMPILE_LABELS.items()) + ". "
        "*vs dense* = dense time / variant time (> 1: faster than dense); *vs eager* = eager sparse time / "
        "compiled time (> 1: compiling helped). *match* = outputs (grad and no-grad) and the gradients of the "
        "input and every weight allclose to eager (rtol 1e-4, atol 1e-5); max |diff| in the JSON. *graph-break "
        "events*: Dynamo's counter during the first fwd+bwd compilation (it counts a break again when it re-traces "
        "a frame; the distinct breaks are listed at the end).",
        "",
    ]
    for run in result["runs"]:
        lines += [
            f"## {run['threads']} thread(s): fwd+bwd",
            "",
            "| L | B | eager ms | compiled ms | pieces ms | dense ms | eager vs dense | compiled vs dense "
            "| pieces vs dense | compiled vs eager | pieces vs eager |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in run["rows"]:
            lines.append(
                f"| {r['L']:,} | {r['B']} | {r['eager_fwd_bwd_ms']:.0f} | {r['compiled_fwd_bwd_ms']:.0f} "
                f"| {r['pieces_fwd_bwd_ms']:.0f} | {r['dense_fwd_bwd_ms']:.0f} | {r['eager_vs_dense_fwd_bwd']:.2f}x "
                f"| {r['compiled_vs_dense_fwd_bwd']:.2f}x | {r['pieces_vs_dense_fwd_bwd']:.2f}x "
                f"| {r['compiled_vs_eager_fwd_bwd']:.2f}x | {r['pieces_vs_eager_fwd_bwd']:.2f}x |"
            )
        lines += [
            "",
            f"## {run['threads']} thread(s): fwd (no grad), peak memory, compilation",
            "",
            "| L | eager fwd ms | compiled fwd ms | pieces fwd ms | dense fwd ms | compiled vs eager | pieces vs eager "
            "| peak MB eager / compiled / pieces / dense | compile s compiled (fwd+bwd + fwd) "
            "| compile s pieces | graph-break events compiled / pieces | match compiled / pieces |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in run["rows"]:
            lines.append(
                f"| {r['L']:,} | {r['eager_fwd_ms']:.0f} | {r['compiled_fwd_ms']:.0f} | {r['pieces_fwd_ms']:.0f} "
                f"| {r['dense_fwd_ms']:.0f} | {r['compiled_vs_eager_fwd']:.2f}x | {r['pieces_vs_eager_fwd']:.2f}x "
                f"| {r['eager_peak_mb']:.0f} / {r['compiled_peak_mb']:.0f} / {r['pieces_peak_mb']:.0f} / "
                f"{r['dense_peak_mb']:.0f} | {r['compiled_compile_fwd_bwd_s']} + {r['compiled_compile_fwd_s']} "
                f"| {r['pieces_compile_fwd_bwd_s']} + {r['pieces_compile_fwd_s']} "
                f"| {r['compiled_graph_breaks']} / {r['pieces_graph_breaks']} "
                f"| {'yes' if r['compiled_matches_eager'] else 'NO'} / {'yes' if r['pieces_matches_eager'] else 'NO'} |"
            )
        lines.append("")
    explained = result.get("explain")
    if explained:
        lines += [
            f"## Graph breaks of the whole module (`torch._dynamo.explain`, L = {result['explain_length']:,})",
            "",
            f"{explained['graphs']} graphs, {explained['graph_breaks']} graph breaks:",
            "",
        ]
        lines += [f"- {n} x {reason}" for reason, n in explained["reasons"].items()]
        lines.append("")
    if result.get("profile"):
        lines += [
            f"## Where the compiled module's time goes (fwd+bwd, L = {result['profile_length']:,}, "
            f"{result['runs'][0]['threads']} thread(s), torch.profiler, self CPU time)",
            "",
            "```",
            result["profile"].rstrip(),
            "```",
            "",
        ]
    stem.with_suffix(".md").write_text("\n".join(lines))


def main_compile(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--compile``: eager vs compiled sparse vs dense on CPU, fp32; writes ``attention-cpu-compile.*``."""
    import shutil
    import tempfile

    if torch.device(args.device).type != "cpu" or args.dtype != "float32":
        parser.error("--compile measures the CPU float32 path: drop --device/--dtype")
    cold = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    cache = tempfile.mkdtemp(prefix="mufasa-inductor-") if cold else None
    if cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read lazily by inductor: compile times are cold
    cfg = SparseAttentionConfig()
    lengths = args.lengths or [1024, 4096, 8192]
    reps, warmup = args.reps or 7, args.warmup if args.warmup is not None else 2
    threads = list(dict.fromkeys(args.threads))
    result = {
        "device": "cpu",
        "torch": torch.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokens": args.tokens,
        "reps": reps,
        "warmup": warmup,
        "cold_cache": cold,
        "config": {k: getattr(cfg, k) for k in ("d_model", "n_heads", "window", "block_size", "top_k", "select_group")},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_start": os.getloadavg(),
        "runs": [],
    }
    stem = args.out or RESULTS / "attention-cpu-compile"
    started = time.perf_counter()
    default_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads[0])
        torch.manual_seed(0)
        x, valid = make_inputs(lengths[0], args.tokens, cfg.d_model, torch.device("cpu"), torch.float32)
        result["explain_length"] = lengths[0]
        result["explain"] = graph_break_reasons(MultiGranularitySparseAttention(cfg), x, valid)
        print(f"whole module: {result['explain']['graphs']} graphs, {result['explain']['graph_breaks']} breaks", flush=True)
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            rows = []
            for L in lengths:
                profile = n_threads == threads[0] and L == args.profile_length
                row = run_compile_length(L, args.tokens, cfg, reps, warmup, profile)
                if profile:
                    result["profile_length"], result["profile"] = L, row.pop("profile")
                rows.append(row)
                print(
                    f"threads {n_threads} L {L:>6}: fwd+bwd eager {row['eager_fwd_bwd_ms']:.0f}, compiled "
                    f"{row['compiled_fwd_bwd_ms']:.0f}, pieces {row['pieces_fwd_bwd_ms']:.0f}, dense "
                    f"{row['dense_fwd_bwd_ms']:.0f} ms; compile {row['compiled_compile_fwd_bwd_s']} s / "
                    f"{row['pieces_compile_fwd_bwd_s']} s; match {row['compiled_matches_eager']} / "
                    f"{row['pieces_matches_eager']}",
                    flush=True,
                )
                stem.parent.mkdir(parents=True, exist_ok=True)  # partial JSON: a killed run still leaves data
                partial = {**result, "runs": [*result["runs"], {"threads": n_threads, "rows": rows}], "partial": True}
                stem.with_suffix(".json").write_text(json.dumps(partial, indent=2) + "\n")
            result["runs"].append({"threads": n_threads, "rows": rows})
    finally:
        torch.set_num_threads(default_threads)
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    result["load_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_compile_report(result, stem)
    print(f"wrote {stem}.json/.md in {result['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="default 256 1024 4096 8192 16384 (--compile: 1024 4096 8192)")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=None, help="default 5 (--compile: 7)")
    parser.add_argument("--warmup", type=int, default=None, help="default 1 (--compile: 2, after compilation)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                        help="CPU thread counts to run (the first one is also profiled and plotted for memory)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="module and input dtype (bfloat16: for CUDA; the CPU backward has no bf16 sparse matmul)")
    parser.add_argument("--profile-length", type=int, default=4096, help="0 = no operator profile")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (default results/attention-cpu, or attention-<device>-<dtype>)")
    parser.add_argument("--flex", action="store_true",
                        help="CUDA: also time the flex_attention path (impl='flex', whole step compiled; fwd+bwd)")
    parser.add_argument("--compile", action="store_true",
                        help="eager vs torch.compile'd sparse vs dense (CPU fp32) -> results/attention-cpu-compile.*")
    args = parser.parse_args()
    if args.compile:
        main_compile(args, parser)
        return
    args.lengths = args.lengths or [256, 1024, 4096, 8192, 16384]
    args.reps = args.reps or 5
    args.warmup = 1 if args.warmup is None else args.warmup

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available (torch {torch.__version__})")
    dtype = DTYPES[args.dtype]
    if args.flex and device.type != "cuda":
        parser.error("--flex needs --device cuda (torch has no CPU flex_attention backward)")
    cfg = SparseAttentionConfig()
    threads = list(dict.fromkeys(args.threads)) if device.type == "cpu" else [torch.get_num_threads()]
    result = {
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device_type": device.type,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokens": args.tokens,
        "reps": args.reps,
        "warmup": args.warmup,
        "config": {k: getattr(cfg, k) for k in ("d_model", "n_heads", "window", "block_size", "top_k", "select_group")},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_start": os.getloadavg(),
        "runs": [],
    }
    if device.type == "cuda":
        result.update({
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "sdpa_enabled": {
                name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                for name in ("flash", "mem_efficient", "cudnn", "math")
                if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")
            },
        })
    default_name = "attention-cpu" if (device.type, args.dtype) == ("cpu", "float32") else (
        f"attention-{device.type}-{args.dtype}" + ("-flex" if args.flex else "")
    )
    stem = args.out or RESULTS / default_name
    started = time.perf_counter()
    default_threads = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            rows = []
            for L in args.lengths:
                try:
                    row = run_length(L, args.tokens, cfg, args.reps, args.warmup, device, dtype, args.flex)
                except Exception as exc:  # noqa: BLE001  (on a GPU one failed length is a result, not a crash)
                    if device.type == "cpu":
                        raise
                    row = failure_row(L, args.tokens, device, exc)
                rows.append(row)
                if device.type == "cuda":  # partial JSON after every length: a run killed later still leaves data
                    stem.parent.mkdir(parents=True, exist_ok=True)
                    partial = {**result, "runs": [*result["runs"], {"threads": n_threads, "rows": rows}]}
                    stem.with_suffix(".json").write_text(json.dumps({**partial, "partial": True}, indent=2) + "\n")
                if "error" in row:
                    print(f"threads {n_threads} L {L:>6}: FAILED {row['error']}", flush=True)
                    continue
                print(
                    f"threads {n_threads} L {L:>6}: sparse {row['sparse_fwd_bwd_ms']:8.1f} ms, dense "
                    f"{row['dense_fwd_bwd_ms']:8.1f} ms, speedup {row['speedup_fwd_bwd']:.2f}x; peak "
                    f"{row['sparse_peak_mb']:.0f} vs {row['dense_peak_mb']:.0f} MB"
                    + (f"; flex {row['flex_fwd_bwd_ms']:.2f} ms ({row['flex_speedup_fwd_bwd']:.2f}x dense, compile "
                       f"{row['flex_compile_s']} s)" if "flex_fwd_bwd_ms" in row else ""),
                    flush=True,
                )
            result["runs"].append({"threads": n_threads, "rows": rows})
        if args.profile_length:
            torch.set_num_threads(threads[0])
            L = args.profile_length
            result["profile_length"] = L
            try:
                torch.manual_seed(0)
                module = MultiGranularitySparseAttention(cfg).to(device=device, dtype=dtype)
                x, valid = make_inputs(L, args.tokens, cfg.d_model, device, dtype)
                step = make_step(module, x, valid, True)
                step()
                if device.type == "cuda":
                    dense = DenseCausalAttention(cfg).to(device=device, dtype=dtype)
                    result["sdpa_kernels"] = {
                        "sparse": sdpa_kernels(step, device),
                        "dense": sdpa_kernels(make_step(dense, x, valid, True), device),
                    }
                result["profile"] = top_ops(step, device)
            except Exception as exc:  # noqa: BLE001  (the timings are written even if profiling fails)
                if device.type == "cpu":
                    raise
                result["profile_error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"profile failed: {result['profile_error']}", flush=True)
    finally:
        torch.set_num_threads(default_threads)
    result["load_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_reports(result, stem)
    print(f"wrote {stem}.json/.md/.png in {result['seconds']} s")


if __name__ == "__main__":
    main()
