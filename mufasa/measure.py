"""Timing and memory measurement shared by the benchmarks and the tests that bound a cost.

Measurements only: benchmarks report them as ratios measured side by side; no test asserts a wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["peak_memory_mb", "step_ms", "sync", "timed"]

T = TypeVar("T")


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work (a no-op elsewhere), so a clock read after it measures the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """``(seconds, fn())``: wall clock, CUDA synchronised before and after when a GPU is present."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def step_ms(step: Callable[[], None], device: torch.device | str) -> float:
    """Milliseconds of one ``step``: CUDA events on a synchronised device, else the wall clock."""
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def peak_memory_mb(step: Callable[[], None], device: torch.device | str = "cpu") -> float:
    """Peak memory (MB) torch allocates while ``step`` runs, beyond what was allocated before it: on CUDA from
    the caching allocator's peak statistics, on CPU from the profiler's allocation events."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20
