"""What the torch model tests share: the devices they run on, and exact single-thread float32 settings.

A plain module (not ``conftest.py``): the GPU check (``scripts/gpu_check.sh``) runs these tests with
``--noconftest`` on an image without the pipeline's packages, which ``conftest.py`` imports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# "cuda" only where there is a GPU (the CPU CI skips those cases).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def exact_single_thread() -> Iterator[None]:
    """One intra-op thread and TF32 off, restored afterwards; use as ``pytest.fixture(autouse=True)(...)``.

    One thread: these problems are small, and on a shared 2-core machine OpenMP threads that wait for a busy core
    made a module ~10x slower (205 s vs 20 s) than one thread. TF32 off: on CUDA, float32 matmuls stay float32
    for the comparisons against float32/float64 references.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(previous)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
