"""Helpers the tests share: free ports, background servers (wait until up, stop with their children)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests


# SAL/SASRec budgets in plain epochs, as the wiring tests count them: no step floors (a tiny data set would
# otherwise train min_evals x min_eval_steps steps), no warm-up, constant learning rate.
EPOCH_BUDGET = {"min_eval_steps": 1, "min_evals": 1, "warmup_steps": 0, "lr_schedule": "constant"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 2xx; fail (with the log's tail) if ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:  # not listening yet, or busy starting up
            pass
        if proc.poll() is not None:
            pytest.fail(f"{what} exited early:\n{Path(log_path).read_text()[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"{what} did not come up within {timeout_s:.0f} s:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(1)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
