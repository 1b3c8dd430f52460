"""Faults, not only bad files: what each stage does with corrupt state (README "When something breaks")."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.data.io import file_md5, tree_md5
from mufasa.models.sasrec import SASRecConfig
from mufasa.training.common import Checkpointer, CheckpointWarning
from mufasa.training.sal_trainer import SALTrainConfig, train_sal
from tests.helpers import EPOCH_BUDGET, free_port
from tests.conftest import REPO, synthetic_params_dict, tool_env

runner = CliRunner()


def _tiny_sasrec_run(ckpt_dir, epochs):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, 20)
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 25, offsets[-1])
    targets = rng.integers(1, 25, len(lengths))
    cfg = SASRecConfig(n_items=25, d_model=16, max_len=16)
    train = SALTrainConfig(**EPOCH_BUDGET, epochs=epochs, batch_size=8, patience=50, progress=False, device="cpu")
    return train_sal(cfg, train, (offsets, items, np.zeros_like(items)), targets, checkpoint_dir=ckpt_dir)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"not a checkpoint at all\n" * 10)


def _needs_code(path):
    # a pickle that only a full unpickler could load (it names a class to import): never loaded here
    torch.save({"fingerprint": "x", "payload": argparse.Namespace(a=1)}, path)


def _not_a_dict(path):
    torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _needs_code, _not_a_dict])
def test_a_checkpoint_that_cannot_be_loaded_is_set_aside_and_training_starts_fresh(tmp_path, damage):
    _tiny_sasrec_run(tmp_path, epochs=2)
    ckpt = tmp_path / "last.pt"
    assert ckpt.is_file()
    damage(ckpt)
    damaged = ckpt.read_bytes()
    with pytest.warns(CheckpointWarning) as caught:
        result = _tiny_sasrec_run(tmp_path, epochs=3)
    message = str(caught[0].message)
    assert str(ckpt) in message and "moved aside" in message
    assert "weights_only=False" not in message  # no advice that would let a crafted file run code
    assert result.resumed_from is None and result.epochs_run == 3  # fresh start, all 3 epochs trained
    aside = list(tmp_path.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, byte for byte, for inspection
    assert ckpt.is_file()  # the fresh run's own checkpoint
    # and that new checkpoint resumes normally
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        again = _tiny_sasrec_run(tmp_path, epochs=4)
    assert again.resumed_from == 3 * result.budget.steps_per_epoch  # resumed_from counts optimizer steps


def test_a_readable_checkpoint_is_loaded_without_unpickling_code(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Checkpointer(tmp_path).save({"fingerprint": "f", "w": torch.ones(3)})
    assert Checkpointer(tmp_path).load(fingerprint="f")["w"].sum() == 3
    assert calls == [True]


# ---- damaged stage inputs: exit 2, the file and the stage that rewrites it named, nothing written ---------------

STAGES_TO_BUILD = ("ingest", "validate", "sequences", "features", "train_mfl", "train_sal")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small synthetic project run through train_sal (every input of every later stage exists)."""
    root = tmp_path_factory.mktemp("built")
    (root / "params.yaml").write_text(yaml.safe_dump(synthetic_params_dict()))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "input").mkdir(parents=True)
    for name in STAGES_TO_BUILD:
        result = runner.invoke(app, ["stage", name, "--root", str(root), "--no-track"])
        assert result.exit_code == 0, result.output
    return root


# GX Data Docs of the validations a stage ran before it failed (git-ignored HTML and its results, not outputs)
DATA_DOCS = ("reports/validation/data_docs/", "reports/validation/gx_results/")


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): file_md5(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != skip and not p.name.startswith(".mufasa.lock")  # the lock records who ran last
        and not p.relative_to(root).as_posix().startswith(DATA_DOCS)
    }


def _truncate_keep(fraction):
    def damage(path):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    damage.__name__ = f"truncated to {fraction:.0%}"
    return damage


def _json_garbage(path):
    path.write_text('{"half": ')


DAMAGED_INPUTS = [
    # (file, damage, stage run next, stage that rewrites the file)
    ("data/raw/interactions.parquet", _truncate_keep(0.6), "validate", "ingest"),
    ("data/raw/interactions.parquet", _garbage, "sequences", "ingest"),
    ("data/raw/items.parquet", _truncate_keep(0.5), "features", "ingest"),
    ("data/features/text.npy", _truncate_keep(0.5), "train_mfl", "features"),
    ("data/features/meta.json", _json_garbage, "train_mfl", "features"),
    ("data/sequences/train.parquet", _truncate_keep(0.7), "train_sal", "sequences"),
    ("data/fused/items.npy", _garbage, "train_sal", "train_mfl"),
    ("models/sal/model.pt", _truncate_keep(0.5), "evaluate", "train_sal"),
    ("models/sal/config.json", _json_garbage, "evaluate", "train_sal"),
]


@pytest.mark.parametrize(("rel", "damage", "stage", "producer"), DAMAGED_INPUTS,
                         ids=[f"{r}-{s}" for r, _, s, _ in DAMAGED_INPUTS])
def test_a_damaged_stage_input_is_named_with_its_recovery_and_nothing_is_written(
    built, tmp_path, rel, damage, stage, producer
):
    root = tmp_path / "p"
    shutil.copytree(built, root)
    target = root / rel
    damage(target)
    before = _snapshot(root, target)
    result = runner.invoke(app, ["stage", stage, "--root", str(root), "--no-track"])
    assert result.exit_code == 2, result.output
    assert str(target) in result.output and f"mufasa stage {producer}" in result.output, result.output
    assert "cannot read its input; nothing was written" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(root, target) == before  # no output rewritten, none added


# ---- tracking and registry outages --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "postgresql"])
def test_an_unreachable_tracking_store_fails_the_stage_at_once_with_one_message(built, tmp_path, monkeypatch, scheme):
    root = tmp_path / "p"
    shutil.copytree(built, root)
    port = free_port()  # nothing listens there
    uri = {"http": f"http://127.0.0.1:{port}",
           "postgresql": f"postgresql+psycopg2://mufasa:secret@127.0.0.1:{port}/mlflow"}[scheme]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MUFASA_TRACKING_TIMEOUT", "2")
    before = _snapshot(root, root / "none")
    result = runner.invoke(app, ["stage", "train_sal", "--root", str(root)])
    assert result.exit_code == 5, result.output
    assert "cannot be reached" in result.output and "attempt" in result.output and "limit 2 s" in result.output
    assert "Traceback" not in result.output and "secret" not in result.output  # no password in the message
    assert _snapshot(root, root / "none") == before  # the stage never started: nothing written


def _outage(*args, **kwargs):
    raise requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")


