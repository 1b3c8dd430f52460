"""Pick the torch device for the frozen encoders, and keep GPU convolutions deterministic.

The encoders run once per catalogue in the ``features`` stage, so "auto" simply means "the GPU if there is one".
Apple's MPS backend is deliberately not chosen by "auto": none of our checks ran on it, and its kernels are not
guaranteed deterministic. Pass an explicit ``torch.device`` (or "mps") to opt in at your own risk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (must exist).

    Raises ``RuntimeError`` when a GPU is requested but torch sees none (a silent CPU fallback would make a
    "GPU run" quietly take hours), and ``ValueError`` for anything that is not a device name.
    """
    if isinstance(device, torch.device):
        spec = device
    elif isinstance(device, str):
        name = device.strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            spec = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from exc
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")

    if spec.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(spec)!r} requested but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use 'auto' or 'cpu'"
            )
        index = 0 if spec.index is None else spec.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {str(spec)!r} requested but only {torch.cuda.device_count()} GPU(s) visible")
    return spec


@contextlib.contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """Within the block, make cuDNN pick deterministic convolution algorithms; restore the flags afterwards.

    With ``benchmark=True`` cuDNN times several algorithms and may pick a different (non-bitwise-equal) one per
    call. We set the flags only for the duration of an encode call, so the caller's global settings survive.
    On CPU this is a no-op in effect (the flags only concern cuDNN).
    """
    previous = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous
