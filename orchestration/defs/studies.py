"""Studies: assets a user materializes on demand from the UI, outside the ``retrain`` job.

``scaling_study`` runs :func:`mufasa.pipeline.scaling.run_scaling` (the ``mufasa scaling`` command) with run config
for the grid, writes ``benchmarks/results/scaling.{json,md,png}`` and logs every trial as a nested MLflow run.
"""

# no `from __future__ import annotations`: Dagster reads the config class from the live annotation

from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from orchestration.defs.report_images import png_data_uri
from orchestration.defs.resources import MufasaProject

STUDIES_GROUP = "studies"


class ScalingStudyConfig(Config):
    lengths: list[int] = Field(default=[256, 1024, 4096, 8192], description="History lengths L.")
    variants: list[str] = Field(default=["sal", "dense", "window_only"], description="sal, dense, window_only.")
    steps: int = Field(default=120, description="Optimizer steps per trial.")
    tokens_per_step: int = Field(default=8192, description="Tokens per step (batch = tokens / L).")
    users: int = Field(default=64, description="Synthetic users per L (L + 2 events each).")
    seed: int = 0
    out: str = Field(default="benchmarks/results/scaling", description="Output stem, relative to the project.")


@asset(group_name=STUDIES_GROUP, description="SAL vs dense vs window-only as histories grow (`mufasa scaling`).",
       op_tags={"mufasa/study": "scaling"})
def scaling_study(context: AssetExecutionContext, config: ScalingStudyConfig,
                  project: MufasaProject) -> MaterializeResult:
    from mufasa.pipeline.scaling import ScalingConfig, crossover, run_scaling

    cfg = ScalingConfig(lengths=tuple(config.lengths), variants=tuple(config.variants), steps=config.steps,
                        tokens_per_step=config.tokens_per_step, n_users=config.users, seed=config.seed)
    out = Path(project.root) / config.out
    payload = run_scaling(project.params(), project.paths, out, cfg)
    image = png_data_uri(out.with_suffix(".png"))  # inline (downscaled): a file path does not load in the browser
    cross = crossover(payload["trials"])
    context.log.info(f"scaling study: {len(payload['trials'])} trials, SAL faster than dense from L = {cross}")
    return MaterializeResult(metadata={
        "table": MetadataValue.md(out.with_suffix(".md").read_text()),
        "plot": MetadataValue.md(f"![scaling]({image})"),
        "sal_faster_than_dense_from_L": MetadataValue.int(cross or -1),
        "results": MetadataValue.path(str(out.with_suffix(".json"))),
    })


STUDIES = [scaling_study]
