"""The scaling study: full SAL, dense attention and window-only SAL as histories grow (``mufasa scaling``).

For every length L of the grid, a synthetic data set of ``n_users`` users with exactly L + 2 events each
(:mod:`mufasa.data.synthetic`: blocks of one interest cluster, and replays of earlier blocks that only a model
attending far back can predict) is split leave-one-out, so every user trains on L events. Each variant has the
shipped model (``train_sal.model``: window 64, blocks of 32, top-4 selection, ``max_len`` raised to L, ID
embeddings: the study is about the user encoder, not MFL) and the shipped training rule, with a **fixed number of
tokens per step** (batch = tokens_per_step / L users) and a fixed step budget, so every L costs the same number
of token-steps. Recorded per (L, variant), each an MLflow run nested under the study's run:

- quality: test HR@10 / NDCG@10 (all items ranked, history not removed) and the best validation NDCG@10;
- cost: median milliseconds of one training step (fwd + bwd + optimizer) on a batch of the trial's shape, the
  variants timed interleaved at each L, and the peak memory torch allocates during it (CUDA allocator
  statistics, or the profiler's CPU allocation events).

Results: ``<out>.json`` (every trial, the settings and the machine), ``<out>.md`` (tables) and ``<out>.png``
(quality vs L; step time and memory vs L, log-log), written after every trial, so an interrupted study keeps
what it measured. Steps are timed side by side in one process: compare ratios, not absolute times.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mufasa.data.synthetic import SyntheticConfig, generate
from mufasa.evaluation.protocol import evaluate, load_eval_data
from mufasa.measure import peak_memory_mb, step_ms
from mufasa.pipeline.params import quiet, sal_configs
from mufasa.pipeline.paths import ProjectPaths

__all__ = ["DEFAULT_LENGTHS", "VARIANTS", "ScalingConfig", "run_scaling"]

DEFAULT_LENGTHS = (256, 1024, 4096, 8192)
# The three attention regimes the study compares: SAL as shipped, SASRec-style dense causal attention, and SAL
# without its long-range branches (only the sliding window).
VARIANTS: dict[str, dict] = {
    "sal": {},
    "dense": {"attention": "dense"},
    "window_only": {"use_compressed": False, "use_selected": False},
}


@dataclass(frozen=True)
class ScalingConfig:
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    variants: tuple[str, ...] = tuple(VARIANTS)
    tokens_per_step: int = 8192  # batch = tokens_per_step // L users (at least 1)
    steps: int = 120  # optimizer steps per trial
    evaluations: int = 3  # validations per trial (the best one's weights are tested)
    n_users: int = 64
    n_items: int = 600
    replay_prob: float = 0.15  # share of blocks that replay an earlier block of the same user
    seed: int = 0
    timing_repeats: int = 3  # median of this many timed steps (after one warm-up)
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # recorded as is (e.g. the command line)

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
        if not self.lengths or min(self.lengths) < 8:
            raise ValueError("lengths must be >= 8")
        if self.steps < 1 or self.evaluations < 1 or self.tokens_per_step < 1 or self.n_users < 2:
            raise ValueError("need steps, evaluations, tokens_per_step >= 1 and n_users >= 2")


def _data(cfg: ScalingConfig, length: int, folder: Path):
    """Synthetic users with exactly ``length`` + 2 events, split leave-one-out into ``folder``."""
    from mufasa.data.sequences import leave_one_out, write_split

    synth = SyntheticConfig(
        n_users=cfg.n_users, n_items=cfg.n_items, min_events=length + 2, max_events=length + 2,
        replay_prob=cfg.replay_prob, seed=cfg.seed,
    )
    dataset = generate(synth)
    write_split(leave_one_out(dataset.interactions), folder)
    dataset.items.to_parquet(folder / "items.parquet", index=False)
    return load_eval_data(folder, folder / "items.parquet")


def _inputs(data):
    import pandas as pd

    from mufasa.pipeline.sal_model import SALInputs

    row_of = pd.Series(np.arange(len(data.train)), index=data.train.user_ids)
    targets = np.zeros(len(data.train), dtype=np.int64)
    targets[row_of.loc[data.valid.histories.user_ids].to_numpy()] = data.valid.targets
    return SALInputs(data, None, targets)


def _configs(params, cfg: ScalingConfig, data, length: int, variant: str):
    model_cfg, train_cfg = sal_configs(params, n_items=data.n_items, item_feature_dim=0, use_id_embedding=True,
                                       max_len=length, **VARIANTS[variant])
    batch = max(1, cfg.tokens_per_step // length)
    train_cfg = dataclasses.replace(
        train_cfg, batch_size=batch, max_steps=cfg.steps, epochs=cfg.steps, min_evals=1,
        min_eval_steps=max(1, cfg.steps // cfg.evaluations), patience=cfg.evaluations + 1, eval_every=1,
        seed=cfg.seed, device=cfg.device, progress=False, window_stride=None, max_len=None,
    )
    return model_cfg, train_cfg


def _costs(params, cfg: ScalingConfig, data, length: int) -> dict[str, dict[str, float]]:
    """Step time and peak memory of every variant at ``length``, timed interleaved (variant after variant in each
    repetition) on freshly built models of the trained shapes, so machine noise hits all variants alike."""
    from mufasa.pipeline.sal_model import seqs_of
    from mufasa.training.common import resolve_device
    from mufasa.training.sal_trainer import pad_sequences

    device = resolve_device(cfg.device)
    steps = {}
    for variant in cfg.variants:
        model_cfg, train_cfg = _configs(params, cfg, data, length, variant)
        torch.manual_seed(cfg.seed)
        model = model_cfg.build(None).to(device).train()
        rows = np.arange(min(train_cfg.batch_size, len(data.train)))
        sample = pad_sequences(*seqs_of(data.train), rows, length, with_targets=True).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-9)

        def step(model=model, sample=sample, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            model.calculate_loss(sample.items, sample.timestamps, sample.targets).backward()
            opt.step()

        step()  # warm-up: allocator, optimizer state
        steps[variant] = step
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(cfg.timing_repeats):
        for variant, step in steps.items():
            times[variant].append(step_ms(step, device))
    return {v: {"step_ms": float(np.median(times[v])), "peak_mb": peak_memory_mb(steps[v], device)} for v in steps}


def _trial(params, cfg: ScalingConfig, data, length: int, variant: str, root: Path, on_metrics) -> dict:
    from mufasa.pipeline.sal_model import SALScorer, fit

    model_cfg, train_cfg = _configs(params, cfg, data, length, variant)
    t0 = time.perf_counter()
    result = fit(model_cfg, train_cfg, _inputs(data), root, f"scaling-{length}-{variant}", None, on_metrics)
    train_seconds = time.perf_counter() - t0
    scorer = SALScorer(result.model, batch_size=max(1, 4 * train_cfg.batch_size))
    test = evaluate(scorer, data.test, data.n_items, ks=(10, 50))
    return {
        "L": length,
        "variant": variant,
        "batch_size": train_cfg.batch_size,
        "tokens_per_step": train_cfg.batch_size * length,
        "steps": result.steps_run,
        "test_hr@10": test["hr@10"],
        "test_ndcg@10": test["ndcg@10"],
        "test_hr@50": test["hr@50"],
        "best_val_ndcg@10": float(result.best.get("val_ndcg@10", float("nan"))),
        "train_seconds": train_seconds,
    }


def run_scaling(params, paths: ProjectPaths, out: Path, cfg: ScalingConfig, tracking: bool = True) -> dict:
    """Run the study (every L x variant), writing ``out``.{json,md,png} after each trial; return the payload."""
    from mufasa.pipeline.tracking import NullTracker, Tracker, new_pipeline_key

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = quiet(params)
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if tracking else NullTracker()
    key = f"scaling-{new_pipeline_key()}"
    payload = {
        "settings": {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}, **cfg.extra,
                     "model": {k: v for k, v in dataclasses.asdict(params.train_sal.model).items()
                               if k in ("d_model", "n_layers", "n_heads", "window", "block_size", "top_k",
                                        "select_group")}},
        "machine": {"torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "trials": [],
    }
    started = time.perf_counter()
    with tracker.stage_run("scaling", key, tags={"mufasa.role": "scaling-study"}) as study_run:
        study_run.log_params({f"scaling.{k}": v for k, v in payload["settings"].items() if k != "model"})
        with tempfile.TemporaryDirectory(prefix="mufasa-scaling-") as tmp:
            for length in cfg.lengths:
                folder = Path(tmp) / f"L{length}"
                folder.mkdir()
                data = _data(cfg, length, folder)
                costs = _costs(params, cfg, data, length)
                for variant in cfg.variants:
                    with tracker.stage_run(f"scaling-L{length}-{variant}", key,
                                           tags={"mufasa.role": "scaling-trial"}) as run:
                        run.log_params({"L": length, "variant": variant, "steps": cfg.steps,
                                        "tokens_per_step": cfg.tokens_per_step, "seed": cfg.seed})
                        trial = _trial(params, cfg, data, length, variant, Path(tmp),
                                       lambda step, m, run=run: run.log_metrics(m, step=step))
                        trial.update(costs[variant])
                        run.log_metrics({k: v for k, v in trial.items() if k not in ("L", "variant")})
                    payload["trials"].append(trial)
                    payload["seconds"] = time.perf_counter() - started
                    write_results(payload, out)
        for suffix in (".json", ".md", ".png"):
            if out.with_suffix(suffix).is_file():
                study_run.log_artifact(out.with_suffix(suffix))
    return payload


def crossover(trials: list[dict], a: str = "sal", b: str = "dense") -> int | None:
    """The smallest L from which ``a``'s training step is faster than ``b``'s (None if never)."""
    by = {(t["L"], t["variant"]): t["step_ms"] for t in trials}
    lengths = sorted({t["L"] for t in trials if (t["L"], a) in by and (t["L"], b) in by})
    for i, length in enumerate(lengths):
        if all(by[(m, a)] < by[(m, b)] for m in lengths[i:]):
            return length
    return None


def write_results(payload: dict, out: Path) -> None:
    from mufasa.data.io import write_json

    write_json(payload, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(payload))
    plot(payload, out.with_suffix(".png"))


def markdown(payload: dict) -> str:
    s = payload["settings"]
    trials = payload["trials"]
    lines = [
        "# Scaling study: SAL vs dense attention vs window-only as histories grow",
        "",
        f"`mufasa scaling`: {s['n_users']} synthetic users with L + 2 events each (replay probability "
        f"{s['replay_prob']}), {s['tokens_per_step']:,} tokens per step (batch = tokens / L), {s['steps']} optimizer "
        f"steps per trial, seed {s['seed']}; model {json.dumps(s['model'])}; ID embeddings. Test: every item "
        f"ranked, history kept. Step time: median of {s['timing_repeats']} fwd+bwd+optimizer steps of one batch, "
        f"the variants timed interleaved at each L (compare ratios, not absolute times). Machine: "
        f"{payload['machine']['platform']}, torch {payload['machine']['torch']}, "
        f"{payload['machine']['threads']} threads, CUDA {payload['machine']['cuda']}.",
        "",
        "| L | variant | batch | test HR@10 | test NDCG@10 | best val NDCG@10 | step ms | vs dense | peak MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense = {t["L"]: t["step_ms"] for t in trials if t["variant"] == "dense"}
    for t in trials:
        ratio = f"{dense[t['L']] / t['step_ms']:.2f}x" if t["L"] in dense else "n/a"
        lines.append(
            f"| {t['L']:,} | {t['variant']} | {t['batch_size']} | {t['test_hr@10']:.4f} | {t['test_ndcg@10']:.4f} | "
            f"{t['best_val_ndcg@10']:.4f} | {t['step_ms']:.0f} | {ratio} | {t['peak_mb']:.0f} |"
        )
    cross = crossover(trials)
    lines += ["", f"SAL's training step is faster than dense attention's from L = {cross:,} on."
              if cross is not None else "SAL's training step was not faster than dense attention's at any L measured.",
              "", f"Total {payload.get('seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mufasa.data.io import save_figure

    trials = payload["trials"]
    fig, (q, c) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        rows = sorted((t for t in trials if t["variant"] == variant), key=lambda t: t["L"])
        if not rows:
            continue
        ls = [t["L"] for t in rows]
        q.plot(ls, [t["test_hr@10"] for t in rows], marker="o", label=f"{variant} HR@10")
        q.plot(ls, [t["test_ndcg@10"] for t in rows], marker="x", linestyle="--", label=f"{variant} NDCG@10")
        line, = c.plot(ls, [t["step_ms"] for t in rows], marker="o", label=f"{variant} step ms")
        c.plot(ls, [max(t["peak_mb"], 1e-3) for t in rows], marker="s", linestyle=":", color=line.get_color(),
               label=f"{variant} peak MB")
    q.set(xscale="log", xlabel="history length L", ylabel="test metric", title="quality vs L")
    c.set(xscale="log", yscale="log", xlabel="history length L", ylabel="ms per step / MB",
          title=f"cost per step ({payload['settings']['tokens_per_step']:,} tokens) vs L")
    lengths = sorted({t["L"] for t in trials})
    for ax in (q, c):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        if lengths:  # one labelled tick per measured L (log-axis minor labels overlap)
            ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
