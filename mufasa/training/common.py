"""What every training loop here shares: seeding, device + autocast, atomic checkpoints with resume, early
stopping, and the metrics callback through which trackers (MLflow, Dagster) listen.

Checkpoints hold only state dicts, tensors and plain Python values, saved with ``torch.save`` and loaded with
``weights_only=True`` (no pickled code is ever executed on load, and a file that needs more is never loaded).
They are written to a temp file and renamed, so a run killed mid-save leaves the previous checkpoint intact.

A checkpoint that cannot be resumed (unreadable, truncated, or written by another configuration or dataset: its
fingerprint differs) is moved aside beside itself, ``last.pt.corrupt-<UTC time>`` or ``last.pt.stale-<UTC time>``,
kept for inspection, and training starts fresh with a warning that names both files.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mufasa.encoders.device import resolve_device

__all__ = [
    "CheckpointWarning",
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


class CheckpointWarning(UserWarning):
    """A checkpoint could not be resumed and was moved aside."""


class Checkpointer:
    """``last.pt`` in ``folder``: save atomically, load with ``weights_only=True``, or None when absent."""

    def __init__(self, folder: Path, name: str = "last.pt"):
        self.folder = Path(folder)
        self.path = self.folder / name

    def save(self, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            torch.save(state, tmp)
        except (OSError, RuntimeError) as exc:  # torch wraps a failed write (disk full) in a RuntimeError
            tmp.unlink(missing_ok=True)
            cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                from mufasa.data.io import raise_write_error

                raise_write_error(self.path, cause)
            raise
        os.replace(tmp, self.path)
        return self.path

    def load(self, map_location: str | torch.device = "cpu", fingerprint: str | None = None) -> dict[str, Any] | None:
        """The saved state, or None when there is none to resume.

        Never unpickles code (``weights_only=True``). An unreadable file, one that is not a checkpoint of this
        trainer, or one whose ``"fingerprint"`` differs from ``fingerprint`` is moved aside (see the module
        docstring) and None is returned, so the caller starts fresh.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # weights_only refused an object: loading it anyway could run code
            self._set_aside("corrupt", "holds objects other than tensors and plain values (refused: loading it "
                            "could run code)")
            return None
        except Exception as exc:  # truncated zip, bad magic, I/O error: all mean "cannot resume"
            first = str(exc).splitlines()[0] if str(exc) else ""
            self._set_aside("corrupt", f"cannot be read ({type(exc).__name__}: {first[:160]})")
            return None
        if not isinstance(state, dict) or (fingerprint is not None and "fingerprint" not in state):
            self._set_aside("corrupt", "is not a checkpoint written by this trainer")
            return None
        if fingerprint is not None and state["fingerprint"] != fingerprint:
            self._set_aside("stale", "was written by a different configuration or dataset")
            return None
        return state

    def _set_aside(self, kind: str, why: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:  # another DDP rank set it aside first
            pass
        warnings.warn(
            f"checkpoint {self.path} {why}; moved aside to {aside.name} (kept for inspection) and training starts "
            "fresh",
            CheckpointWarning,
            stacklevel=3,
        )
        return aside

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
