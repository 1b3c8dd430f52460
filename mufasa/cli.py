"""The ``mufasa`` command: runs pipeline stages (DVC calls ``mufasa stage <name>``) and data utilities."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path

import typer

from mufasa.pipeline.stages import STAGES  # the stage table (imports no stage module)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MUFASA recommender pipeline.")

StageName = Enum("StageName", {name: name for name in STAGES}, type=str)


def _lock_timeout() -> float:
    """Seconds a stage waits for another run's project lock (``MUFASA_LOCK_TIMEOUT``; default 0: fail at once)."""
    raw = os.environ.get("MUFASA_LOCK_TIMEOUT", "0")
    try:
        return float(raw)
    except ValueError:
        raise typer.BadParameter(f"MUFASA_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from None


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, never to a stream captured at setup
    (in-process callers such as test runners swap and close stderr between invocations)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_stderr() -> None:
    """The library's notes (e.g. the training budget resolved from the data size) on stderr; other libraries'
    loggers keep their own levels."""
    logger = logging.getLogger("mufasa")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@app.command()
def stage(
    name: StageName = typer.Argument(..., help="Stage to run."),
    root: Path = typer.Option(None, help="Project root (default: the folder holding dvc.yaml above the cwd)."),
    params_file: Path = typer.Option(None, "--params", help="Parameter file (default: <root>/params.yaml)."),
    track: bool = typer.Option(True, help="Log the stage to MLflow (MLFLOW_TRACKING_URI or ./mlflow)."),
    register: bool = typer.Option(
        False, help="gate only: register the candidate as a model version, set `challenger` and, on a pass, "
        "`champion` (what the Dagster retrain does). Without it the gate only records its decision (dvc.yaml)."
    ),
    fail_on_refusal: bool = typer.Option(
        True, help="gate only: exit 3 when the gate refuses the candidate. dvc.yaml says --no-fail-on-refusal, "
        "so a refused run or experiment is still recorded (metrics/gate.json: passed false)."
    ),
) -> None:
    """Run one pipeline stage with its params; exit 2 with file/column/row details on bad data."""
    _log_to_stderr()
    from mufasa.data.io import CorruptInputError, OutputWriteError
    from mufasa.data.schema import DataValidationError
    from mufasa.pipeline.params import ParamsError, load_params
    from mufasa.pipeline.paths import ProjectPaths, find_project_root
    from mufasa.pipeline.lock import ProjectLocked, project_lock
    from mufasa.pipeline.stages import run_stage
    from mufasa.pipeline.tracking import NullTracker, Tracker, TrackingUnavailable, new_pipeline_key

    try:
        paths = ProjectPaths(root or find_project_root())
        params = load_params(params_file or paths.params)
    except (ParamsError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    options = {}
    if name.value == "gate":
        if register and os.environ.get("DVC_EXP_NAME"):
            # DVC sets DVC_EXP_NAME for every stage of `dvc exp run` (workspace, --temp, --queue), never for repro
            typer.secho(
                f"error: stage 'gate' not started: --register inside the DVC experiment "
                f"{os.environ['DVC_EXP_NAME']!r}. An experiment never registers a version or moves `champion`; "
                "apply it (`dvc exp apply`) and run `mufasa stage gate --register` or the Dagster retrain.",
                fg="red", err=True,
            )
            raise typer.Exit(2)
        options["register"] = register
    elif register:
        typer.secho(f"error: --register is the gate's option, not stage '{name.value}'s", fg="red", err=True)
        raise typer.Exit(2)
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if track else NullTracker()
    # Under torchrun (`torchrun --nproc_per_node N -m mufasa.cli stage train_sal`) rank 0 holds the lock for the job.
    lock = project_lock(paths.root, f"mufasa stage {name.value}", timeout=_lock_timeout())
    if int(os.environ.get("RANK", "0")) > 0:
        lock = contextlib.nullcontext()
    try:
        with lock, tracker.stage_run(name.value, new_pipeline_key()) as run:
            result = run_stage(
                name.value,
                params,
                paths,
                on_metrics=lambda step, m: run.log_metrics(m, step=step),
                stage_run=run if track else None,
                **options,
            )
            tracker.log_stage_result(run, result)
    except (DataValidationError, FileNotFoundError) as exc:
        typer.secho(f"error: stage '{name.value}' rejected its input; nothing was written.\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except CorruptInputError as exc:
        typer.secho(
            f"error: stage '{name.value}' cannot read its input; nothing was written.\n{exc}", fg="red", err=True
        )
        raise typer.Exit(2) from exc
    except ProjectLocked as exc:
        typer.secho(f"error: stage '{name.value}' not started: {exc}", fg="red", err=True)
        raise typer.Exit(4) from exc
    except TrackingUnavailable as exc:
        typer.secho(f"error: stage '{name.value}': {exc}", fg="red", err=True)
        raise typer.Exit(5) from exc
    except OutputWriteError as exc:
        typer.secho(f"error: stage '{name.value}' could not write its outputs: {exc}", fg="red", err=True)
        raise typer.Exit(6) from exc
    if run.tracking_error:
        written = ", ".join(str(p) for p in result.outputs.values()) or "none"
        typer.secho(
            f"error: stage '{name.value}' finished and its outputs are written and kept ({written}), but MLflow "
            f"tracking failed: {run.tracking_error}. Rerun the stage once the tracking store is back to record it.",
            fg="red",
            err=True,
        )
        raise typer.Exit(5)
    if name.value == "gate":
        info = result.info
        typer.echo(f"gate: {info['model']} candidate {info['candidate_key']}: {info['decision']}")
        for reason in info["reasons"]:
            typer.echo(f"  - {reason}")
        if info["registered"]:
            typer.echo(f"gate: registered as version {info['version']}; champion: version {info['champion']}")
        else:
            already = f" (already registered as version {info['version']})" if info["version"] else ""
            champion = f"version {info['champion']}" if info["champion"] else "none registered"
            typer.echo(
                f"gate: decision recorded, nothing registered{already}; champion unchanged ({champion}). "
                "`mufasa stage gate --register` registers (and, on a pass, promotes) it."
            )
        if not info["passed"] and fail_on_refusal:
            typer.secho(
                f"error: promotion refused; champion stays at version {info['previous_champion']}", fg="red", err=True
            )
            raise typer.Exit(3)
        return
    summary = {k: round(v, 4) for k, v in result.metrics.items()}
    typer.echo(f"{name.value}: ok {json.dumps(summary)}")


@app.command()
def synth(
    out: Path = typer.Option(..., help="Folder to write interactions/items files (and images/) into."),
    fmt: str = typer.Option("csv", "--format", help="csv or parquet."),
    n_users: int = typer.Option(300),
    n_items: int = typer.Option(600),
    min_events: int = typer.Option(20),
    max_events: int = typer.Option(200),
    images: bool = typer.Option(True, help="Also render item images into <out>/images."),
    seed: int = typer.Option(0),
) -> None:
    """Write a synthetic dataset in the bring-your-own-data schema (for trying the `files` source)."""
    from mufasa.data import synthetic

    cfg = synthetic.SyntheticConfig(
        n_users=n_users, n_items=n_items, min_events=min_events, max_events=max_events, seed=seed
    )
    data = synthetic.generate(cfg)
    written = synthetic.write_files(data, out, fmt=fmt, config=cfg if images else None)
    for name, path in written.items():
        typer.echo(f"{name}: {path}")


def _project(root: Path | None):
    from mufasa.pipeline.params import load_params
    from mufasa.pipeline.paths import ProjectPaths, find_project_root

    paths = ProjectPaths(root or find_project_root())
    return paths, load_params(paths.params)


@app.command()
def report(root: Path = typer.Option(None, help="Project root.")) -> None:
    """Print the evaluation table (test split, all baselines and ablations) and the last gate decision."""
    from mufasa.evaluation.report import metrics_table

    paths, _ = _project(root)
    eval_path = paths.eval_metrics
    if not eval_path.is_file():
        typer.secho(f"error: {eval_path} not found: run the pipeline (make run) first", fg="red", err=True)
        raise typer.Exit(2)
    payload = json.loads(eval_path.read_text())
    protocol = payload.get("protocol", {})
    typer.echo(metrics_table(payload["models"], title=f"Test split, full ranking, {protocol}"))
    gate_path = paths.gate_metrics
    if gate_path.is_file():
        gate = json.loads(gate_path.read_text())
        compared = gate.get("compared_with_champion", gate.get("previous_champion"))  # before: previous_champion
        typer.echo(
            f"gate: candidate {gate.get('candidate_key', '?')} {gate['decision']} (compared with champion version "
            f"{compared}); the registry (`make mlflow-ui`) holds what was registered"
        )
        for reason in gate["reasons"]:
            typer.echo(f"  - {reason}")


@app.command()
def promote(
    version: str = typer.Option(..., help="Model version to make champion (rollback or manual promotion)."),
    root: Path = typer.Option(None, help="Project root."),
) -> None:
    """Move the `champion` alias of the registered model to VERSION (the decision is tagged on it)."""
    from mlflow.exceptions import MlflowException

    from mufasa.pipeline.registry import promote as move
    from mufasa.pipeline.tracking import default_tracking_uri

    paths, params = _project(root)
    uri = default_tracking_uri(paths.root)
    try:
        previous = move(uri, params.gate.model_name, version, reason="mufasa promote")
    except MlflowException as exc:
        typer.secho(f"error: {params.gate.model_name} version {version}: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{params.gate.model_name}: champion {previous} -> {version}")


def user_request(interactions_path: Path, user: int):
    """The model input for ``user``: their whole ingested history (oldest first) as one ``item_ids`` /
    ``timestamps`` row; ``None`` when the user has no events."""
    import pandas as pd

    from mufasa.data.sequences import order_events

    interactions = pd.read_parquet(interactions_path, columns=["user_id", "item_id", "timestamp"],
                                   filters=[("user_id", "==", user)])
    if interactions.empty:
        return None
    mine = interactions.iloc[order_events(interactions)]
    return pd.DataFrame(
        {"item_ids": [mine["item_id"].astype("int64").tolist()],
         "timestamps": [mine["timestamp"].astype("int64").tolist()]}
    )


@app.command()
def recommend(
    user: int = typer.Option(..., help="User id (from the ingested interactions)."),
    k: int = typer.Option(10, help="How many items."),
    root: Path = typer.Option(None, help="Project root."),
    model_uri: str = typer.Option(None, help="Default: models:/<gate.model_name>@champion."),
    payload: bool = typer.Option(
        False, help="Print the REST request body for `mlflow models serve` (/invocations) instead of scoring."
    ),
    explain: bool = typer.Option(
        False, help="Also show why: the past blocks the selection branch weighted most and the branch gates."
    ),
) -> None:
    """Top-k next items for USER from the champion model, with titles.

    The user's ingested history goes through the registered pyfunc's ``predict`` (its schema enforced), exactly
    as `mlflow models serve` answers the ``--payload`` request; items the model does not know are skipped
    (``drop_unknown``)."""
    from mlflow.exceptions import MlflowException

    from mufasa.pipeline.registry import load_pyfunc
    from mufasa.pipeline.tracking import default_tracking_uri

    paths, params = _project(root)
    frame = user_request(paths.raw_interactions, user)
    if frame is None:
        typer.secho(f"error: user {user} has no events in {paths.raw_interactions}", fg="red", err=True)
        raise typer.Exit(2)
    request_params = {"k": k, "drop_unknown": True, **({"explain": True} if explain else {})}
    if payload:
        body = {"dataframe_split": frame.to_dict(orient="split", index=False), "params": request_params}
        typer.echo(json.dumps(body))
        return
    uri = model_uri or f"models:/{params.gate.model_name}@champion"
    try:
        model = load_pyfunc(default_tracking_uri(paths.root), uri)
    except MlflowException as exc:
        typer.secho(f"error: cannot load {uri}: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from exc
    try:
        out = model.predict(frame, params=request_params)
    except MlflowException as exc:
        typer.secho(f"error: {uri} cannot score user {user}: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"user {user} ({len(frame['item_ids'][0])} events), model {uri}:")
    why = json.loads(out["explanation"][0]) if explain else None
    rows = zip(out["item_ids"][0], out["scores"][0], out["titles"][0])
    for rank, (item, score, title) in enumerate(rows, start=1):
        because = f"  <- block {why['because'][rank - 1] + 1}" if why and why["because"][rank - 1] >= 0 else ""
        typer.echo(f"{rank:3d}. {title}  (item {item}, score {score:.3f}){because}")
    if why is not None:
        _print_explanation(why)


def _print_explanation(why: dict) -> None:
    from datetime import datetime, timezone

    def day(ts: int) -> str:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")

    typer.echo("why: the past blocks the selection branch weighted most at the latest event "
               "(\"<- block N\": the block holding the item most like the recommendation)")
    if not why["blocks"]:
        typer.echo("  (none: the history is too short for a past block to be selected; the window sees all of it)")
    for n, block in enumerate(why["blocks"], start=1):
        titles = "; ".join(block["titles"][:6]) + (" ..." if len(block["titles"]) > 6 else "")
        typer.echo(f"  block {n}: {day(block['first_timestamp'])} .. {day(block['last_timestamp'])}, weight "
                   f"{block['weight']:.2f} (layer {block['layer'] + 1}): {titles}")
    for n, gates in enumerate(why["gates"], start=1):
        typer.echo(f"  layer {n} gates: " + ", ".join(f"{name} {value:.2f}" for name, value in gates.items()))


@app.command()
def benchmark(
    seeds: list[int] = typer.Option([0, 1, 2, 3, 4], "--seed", help="Seeds (repeat the option); default 0-4."),
    ablation_seeds: int = typer.Option(3, help="Popularity and the ablations run on the first N seeds only."),
    workers: int = typer.Option(1, help="Parallel training processes (one thread each)."),
    out: Path = typer.Option(Path("benchmarks/results/comparison"), help="Output path stem (.json/.md/.png)."),
    root: Path = typer.Option(None, help="Project root."),
    track: bool = typer.Option(True, help="Log the results to MLflow."),
    model: list[str] = typer.Option(None, "--model", help="Only these models (repeat the option); default all."),
    resume: bool = typer.Option(False, help="Keep the (seed, model) results already in --out; run the rest."),
) -> None:
    """MUFASA vs the reference SASRec (every seed), popularity and every ablation (first seeds), both protocols,
    with a paired per-user significance test; run the pipeline first."""
    from mufasa.pipeline.benchmark import MODEL_ORDER, run_benchmark
    from mufasa.pipeline.tracking import NullTracker, Tracker, new_pipeline_key

    paths, params = _project(root)
    unknown = sorted(set(model or ()) - set(MODEL_ORDER))
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; choose from {list(MODEL_ORDER)}", param_hint="--model")
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if track else NullTracker()
    with tracker.stage_run("benchmark", new_pipeline_key()) as run:
        try:
            payload = run_benchmark(
                params,
                paths,
                seeds,
                out,
                progress=lambda seed, r: typer.echo(
                    f"seed {seed}: {json.dumps({n: m['ndcg@10'] for n, m in r.items()})}"),
                ablation_seeds=ablation_seeds,
                workers=workers,
                models=tuple(model) if model else None,
                resume=resume,
            )
        except ValueError as exc:  # e.g. --resume onto results written under another budget
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        if not payload:
            typer.echo("nothing to run: no (seed, model) pair selected")
            return
        for suffix in (".json", ".md", ".png", ".ranks.npz"):
            if Path(out).with_suffix(suffix).exists():
                run.log_artifact(Path(out).with_suffix(suffix))
    typer.echo(Path(out).with_suffix(".md").read_text())
    typer.echo(f"took {payload['seconds']:.0f} s")


@app.command()
def tune(
    trials: int = typer.Option(20, help="New trials to run (a resumed study keeps its earlier ones)."),
    timeout: float = typer.Option(None, help="Stop starting trials after this many seconds (per worker)."),
    workers: int = typer.Option(1, help="Parallel trial processes (one thread each), sharing the study."),
    seed: int = typer.Option(0, help="Sampler seed."),
    study: str = typer.Option("mufasa-sal", help="Study name (resumed if its journal exists)."),
    out: Path = typer.Option(Path("benchmarks/results/tune"), help="Output stem (.json/.md/.optuna.jsonl)."),
    root: Path = typer.Option(None, help="Project root."),
    track: bool = typer.Option(True, help="Log every trial as a nested MLflow run."),
) -> None:
    """Search MUFASA's SAL settings with Optuna on the validation split only (the test split is never read)."""
    from mufasa.pipeline.tune import run_tune, summary

    paths, params = _project(root)
    payload = run_tune(
        params, paths, out, n_trials=trials, timeout=timeout, seed=seed, workers=workers, tracking=track,
        study_name=study,
    )
    typer.echo(Path(out).with_suffix(".md").read_text())
    typer.echo(f"best: {summary(payload)}")


@app.command()
def scaling(
    length: list[int] = typer.Option(None, "--length", help="History lengths L (repeat); default 256 1024 4096 8192."),
    variant: list[str] = typer.Option(None, "--variant", help="sal, dense, window_only (repeat); default all."),
    steps: int = typer.Option(120, help="Optimizer steps per trial (the same for every L)."),
    tokens_per_step: int = typer.Option(8192, help="Tokens per step: batch = tokens / L users."),
    users: int = typer.Option(64, help="Synthetic users per L (each with L + 2 events)."),
    seed: int = typer.Option(0, help="Data and training seed."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    out: Path = typer.Option(Path("benchmarks/results/scaling"), help="Output stem (.json/.md/.png)."),
    root: Path = typer.Option(None, help="Project root (its params.yaml gives the model and training rule)."),
    track: bool = typer.Option(True, help="Log every trial as a nested MLflow run."),
) -> None:
    """Scaling study: full SAL, dense attention and window-only SAL at growing history lengths L, with a fixed
    number of tokens per step: test quality, time per training step and peak memory per L."""
    from mufasa.pipeline.scaling import DEFAULT_LENGTHS, VARIANTS, ScalingConfig, run_scaling

    paths, params = _project(root)
    try:
        cfg = ScalingConfig(
            lengths=tuple(length or DEFAULT_LENGTHS), variants=tuple(variant or VARIANTS), steps=steps,
            tokens_per_step=tokens_per_step, n_users=users, seed=seed, device=device,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_scaling(params, paths, out, cfg, tracking=track)
    typer.echo(Path(out).with_suffix(".md").read_text())


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":
    app()
