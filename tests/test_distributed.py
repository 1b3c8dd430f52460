"""Data-parallel training (DDP, gloo on CPU) against the 1-process run with the same global batch.

Two real processes (``torch.multiprocessing.spawn``, joined through torchrun's environment variables and
:func:`mufasa.training.distributed.process_group`) train SAL (full softmax) and MFL (all four losses, whose in-batch
negatives the gathered batch keeps) on small synthetic data; a global optimizer hook records the gradient and
the weights at every step, on both sides. The 2-process run must follow the 1-process run step by step (float
error only), resume from its own checkpoint onto the same curve, and leave exactly one writer's side effects.
A stage with ``nproc: 2`` must start itself under torchrun and hand rank 0's result back. With a GPU, a 1-process
torchrun job joins an NCCL group and trains SAL on CUDA (DDP wrapper and trainer), reporting through the launcher.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mufasa.data.features import ItemFeatures
from mufasa.models.fusion import FusionConfig
from mufasa.models.sal import SALConfig
from mufasa.training import distributed
from mufasa.training.mfl_trainer import MFLTrainConfig, train_mfl
from mufasa.training.sal_trainer import SALTrainConfig, train_sal
from tests.helpers import EPOCH_BUDGET, free_port

WORLD = 2
SAL_EPOCHS, MFL_EPOCHS = 3, 3
# Uneven on purpose: 37 users (42 training windows of <= 25 events: histories up to 29 events, max_len 24) in global
# batches of 8 (the last has 2: shards of 1 and 1); 67 MFL training items in 4 batches of 17/17/17/16 (shards of 9
# and 8).
SAL_MODEL = SALConfig(n_items=30, d_model=16, n_heads=2, n_layers=1, window=4, block_size=4, top_k=2, max_len=24,
                      dropout=0.0, loss="full", item_feature_dim=4)
SAL_TRAIN = SALTrainConfig(**EPOCH_BUDGET, epochs=SAL_EPOCHS, batch_size=8, lr=3e-3, patience=100, seed=3, device="cpu",
                           progress=False)
FUSION = FusionConfig(side_dim=5, text_dim=24, image_dim=40, d_model=16, out_dim=8, collab_dim=8, n_heads=2,
                      dropout=0.0)
MFL_TRAIN = MFLTrainConfig(epochs=MFL_EPOCHS, batch_size=17, patience=100, seed=5, device="cpu", progress=False)


def sal_data() -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 30, size=37)
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 31, size=offsets[-1])
    timestamps = np.concatenate([np.sort(rng.integers(0, 10**6, size=n)) for n in lengths])
    targets = np.where(rng.random(37) < 0.8, rng.integers(1, 31, size=37), 0)
    features = rng.normal(size=(30, 4)).astype(np.float32)
    return (offsets, items, timestamps), targets, features


def mfl_data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    n = 75
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    text, collab = unit(rng.normal(size=(n, 24))), unit(rng.normal(size=(n, 8)))
    image = rng.normal(size=(n, 40)).astype(np.float32)
    has_image = rng.random(n) < 0.6
    image[~has_image] = 0.0
    side = rng.normal(size=(n, 5)).astype(np.float32)
    collab_mask = rng.random(n) < 0.9
    collab[~collab_mask] = 0.0
    genres = rng.integers(0, 3, size=n)
    return text, image, has_image, side, collab, collab_mask, genres


class StepRecorder:
    """Every optimizer step of the process: the (DDP-averaged, clipped) gradient before it, the weights after."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []

    @staticmethod
    def _flat(opt, what: str) -> torch.Tensor:
        ps = [p for g in opt.param_groups for p in g["params"]]
        if what == "grad":
            return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) for p in ps])
        return torch.cat([p.detach().reshape(-1) for p in ps]).clone()

    def __enter__(self) -> StepRecorder:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles = [
            register_optimizer_step_pre_hook(lambda opt, a, k: self.grads.append(self._flat(opt, "grad"))),
            register_optimizer_step_post_hook(lambda opt, a, k: self.weights.append(self._flat(opt, "weight"))),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def run_both(folder: Path, rank: int) -> dict:
    """SAL (2 epochs, then resumed from the checkpoint to 3) and MFL (3 epochs) with rank-tagged callbacks."""
    log = folder / "metrics.log"

    def on_metrics(step: int, row: dict) -> None:
        with log.open("a") as fh:
            fh.write(f"{rank}\t{step}\t{sorted(row)[0]}\n")

    seqs, targets, feats = sal_data()
    with StepRecorder() as sal_steps:
        first = train_sal(SAL_MODEL, replace(SAL_TRAIN, epochs=2), seqs, targets, feats, folder / "sal", on_metrics)
        sal = train_sal(SAL_MODEL, SAL_TRAIN, seqs, targets, feats, folder / "sal", on_metrics)
    with StepRecorder() as mfl_steps:
        data = mfl_data()
        mfl = train_mfl(FUSION, MFL_TRAIN, ItemFeatures(*data[:4]), *data[4:], checkpoint_dir=folder / "mfl",
                        on_metrics=on_metrics)
    return {
        "sal_first_epochs": first.epochs_run,
        "sal_resumed_from": sal.resumed_from // sal.budget.steps_per_epoch,  # in epochs (resumed_from: steps)
        "sal_history": [{k: v for k, v in r.items() if k != "seconds"} for r in sal.history],
        "sal_state": {k: v.clone() for k, v in sal.model.state_dict().items()},
        "sal_grads": sal_steps.grads,
        "sal_weights": sal_steps.weights,
        "mfl_history": [{k: v for k, v in r.items() if "seconds" not in k and k != "items_per_s"} for r in mfl.history],
        "mfl_state": {k: v.clone() for k, v in mfl.model.state_dict().items()},
        "mfl_fused": torch.from_numpy(mfl.fused),
        "mfl_grads": mfl_steps.grads,
        "mfl_weights": mfl_steps.weights,
    }


def _worker(rank: int, port: int, folder: str) -> None:
    """One DDP rank, joined as torchrun would join it (env://)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.process_group("cpu", timeout=timedelta(seconds=120)):  # a deadlock fails, never hangs
        assert distributed.world_size() == WORLD and distributed.rank() == rank
        out = run_both(Path(folder), rank)
    torch.save(out, Path(folder) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training in one process and in two DDP processes (timed, for the report in the test output)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    single_dir, ddp_dir = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("ddp")
    t0 = time.perf_counter()
    single = run_both(single_dir, 0)
    t1 = time.perf_counter()
    mp.spawn(_worker, args=(free_port(), str(ddp_dir)), nprocs=WORLD, join=True)
    t2 = time.perf_counter()
    print(f"1 process: {t1 - t0:.1f} s; 2 DDP processes (spawn included): {t2 - t1:.1f} s")
    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    torch.set_num_threads(previous)  # later modules (in this process) train with the default thread count
    return single, ranks, ddp_dir, single_dir


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor], where: torch.Tensor | None = None) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs()[where].max() if where is not None else (x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("model", ["sal", "mfl"])
def test_two_processes_follow_the_one_process_run_step_by_step(runs, model):
    single, (rank0, rank1), _, _ = runs
    steps = {"sal": SAL_EPOCHS * 6, "mfl": MFL_EPOCHS * 4}[model]
    assert len(single[f"{model}_grads"]) == len(rank0[f"{model}_grads"]) == steps
    # the gradient DDP hands the optimizer is the 1-process gradient of the whole global batch, at every step
    grads = torch.stack(single[f"{model}_grads"]).abs()  # (steps, n_weights)
    grad_diff = _max_diff(single[f"{model}_grads"], rank0[f"{model}_grads"])
    grad_scale = float(grads.max())
    # Weights are compared where the gradient is real. A few coordinates have an exactly-zero gradient in exact
    # arithmetic (MFL's attention key bias: softmax ignores a shift shared by all keys), so both runs see float
    # noise (~1e-9) there, which Adam normalises into lr-sized steps of random sign; those weights hold noise in
    # either run and change no output (the fused vectors are compared below).
    real = grads.amax(0) > 1e-6
    weight_diff = _max_diff(single[f"{model}_weights"], rank0[f"{model}_weights"], real)
    noise_diff = _max_diff(single[f"{model}_weights"], rank0[f"{model}_weights"])
    print(f"{model}: max |grad diff| {grad_diff:.2e} (max |grad| {grad_scale:.2e}); max |weight diff| {weight_diff:.2e} "
          f"over {int(real.sum())} weights with a gradient, {noise_diff:.2e} over all {real.numel()}")
    assert grad_diff <= 1e-4 * grad_scale
    assert weight_diff < 1e-5
    assert real.float().mean() > 0.5  # the check covers most weights (the rest: padding rows, unseen items)
    # epoch curves (train loss and rank 0's validation, broadcast) agree
    loss_diff = 0.0
    for a, b in zip(single[f"{model}_history"], rank0[f"{model}_history"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (model, key, a["epoch"])
            loss_diff = max(loss_diff, abs(a[key] - b[key]) if "loss" in key else loss_diff)
    print(f"{model}: max |loss diff| over the epoch curves {loss_diff:.2e}")
    for name, value in single[f"{model}_state"].items():
        if model == "sal":  # no zero-gradient coordinates in SAL: every final weight agrees
            torch.testing.assert_close(rank0[f"{model}_state"][name], value, rtol=0, atol=1e-5, msg=name)
        # the ranks never diverge: same weights, same history, bit for bit
        torch.testing.assert_close(rank1[f"{model}_state"][name], rank0[f"{model}_state"][name], rtol=0, atol=0)
    assert rank1[f"{model}_history"] == rank0[f"{model}_history"]
    if model == "mfl":
        # float noise of the gloo all-reduce: measured up to 1.07e-5 on unit vectors; a real divergence is > 1e-2
        np.testing.assert_allclose(rank0["mfl_fused"].numpy(), single["mfl_fused"].numpy(), atol=1e-4)


def test_resume_and_side_effects_belong_to_rank_0(runs):
    single, (rank0, _), ddp_dir, single_dir = runs
    # the DDP run stopped after 2 epochs and resumed from its own checkpoint onto the uninterrupted curve
    assert rank0["sal_first_epochs"] == 2 and rank0["sal_resumed_from"] == 2
    assert single["sal_resumed_from"] == 2  # the 1-process reference took the same path
    # one writer: one checkpoint file per trainer, no temp files left by another rank
    assert sorted(p.name for p in (ddp_dir / "sal").iterdir()) == ["last.pt"]
    assert sorted(p.name for p in (ddp_dir / "mfl").iterdir()) == ["last.pt"]
    # one reporter: every callback ran on rank 0 only, once per epoch (+ MFL's final diagnostics)
    lines = [line.split("\t") for line in (ddp_dir / "metrics.log").read_text().splitlines()]
    assert {rank for rank, _, _ in lines} == {"0"}
    single_lines = (single_dir / "metrics.log").read_text().splitlines()
    assert len(lines) == len(single_lines) == 2 + 1 + MFL_EPOCHS + 1


def test_helpers_are_no_ops_in_one_process():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    rows = np.arange(5)
    np.testing.assert_array_equal(distributed.shard(rows), rows)
    assert distributed.shard_sizes(5) == [5]
    x = torch.randn(3, 2)
    assert distributed.gather_rows({"x": x, "none": None}, [3])["x"] is x
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0] and distributed.broadcast_object({"a": 1}) == {"a": 1}
    state = torch.get_rng_state()
    distributed.seed_rank(0, 1)
    assert torch.equal(torch.get_rng_state(), state)  # the 1-process random stream is untouched
    with distributed.process_group("cpu"):  # no torchrun variables: nothing to join
        assert not torch.distributed.is_initialized()
    assert not distributed.under_torchrun() and distributed.needs_launch(2) and not distributed.needs_launch(1)


def test_nproc_is_a_checked_stage_setting_and_only_rank_0_tracks(tmp_path, monkeypatch):
    from mufasa.pipeline.params import ParamsError, parse_params
    from mufasa.pipeline.tracking import Tracker
    from tests.conftest import synthetic_params_dict

    raw = synthetic_params_dict()
    assert parse_params(raw).train_mfl.nproc == 1 and parse_params(raw).train_sal.nproc == 1
    raw["train_sal"]["nproc"] = 0
    with pytest.raises(ParamsError, match="nproc"):
        parse_params(raw)
    monkeypatch.setenv("RANK", "1")  # a torchrun worker other than rank 0: its stage run logs nothing anywhere
    store = tmp_path / "mlflow" / "mlflow.db"
    with Tracker(f"sqlite:///{store}").stage_run("train_sal", "key") as run:
        run.log_metrics({"loss": 1.0}, step=1)
    assert not store.parent.exists()


def test_launch_reports_a_failed_job_with_its_exit_code_and_stderr(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit('worker says no')\n")
    with pytest.raises(RuntimeError, match="exit code") as info:
        distributed.launch([str(script)], 1)
    assert "worker says no" in str(info.value)


@pytest.mark.slow  # ~45 s: three stages to prepare, then a torchrun job that imports the whole pipeline twice
def test_a_stage_with_nproc_2_launches_itself_under_torchrun(tmp_path):
    """`train_mfl` with nproc 2 (what `dvc repro` and the Dagster asset run): torchrun job, rank 0's outputs,
    metrics relayed to the caller's callback, the same fused vectors as the in-process stage (dropout off)."""
    from mufasa.pipeline import stages
    from mufasa.pipeline.params import parse_params
    from mufasa.pipeline.paths import ProjectPaths
    from tests.conftest import synthetic_params_dict

    raw = synthetic_params_dict()
    raw["train_mfl"]["fusion"]["dropout"] = 0.0
    raw["train_mfl"]["train"]["device"] = "cpu"
    paths = ProjectPaths(tmp_path)
    params = parse_params(raw)
    for name in ("ingest", "sequences", "features"):
        stages.run_stage(name, params, paths)
    stages.run_stage("train_mfl", params, paths)
    fused_single = np.load(paths.root / "data" / "fused" / "items.npy")

    raw["train_mfl"]["nproc"] = 2
    seen: list[tuple[int, dict]] = []
    result = stages.run_stage("train_mfl", parse_params(raw), paths, on_metrics=lambda s, m: seen.append((s, m)))
    fused = np.load(result.outputs["fused"])
    # float noise of the gloo all-reduce: measured up to 1.07e-5 on unit vectors; a real divergence is > 1e-2
    np.testing.assert_allclose(fused, fused_single, atol=1e-4)
    assert [s for s, m in seen if "loss" in m] == [1, 2, 3] and "diag_effective_rank" in seen[-1][1]
    assert result.stage == "train_mfl" and result.metrics["epochs_run"] == 3.0
    assert json.loads((paths.root / "models" / "mfl" / "config.json").read_text())["enabled"] is True
    assert all(Path(a).exists() for a in result.artifacts)
    assert not any((paths.root / "checkpoints" / "train_mfl").iterdir())


REPO = Path(__file__).resolve().parents[1]

# The rank the NCCL test below starts under torchrun (through `distributed.launch`); argv[1]: a folder holding
# spec.json (SALConfig and SALTrainConfig fields) and data.npz (train sequences, targets, item features).
NCCL_WORKER = """
import copy, json, sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mufasa.models.sal import SALConfig, SALModel
from mufasa.training import distributed
from mufasa.training.common import autocast
from mufasa.training.sal_trainer import SALTrainConfig, pad_sequences, train_sal

folder = Path(sys.argv[1])
spec = json.loads((folder / "spec.json").read_text())
data = np.load(folder / "data.npz")
seqs = (data["offsets"], data["items"], data["timestamps"])
model_cfg, train_cfg = SALConfig(**spec["model"]), SALTrainConfig(**spec["train"])
n_users = len(data["offsets"]) - 1

with distributed.process_group("cuda", timeout=timedelta(seconds=120)):  # a hang fails, never blocks
    dev = torch.device("cuda", torch.cuda.current_device())
    report = {"backend": dist.get_backend(), "world": distributed.world_size(), "rank": distributed.rank(),
              "device": torch.cuda.get_device_name(dev)}
    t = torch.arange(4.0, device=dev)
    dist.all_reduce(t)
    box = [{"hello": "nccl"}]
    dist.broadcast_object_list(box, src=0)
    x = torch.randn(5, 3, device=dev, requires_grad=True)
    gathered = distributed._GatherRows.apply(x)  # all_gather forward, all_reduce backward
    gathered.sum().backward()
    report.update(all_reduce=t.tolist(), broadcast=box[0], gather_ok=bool(torch.equal(gathered, x))
                  and bool(torch.equal(x.grad, torch.ones_like(x))))

    # the trainers' DDP wrapper against the bare model: one rank, so the same loss and gradient
    torch.manual_seed(0)
    model = SALModel(model_cfg, torch.as_tensor(data["features"])).to(dev)
    bare = copy.deepcopy(model)
    net = distributed.data_parallel(model, SALModel.calculate_loss, dev)
    batch = pad_sequences(*seqs, np.arange(8), model_cfg.max_len, with_targets=True).to(dev)
    loss = net(batch.items, batch.timestamps, batch.targets)
    loss.backward()
    ref = bare.calculate_loss(batch.items, batch.timestamps, batch.targets)
    ref.backward()
    diffs = [float((p.grad - q.grad).abs().max()) for p, q in zip(model.parameters(), bare.parameters())
             if p.grad is not None and q.grad is not None]
    report.update(ddp_loss=loss.item(), bare_loss=ref.item(), ddp_grad_max_diff=max(diffs),
                  grad_scale=max(float(q.grad.abs().max()) for q in bare.parameters() if q.grad is not None))

    # a few DDP steps on one batch under bf16 autocast (as the trainers run on CUDA): the loss must come down
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = pad_sequences(*seqs, np.arange(min(16, n_users)), model_cfg.max_len, with_targets=True).to(dev)
    losses = []
    for step in range(10):
        with autocast(dev):
            loss = net(batch.items, batch.timestamps, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        print(f"rank 0 DDP step {step}: loss {losses[-1]:.4f}", flush=True)
    report["ddp_losses"] = losses

    # the SAL trainer inside the live NCCL group; its metrics go to the launcher's callback
    result = train_sal(model_cfg, train_cfg, seqs, data["targets"], data["features"],
                       on_metrics=distributed.relay_metrics(None))
    report["train_history"] = result.history
    report["train_device"] = str(result.model.position.weight.device)
    distributed.publish_result(report)
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_one_process_nccl_job_under_torchrun_trains_sal_on_cuda(tmp_path):
    """`distributed.launch` starts torchrun (1 process); the rank joins an NCCL group (process_group on "cuda"),
    runs NCCL collectives, the DDP wrapper (same loss and gradient as the bare model with one rank, then a few
    bf16-autocast steps) and train_sal on CUDA, relaying its metrics and result to the launcher."""
    seqs, targets, feats = sal_data()
    np.savez(tmp_path / "data.npz", offsets=seqs[0], items=seqs[1], timestamps=seqs[2], targets=targets,
             features=feats)
    train = replace(SAL_TRAIN, device="cuda")
    (tmp_path / "spec.json").write_text(json.dumps({"model": asdict(SAL_MODEL), "train": asdict(train)}))
    script = tmp_path / "nccl_worker.py"
    script.write_text(NCCL_WORKER)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    seen: list[tuple[int, dict]] = []
    t0 = time.perf_counter()
    result = distributed.launch([str(script), str(tmp_path)], 1, on_metrics=lambda s, m: seen.append((s, m)),
                                env={"PYTHONPATH": pythonpath, "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")})
    print(f"torchrun job: {time.perf_counter() - t0:.1f} s")
    print(json.dumps({k: v for k, v in result.items() if k != "train_history"}, indent=1))
    for step, row in seen:
        print(f"train_sal epoch {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    assert (result["backend"], result["world"], result["rank"]) == ("nccl", 1, 0)
    assert result["all_reduce"] == [0.0, 1.0, 2.0, 3.0] and result["broadcast"] == {"hello": "nccl"}
    assert result["gather_ok"]
    assert result["ddp_loss"] == pytest.approx(result["bare_loss"], rel=1e-5)
    assert result["ddp_grad_max_diff"] <= 1e-5 * result["grad_scale"]
    losses = result["ddp_losses"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
    assert result["train_device"].startswith("cuda")
    assert [s for s, _ in seen] == list(range(1, SAL_EPOCHS + 1))  # rank 0's metrics, relayed by the launcher
    assert all(np.isfinite(row["loss"]) for _, row in seen)
    assert [row["loss"] for _, row in seen] == [row["loss"] for row in result["train_history"]]
