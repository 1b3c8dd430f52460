"""The ``mufasa`` command: runs pipeline stages (DVC calls ``mufasa stage <name>``) and data utilities."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MUFASA recommender pipeline.")


class StageName(str, Enum):
    ingest = "ingest"
    validate = "validate"
    sequences = "sequences"
    features = "features"


@app.command()
def stage(
    name: StageName = typer.Argument(..., help="Stage to run."),
    root: Path = typer.Option(None, help="Project root (default: the folder holding dvc.yaml above the cwd)."),
    params_file: Path = typer.Option(None, "--params", help="Parameter file (default: <root>/params.yaml)."),
    track: bool = typer.Option(True, help="Log the stage to MLflow (MLFLOW_TRACKING_URI or ./mlflow)."),
) -> None:
    """Run one pipeline stage with its params; exit 2 with file/column/row details on bad data."""
    from mufasa.data.schema import DataValidationError
    from mufasa.pipeline.params import ParamsError, load_params
    from mufasa.pipeline.paths import ProjectPaths, find_project_root
    from mufasa.pipeline.stages import run_stage
    from mufasa.pipeline.tracking import NullTracker, Tracker, new_pipeline_key

    try:
        paths = ProjectPaths(root or find_project_root())
        params = load_params(params_file or paths.params)
    except (ParamsError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if track else NullTracker()
    try:
        with tracker.stage_run(name.value, new_pipeline_key()) as run:
            result = run_stage(name.value, params, paths)
            tracker.log_stage_result(run, result)
    except (DataValidationError, FileNotFoundError) as exc:
        typer.secho(f"error: stage '{name.value}' rejected its input; nothing was written.\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
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


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":
    app()
