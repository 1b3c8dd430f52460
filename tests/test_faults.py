"""Faults, not only bad files: what each stage does with corrupt state (README "When something breaks")."""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.data.io import file_md5
from mufasa.models.sasrec import SASRecConfig
from mufasa.training.common import Checkpointer, CheckpointWarning
from mufasa.training.sal_trainer import SALTrainConfig, train_sal
from tests.conftest import REPO, synthetic_params_dict

runner = CliRunner()


def _tiny_sasrec_run(ckpt_dir, epochs):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, 20)
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 25, offsets[-1])
    targets = rng.integers(1, 25, len(lengths))
    cfg = SASRecConfig(n_items=25, d_model=16, max_len=16)
    train = SALTrainConfig(epochs=epochs, batch_size=8, patience=50, progress=False, device="cpu")
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
    assert again.resumed_from == 3


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


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): file_md5(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != skip and not p.name.startswith(".mufasa.lock")  # the lock records who ran last
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
