"""Fault tolerance, for real: `kill -9` a training stage mid-run, rerun it, and get exactly what an uninterrupted
seeded run gets; the killed stage leaves no output that DVC would take as valid."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import dvc_executable, run_ok, tool_env

pytestmark = pytest.mark.slow


def _stage(root: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mufasa.cli", "stage", name, "--no-track"], cwd=root,
                            env=dict(tool_env(), PYTHONPATH=str(root)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_after_first_checkpoint(root: Path, name: str, ckpt_root: Path) -> None:
    """Start the stage, wait for its first per-epoch checkpoint, then SIGKILL it (no cleanup code runs)."""
    proc = _stage(root, name)
    deadline = time.time() + 300
    while not any(ckpt_root.rglob("last.pt")):
        assert proc.poll() is None, f"{name} ended before its first checkpoint:\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"no checkpoint from {name}"
        time.sleep(0.01)
    time.sleep(0.3)  # let it get into a later epoch, mid-step
    assert proc.poll() is None, f"{name} finished before it could be killed: make the budget larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(root: Path, name: str) -> None:
    proc = _stage(root, name)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(clone, tmp_path):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    # enough epochs that the kill lands mid-training; early stopping off so both runs do the same epochs
    params["train_mfl"]["train"].update({"epochs": 40, "patience": 1000})
    params["train_sal"]["train"].update({"epochs": 25, "patience": 1000})
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    run_ok([dvc_executable(), "repro", "features", "sequences"], clone)  # ingest .. features/sequences: the inputs
    reference = tmp_path / "reference"
    shutil.copytree(clone, reference, symlinks=True)

    # --- train_mfl: killed, then resumed ---------------------------------------------------------------------
    _kill_after_first_checkpoint(clone, "train_mfl", clone / "checkpoints" / "train_mfl")
    assert not (clone / "data" / "fused" / "items.npy").exists()  # no partial output left looking valid
    status = run_ok([dvc_executable(), "status", "train_mfl"], clone)
    assert "up to date" not in status.stdout, status.stdout  # DVC sees the stage as not done
    _finish(clone, "train_mfl")
    assert not any((clone / "checkpoints" / "train_mfl").rglob("last.pt"))  # consumed, then removed
    _finish(reference, "train_mfl")
    np.testing.assert_allclose(np.load(clone / "data" / "fused" / "items.npy"),
                               np.load(reference / "data" / "fused" / "items.npy"), rtol=0, atol=1e-6)

    # --- train_sal: killed, then resumed ---------------------------------------------------------------------
    _kill_after_first_checkpoint(clone, "train_sal", clone / "checkpoints" / "train_sal")
    assert not (clone / "models" / "sal" / "model.pt").exists()
    _finish(clone, "train_sal")
    _finish(reference, "train_sal")
    resumed, straight = _state(clone / "models" / "sal" / "model.pt"), _state(reference / "models" / "sal" / "model.pt")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
    got, expected = (yaml.safe_load((r / "metrics" / "sal.json").read_text()) for r in (clone, reference))
    got.pop("seconds"), expected.pop("seconds")  # wall time: the only thing allowed to differ
    assert got == pytest.approx(expected, abs=1e-6)
