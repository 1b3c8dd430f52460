"""Data-parallel training with PyTorch DDP under ``torchrun``: the process group, rank helpers, a launcher.

How the trainers use it (``mufasa.training.mfl_trainer`` / ``sal_trainer``):

- Every rank seeds identically, so model init and the data order (one seeded permutation of the *global*
  batches) are the same everywhere; each rank then takes its contiguous :func:`shard` of every global batch.
  The configured ``batch_size`` stays the global batch: 2 processes with batch 64 run 32 rows each.
- The model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`data_parallel`), which
  averages gradients over ranks. The trainers scale each rank's loss so that this average is the gradient of
  the 1-process loss of the whole global batch (see the trainers for their losses).
- Validation and early stopping run on rank 0 and the result is broadcast (:func:`broadcast_object`), so all
  ranks take the same stop / best-epoch decisions. Checkpoints, metrics callbacks, progress bars and output
  files are rank 0's alone (:func:`is_main`).
- Dropout (and sampled negatives) draw from a per-rank, per-epoch seeded stream (:func:`seed_rank`): ranks do
  not repeat each other's masks, and a resumed run draws what the uninterrupted one drew.

Backends: NCCL when the training device is CUDA (one GPU per local rank), gloo on CPU; ``init_method`` is
``env://`` (torchrun's ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``). In a single process (no torchrun
variables, no process group) every helper is a no-op, so the 1-process code path is the one it always was.

:func:`launch` starts ``python -m torch.distributed.run --standalone --nproc_per_node N <argv>`` and relays what
rank 0 reports (metrics lines on stdout, a JSON result file) to the caller, so a stage configured with
``nproc > 1`` can start its own workers (the pipeline stages do; see README "Distributed training").
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mufasa.encoders.device import resolve_device

__all__ = [
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_same",
    "data_parallel",
    "gather_rows",
    "is_main",
    "launch",
    "local_device",
    "needs_launch",
    "process_group",
    "publish_result",
    "rank",
    "relay_metrics",
    "seed_rank",
    "shard",
    "shard_sizes",
    "under_torchrun",
    "world_size",
]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Set by :func:`launch` for its workers: where rank 0 writes its result (JSON), and the stdout metrics prefix.
RESULT_ENV = "MUFASA_DIST_RESULT"
METRICS_PREFIX = "@@mufasa-metrics "
TAIL_CHARS = 8000  # stderr quoted in a failed job's error: the failing rank's traceback and torchrun's summary


# ---- where am I ----------------------------------------------------------------------------------------------


def under_torchrun() -> bool:
    """True in a process started by torchrun (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are set)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the job (1 without a process group)."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK`` (before the group exists), else 0."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that logs, checkpoints and writes outputs."""
    return rank() == 0


def needs_launch(nproc: int) -> bool:
    """True when ``nproc`` processes are asked for and this process is not already one of torchrun's."""
    return nproc > 1 and not under_torchrun()


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA under a process group, else ``device`` unchanged."""
    if device.type == "cuda" and _initialized() and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


@contextlib.contextmanager
def process_group(device: str | torch.device = "auto", timeout: timedelta | None = None) -> Iterator[None]:
    """Join the torchrun job for the body (NCCL for a CUDA ``device``, else gloo) and leave it afterwards.

    A no-op outside torchrun, and when a process group already exists. ``timeout``: how long a collective may
    wait for the other ranks before failing (None: PyTorch's default, 10-30 min).
    """
    if not under_torchrun() or _initialized():
        yield
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", **({"timeout": timeout} if timeout else {}))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def check_same(what: str, value: Any) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. the epoch each resumed from)."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values} (rank order)")


# ---- small collectives (no-ops in one process) -------------------------------------------------------------


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a few float64 scalars (epoch loss sums and counts)."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_reduce_mean(value: float) -> float:
    """Mean over ranks of a logged scalar."""
    return all_reduce_sum([value])[0] / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for small things such as a metrics row)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ---- sharding the global batch ------------------------------------------------------------------------------


def shard_sizes(n: int) -> list[int]:
    """Rows of each rank when ``n`` rows are split into contiguous shards (sizes differ by at most one)."""
    w = world_size()
    return [n // w + (1 if r < n % w else 0) for r in range(w)]


def shard(rows: np.ndarray) -> np.ndarray:
    """This rank's contiguous part of a global batch (``np.array_split`` order: concatenating restores it)."""
    return np.array_split(np.asarray(rows), world_size())[rank()]


def seed_rank(seed: int, epoch: int) -> None:
    """With several ranks: seed torch's global RNG (dropout, sampled negatives) from ``(seed, epoch, rank)``.

    Different per rank (no repeated dropout masks across shards) and per epoch (a run resumed at an epoch
    boundary draws what the uninterrupted run drew). A no-op in one process, whose stream stays as it was.
    """
    if world_size() == 1:
        return
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1, np.uint64)[0] >> 1))


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-shaped (m, F) blocks whose backward gives each rank the gradient of its own rows.

    Every rank evaluates the *same* loss of the gathered batch, so the backward sums the ``world`` identical
    upstream gradients (all-reduce) before slicing out this rank's rows; DDP's mean over ranks then divides the
    factor ``world`` out again, leaving exactly the 1-process gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (world * m, F)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        m = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * m : (dist.get_rank() + 1) * m]


