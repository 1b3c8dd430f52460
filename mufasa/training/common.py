"""What every training loop here shares: seeding, device + autocast, atomic checkpoints with resume, early
stopping, and the metrics callback through which trackers (MLflow, Dagster) listen.

Checkpoints hold only state dicts, tensors and plain Python values, saved with ``torch.save`` and loaded with
``weights_only=True`` (no pickled code is ever executed on load). They are written to a temp file and renamed,
so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mufasa.encoders.device import resolve_device

__all__ = [
    "Checkpointer",
    "EarlyStopping",
    "MetricsCallback",
    "autocast",
    "resolve_device",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]

# on_metrics(step, {"loss": ..., ...}): the only way training code reports progress to the outside.
MetricsCallback = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a dedicated CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue the same random stream (all weights_only-loadable)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore :func:`rng_state`'s states. They must be CPU byte tensors, whatever ``map_location`` the
    checkpoint was loaded with (a GPU resume loads it onto the GPU, and torch refuses a CUDA tensor as state)."""
    torch.set_rng_state(state["torch"].cpu())
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Checkpointer:
    """``last.pt`` in ``folder``: save atomically, load with ``weights_only=True``, or None when absent."""

    def __init__(self, folder: Path, name: str = "last.pt"):
        self.folder = Path(folder)
        self.path = self.folder / name

    def save(self, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        return self.path

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location=map_location, weights_only=True)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class EarlyStopping:
    """Stop when the validation criterion has not improved by ``min_delta`` for ``patience`` evaluations."""

    patience: int = 3
    mode: str = "max"  # "max" for a metric (NDCG), "min" for a loss
    min_delta: float = 0.0
    best: float | None = None
    best_step: int = -1
    bad_rounds: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record ``value``; True if it is the best so far."""
        better = (
            self.best is None
            or (self.mode == "max" and value > self.best + self.min_delta)
            or (self.mode == "min" and value < self.best - self.min_delta)
        )
        if better:
            self.best, self.best_step, self.bad_rounds = float(value), step, 0
        else:
            self.bad_rounds += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_rounds >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad_rounds = state["best"], state["best_step"], state["bad_rounds"]
