"""The stage table: every pipeline stage by name, in pipeline order, and the one way to run one.

Each stage is a module with a ``run(params, paths, on_metrics, stage_run)`` entry point that calls the stage's
typed function (its config section + project paths in, files out, a
:class:`~mufasa.pipeline.result.StageResult` back). The CLI (``mufasa stage <name>``, which ``dvc.yaml`` runs),
the Dagster assets and the tests all read this table; a test checks it against ``dvc.yaml`` and the assets.
Modules are imported when their stage runs, so reading the table (``mufasa --help``) stays cheap.

=========  =================================  ===========================================================
stage      module (``mufasa.pipeline.``)      writes
=========  =================================  ===========================================================
ingest     ``ingest``                         ``data/raw/`` (source normalised, GX-checked)
validate   ``validate``                       ``reports/validation/raw.json`` (GX suites re-run)
sequences  ``sequences``                      ``data/sequences/`` (leave-one-out split)
features   ``features``                       ``data/features/`` (frozen text/image/side encoders)
train_mfl  ``train_mfl``                      ``data/fused/``, ``models/mfl/`` (fusion layer)
train_sal  ``train_sal``                      ``models/sal/`` (user encoder)
evaluate   ``evaluate``                       ``metrics/eval.json`` (MUFASA vs baselines and ablations)
gate       ``gate``                           ``metrics/gate.json``; registers the MLflow version if asked
=========  =================================  ===========================================================

Stages write atomically and validate before writing, so bad input never overwrites a previous valid output.
They import neither Dagster nor DVC; only ``gate`` talks to MLflow (the model registry), through the
``stage_run`` its caller hands it. What several stages read (raw tables, SAL models) lives outside them:
:mod:`mufasa.pipeline.inputs`, :mod:`mufasa.pipeline.sal_model`.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from types import ModuleType

from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult

__all__ = ["STAGES", "Stage", "StageResult", "clean_outputs", "run_stage"]


@dataclass(frozen=True)
class Stage:
    name: str
    doc: str

    @property
    def module_name(self) -> str:
        return f"mufasa.pipeline.{self.name}"

    @property
    def source(self) -> str:
        """The module's file, relative to the repository root (``dvc.yaml`` lists it among the stage's deps)."""
        return self.module_name.replace(".", "/") + ".py"

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingest", "Normalise the configured source into data/raw/ after the GX suites pass."),
        Stage("validate", "Re-check the stored raw tables with the GX suites; write the report."),
        Stage("sequences", "Per-user time-ordered histories and the leave-one-out split."),
        Stage("features", "Frozen title, image and side-information features for every item."),
        Stage("train_mfl", "Train the multimodal fusion layer; write the fused item vectors."),
        Stage("train_sal", "Train the sparse-attention user encoder on the training histories."),
        Stage("evaluate", "Score MUFASA, the baselines and the ablations on the test split."),
        Stage("gate", "Decide promotion against the baselines and the champion; --register registers and promotes."),
    )
}


def run_stage(name: str, params, paths: ProjectPaths, on_metrics=None, stage_run=None, **options) -> StageResult:
    """Run stage ``name`` with the parsed params (each stage reads its own section).

    ``on_metrics(step, dict)`` receives training curves as they happen (the tracker logs them); ``stage_run`` is
    the tracking run the gate reads the registry through and registers the model version from (``None``: no
    registry). ``options`` are the stage's own keyword-only switches (``gate``: ``register=True`` registers the
    version and moves the aliases; ``dvc.yaml`` never passes it, so DVC runs and experiments only record).
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name].module().run(params, paths, on_metrics=on_metrics, stage_run=stage_run, **options)


def clean_outputs(paths: ProjectPaths) -> None:
    """Remove every stage output (used by tests and `mufasa clean`)."""
    for folder in (paths.raw_dir, paths.sequences_dir, paths.features_dir, paths.reports_dir, paths.metrics_dir):
        shutil.rmtree(folder, ignore_errors=True)
