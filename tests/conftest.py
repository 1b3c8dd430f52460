"""Shared fixtures: small synthetic projects in temp folders, so tests never touch the repo's data/ or mlflow/."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mufasa.pipeline.params import parse_params
from mufasa.pipeline.paths import ProjectPaths
from tests.helpers import EPOCH_BUDGET

# Started in the background by a non-interactive shell (`make test &`, nohup), pytest inherits SIGINT ignored and
# so would every process a test starts: `dagster dev` maps SIGTERM to SIGINT's handler, so it then ignores the
# tests' stop, is killed 30 s later and leaves its temporary DAGSTER_HOME behind (the "dagster dev from scripts
# needs set -m" pitfall). With a handler installed here, children start with the default disposition again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]

# Small enough for a test (well under a second to generate), big enough to have structure.
SMALL_SYNTHETIC = {
    "n_users": 40,
    "n_items": 60,
    "n_genres": 3,
    "clusters_per_genre": 2,
    "min_events": 10,
    "max_events": 40,
    "seed": 0,
}


def synthetic_params_dict(**overrides) -> dict:
    """The shipped params.yaml, switched to a small synthetic source (so every key DVC expects exists)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ingest"]["source"] = "synthetic"
    raw["ingest"]["synthetic"].update(SMALL_SYNTHETIC)
    raw["features"]["progress"] = False
    # a few epochs: the tests check wiring and outputs; learning itself is tested in the model tests
    raw["train_mfl"]["train"].update({"epochs": 3, "batch_size": 32, "progress": False})
    raw["train_sal"]["model"].update({"max_len": 64, "window": 16, "block_size": 8, "top_k": 2})
    raw["train_sal"]["train"].update({"epochs": 3, "batch_size": 16, "progress": False, **EPOCH_BUDGET})
    raw["evaluate"]["sasrec"]["model"].update({"max_len": 64})
    raw["evaluate"]["sasrec"]["train"].update({"epochs": 3, "batch_size": 16, "progress": False, **EPOCH_BUDGET})
    # tiny models on tiny data cannot be told apart reliably: the wiring tests accept any outcome vs baselines
    raw["gate"].update({"min_gain_over_popularity": -1.0, "min_gain_over_sasrec": -1.0, "max_regression_vs_champion": 1.0})
    for key, value in overrides.items():
        raw[key] = value
    return raw


@pytest.fixture
def project(tmp_path: Path) -> ProjectPaths:
    """A temp project root holding params.yaml (small synthetic source) and dvc.yaml."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict()))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data" / "input").mkdir(parents=True)
    return ProjectPaths(tmp_path)


@pytest.fixture
def small_params():
    return parse_params(synthetic_params_dict())


def write_files_params(root: Path, interactions: str, items: str, **files) -> None:
    raw = {"ingest": {"source": "files", "files": {"interactions": interactions, "items": items, **files}}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def dvc_executable() -> str:
    for candidate in (shutil.which("dvc"), REPO / ".venv-dvc" / "bin" / "dvc"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("dvc not found: `make setup` installs it in .venv-dvc")


def tool_env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stage `python` = this venv
    return env


def run_ok(args, cwd, **kw) -> subprocess.CompletedProcess:
    # 30 min: `dvc repro` of the whole pipeline took > 600 s on a 2-core machine busy with other work; a hang
    # still fails instead of blocking CI's 90 minutes
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=1800, **kw)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def clone(tmp_path) -> Path:
    """A fresh git clone of the working tree (tracked + new files, no ignored outputs), on small synthetic data."""
    return make_clone(tmp_path / "clone")


def make_clone(dest: Path) -> Path:
    """What the ``clone`` fixture makes, at ``dest`` (for fixtures with a wider scope)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict()))
    run_ok(["git", "init", "-q"], dest)
    run_ok(["git", "add", "-A"], dest)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], dest)
    return dest




_TORCH_THREADS = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Every test starts with the process's initial torch thread count, whatever an earlier test or fixture set.

    Float results on CPU depend on the intra-op thread count (reduction order); a fixture that set one thread and
    kept it made a later module's in-process run differ from a subprocess run of the same stage.
    """
    global _TORCH_THREADS
    import torch

    if _TORCH_THREADS is None:
        _TORCH_THREADS = torch.get_num_threads()
    torch.set_num_threads(_TORCH_THREADS)
    yield