@pytest.fixture
def evaluated(built, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(built, root)
    result = runner.invoke(app, ["stage", "evaluate", "--root", str(root), "--no-track"])
    assert result.exit_code == 0, result.output
    return root


def _versions(root: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    found = client.search_model_versions("name='mufasa-sal'")
    return [client.get_model_version("mufasa-sal", v.version) for v in found]  # with their aliases


@pytest.mark.parametrize("fail_at", ["register", "alias"])
def test_a_gate_outage_leaves_the_registry_consistent_and_a_rerun_completes_it(evaluated, monkeypatch, fail_at):
    from mlflow import MlflowClient

    root = evaluated
    if fail_at == "register":
        monkeypatch.setattr(MlflowClient, "create_model_version", _outage)  # the call that creates the version
    else:
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", _outage)
    result = runner.invoke(app, ["stage", "gate", "--register", "--root", str(root)])
    assert result.exit_code == 5, result.output
    assert "Traceback" not in result.output
    versions = _versions(root)
    if fail_at == "register":
        assert "no version was created; champion unchanged" in result.output
        assert versions == []
    else:
        assert "version 1 is registered with its decision" in result.output and "Rerun" in result.output
        (v,) = versions
        assert v.tags["gate.decision"] in ("promoted", "refused") and v.aliases == []  # tags, and no champion yet
    assert not (root / "metrics" / "gate.json").exists()
    monkeypatch.undo()
    again = runner.invoke(app, ["stage", "gate", "--register", "--root", str(root)])
    assert again.exit_code in (0, 3), again.output
    (v,) = _versions(root)  # completed, not duplicated
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert f"registered as version {v.version};" in again.output and str(v.version) == "1"
    assert gate["candidate_key"] == v.tags["gate.candidate_key"]
    assert ("champion" in v.aliases) == gate["passed"] and "challenger" in v.aliases


def test_a_tracking_failure_mid_training_keeps_the_outputs_and_says_so(built, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    root = tmp_path / "p"
    shutil.copytree(built, root)
    model = root / "models" / "sal" / "model.pt"
    old = file_md5(model)
    (root / "models" / "sal").joinpath("model.pt").write_bytes(b"stale")  # so a rewrite is visible
    real, calls = MlflowClient.log_batch, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the first epoch's metrics reach the server, then it goes away
            _outage()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    with pytest.warns(UserWarning, match="goes on without tracking"):
        result = runner.invoke(app, ["stage", "train_sal", "--root", str(root)])
    assert result.exit_code == 5, result.output
    assert "outputs are written and kept" in result.output and "Traceback" not in result.output
    assert file_md5(model) == old  # the retrained model (same seed) is in place


# ---- SIGKILL at named write points: every output is the previous one or the new one, and a rerun completes ---

KILL_POINTS = {
    "ingest": ["after-rename:images", "after-rename:items.parquet", "before-rename:manifest.json"],
    "sequences": ["after-rename:train.parquet", "before-rename:sequences.json"],
    "features": ["after-rename:text.npy", "before-rename:side.npy"],
    "train_mfl": ["after-rename:items.npy", "before-rename:mfl", "after-rename:mfl"],
    "train_sal": ["before-rename:sal", "after-rename:sal", "before-rename:curves.png"],
}
KILL_CASES = [(stage, point) for stage, points in KILL_POINTS.items() for point in points]


def _stage_outputs(root: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    outs = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            outs.append(root / (next(iter(entry)) if isinstance(entry, dict) else entry))
    return outs


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.suffix == ".json":  # metrics carry wall-clock seconds: compare everything else
        def drop(obj):
            if isinstance(obj, dict):
                return {k: drop(v) for k, v in obj.items() if "seconds" not in k}
            return [drop(v) for v in obj] if isinstance(obj, list) else obj

        return json.dumps(drop(json.loads(path.read_text())), sort_keys=True)
    return tree_md5(path)


@pytest.fixture(scope="module")
def two_versions(built, tmp_path_factory):
    """``built`` (synthetic seed 0: the previous outputs) and the same project rerun on seed 1 (the new ones)."""
    new = tmp_path_factory.mktemp("new") / "p"
    shutil.copytree(built, new)
    params = yaml.safe_load((new / "params.yaml").read_text())
    params["ingest"]["synthetic"]["seed"] = 1
    (new / "params.yaml").write_text(yaml.safe_dump(params))
    # built by the same command the kill test runs (a fresh process): a stage's float results depend on the
    # intra-op thread count, which an in-process run would inherit from whatever ran before it in this process
    for name in STAGES_TO_BUILD:
        proc = subprocess.run([sys.executable, "-m", "mufasa.cli", "stage", name, "--no-track"], cwd=new,
                              env=dict(tool_env(), PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return built, new


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "point"), KILL_CASES, ids=[f"{s}-{p}" for s, p in KILL_CASES])
def test_sigkill_at_a_write_leaves_old_or_new_outputs_and_the_rerun_completes(two_versions, tmp_path, stage, point):
    old_root, new_root = two_versions
    root = tmp_path / "p"
    shutil.copytree(new_root, root)
    outputs = _stage_outputs(root, stage)
    old = {p: _digest(old_root / p.relative_to(root)) for p in outputs}
    new = {p: _digest(p) for p in outputs}
    name = point.split(":", 1)[1]
    named = next(p for p in outputs if p.name == name or name in p.parts)
    assert old[named] != new[named], "the two versions of the named output must differ to tell them apart"
    for p in outputs:  # this stage's outputs go back to the previous version; its inputs are the new ones
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        src = old_root / p.relative_to(root)
        shutil.copytree(src, p) if src.is_dir() else shutil.copy2(src, p)

    env = dict(tool_env(), MUFASA_FAULT_AT=point, PYTHONPATH=str(REPO))
    killed = subprocess.run([sys.executable, "-m", "mufasa.cli", "stage", stage, "--no-track"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stderr[-2000:]}"
    after_kill = {p: _digest(p) for p in outputs}
    for p in outputs:
        assert after_kill[p] in (old[p], new[p]), f"{p.relative_to(root)} is neither the previous nor the new output"
    assert after_kill[named] == (new[named] if point.startswith("after") else old[named])

    env.pop("MUFASA_FAULT_AT")
    rerun = subprocess.run([sys.executable, "-m", "mufasa.cli", "stage", stage, "--no-track"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {p: _digest(p) for p in outputs} == new
    leftovers = [q for p in outputs for q in p.parent.glob(f".{p.name}.*.tmp")]
    assert leftovers == []


# ---- disk full ---------------------------------------------------------------------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(("stage", "patch"), [("sequences", "pyarrow.parquet.write_table"), ("train_sal", "torch.save"),
                                              ("features", "numpy.save")])
def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_outputs(built, tmp_path, monkeypatch, stage, patch):
    root = tmp_path / "p"
    shutil.copytree(built, root)
    before = _snapshot(root, root / "none")
    monkeypatch.setattr(patch, _disk_full)
    result = runner.invoke(app, ["stage", stage, "--root", str(root), "--no-track"])
    assert result.exit_code == 6, result.output
    assert "No space left on device" in result.output and "is unchanged" in result.output
    assert "Traceback" not in result.output
    after = _snapshot(root, root / "none")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not any(k.startswith(("data/", "models/", "metrics/", "reports/")) for k in changed), changed