def gather_rows(parts: dict[str, torch.Tensor | None], counts: Sequence[int]) -> dict[str, torch.Tensor | None]:
    """The global batch of every tensor in ``parts`` from each rank's rows, differentiable, in one collective.

    ``parts``: name -> (b, ...) tensor of this rank's rows (or None, passed through); ``counts``: rows each rank
    really holds (a rank with none still passes one placeholder row, which is dropped). Tensors are flattened
    into one float32 (m, F) block, padded to the largest shard, gathered, and split back to their shapes and
    dtypes (bool masks included), so a whole batch of model outputs costs a single all-gather forward and a
    single all-reduce backward (one collective each way keeps every rank's collective order identical).
    """
    names = [k for k, v in parts.items() if v is not None]
    if world_size() == 1 or not names:
        return dict(parts)
    m = max(counts)
    tensors = [parts[k] for k in names]
    flat = [t.reshape(t.shape[0], -1).float() for t in tensors]
    widths = [f.shape[1] for f in flat]
    block = torch.cat(flat, dim=1)  # (b, F)
    if block.shape[0] < m:
        block = torch.cat([block, block.new_zeros(m - block.shape[0], block.shape[1])])
    block = block[:m]
    gathered = _GatherRows.apply(block)  # (world * m, F)
    keep = torch.cat([torch.arange(r * m, r * m + c, device=block.device) for r, c in enumerate(counts)])
    gathered = gathered.index_select(0, keep)  # (sum(counts), F) in global-batch order
    out: dict[str, torch.Tensor | None] = {k: None for k in parts}
    for name, t, piece in zip(names, tensors, gathered.split(widths, dim=1)):
        piece = piece.reshape(-1, *t.shape[1:])
        out[name] = piece > 0.5 if t.dtype == torch.bool else piece.to(t.dtype)
    return out


# ---- the DDP wrapper -------------------------------------------------------------------------------------


class _Forward(nn.Module):
    """``fn(model, *args)`` as a module's forward: DDP only hooks ``forward()``, not ``calculate_loss`` & co."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self.model, *args, **kwargs)


def data_parallel(model: nn.Module, fn: Callable[..., Any], device: torch.device) -> nn.Module:
    """DDP module whose forward is ``fn(model, *args)`` (a loss), synchronising gradients over the job.

    ``find_unused_parameters``: a rank's shard may leave a head unused (e.g. no item with an image), so DDP must
    look for parameters without a gradient. Buffers are not re-broadcast every step: ours never change
    (SAL's frozen item features); DDP still syncs them once at construction.
    """
    # torch >= 2.13 names the switch forward_sync_buffers; older releases broadcast_buffers (same meaning).
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(
        _Forward(model, fn),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
        **no_sync,
    )


# ---- launching and reporting back ------------------------------------------------------------------------


def relay_metrics(
    on_metrics: Callable[[int, dict[str, float]], None] | None,
) -> Callable[[int, dict[str, float]], None] | None:
    """The metrics callback a worker should use: rank 0's only; under :func:`launch` it also goes to stdout,
    from where the launching process hands it to its own callback (its tracker)."""
    if not is_main():
        return None
    if RESULT_ENV not in os.environ:
        return on_metrics

    def relay(step: int, metrics: dict[str, float]) -> None:
        sys.stdout.write(METRICS_PREFIX + json.dumps({"step": int(step), "metrics": metrics}) + "\n")
        sys.stdout.flush()
        if on_metrics is not None:
            on_metrics(step, metrics)

    return relay


def publish_result(payload: dict[str, Any]) -> None:
    """Rank 0 of a job started by :func:`launch`: hand ``payload`` (JSON-able) back to the launcher."""
    path = os.environ.get(RESULT_ENV)
    if not path or not is_main():
        return
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, default=str))
    os.replace(tmp, path)


def launch(
    argv: Sequence[str],
    nproc: int,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node nproc *argv``; return rank 0's result.

    The workers' stdout and stderr are streamed to this process's; metrics lines rank 0 writes through
    :func:`relay_metrics` go to ``on_metrics`` instead. Returns what rank 0 passed to :func:`publish_result`
    (None if nothing). Raises ``RuntimeError`` with the command, the exit code and the tail of stderr when the
    job fails (torchrun stops every worker as soon as one fails).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    with tempfile.TemporaryDirectory(prefix="mufasa-ddp-") as tmp:
        result_path = Path(tmp) / "result.json"
        child_env = {**os.environ, **(env or {}), RESULT_ENV: str(result_path), "PYTHONUNBUFFERED": "1"}
        tail: collections.deque[str] = collections.deque()  # the last TAIL_CHARS of stderr, for the error
        tail_len = [0]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)

        def pump_stderr() -> None:
            assert proc.stderr is not None
            for raw in iter(lambda: proc.stderr.read1(8192), b""):  # type: ignore[union-attr]
                text = raw.decode(errors="replace")
                sys.stderr.write(text)  # progress bars keep their carriage returns
                sys.stderr.flush()
                tail.append(text)
                tail_len[0] += len(text)
                while tail_len[0] - len(tail[0]) >= TAIL_CHARS:
                    tail_len[0] -= len(tail.popleft())

        pump = threading.Thread(target=pump_stderr, daemon=True)
        pump.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                at = line.find(METRICS_PREFIX)
                if at >= 0:
                    record = json.loads(line[at + len(METRICS_PREFIX) :])
                    if on_metrics is not None:
                        on_metrics(record["step"], record["metrics"])
                    continue
                sys.stdout.write(line)
                sys.stdout.flush()
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while streaming: stop the workers we started
                proc.terminate()
                proc.wait()
            pump.join(timeout=10)
        if code != 0:
            text = "".join(tail)
            lines = text[-TAIL_CHARS:].replace("\r", "\n").splitlines()[int(len(text) > TAIL_CHARS):]  # whole lines
            last = "\n".join(line for line in lines if line.strip())
            raise RuntimeError(f"`{shlex.join(cmd)}` failed with exit code {code}; its stderr ended with:\n{last}")
        return json.loads(result_path.read_text()) if result_path.is_file() else None
