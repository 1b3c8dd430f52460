"""Resources: the project (paths + parsed params), MLflow tracking and DVC, each small and swappable."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext

from mufasa.config import Params
from mufasa.pipeline.lock import project_lock
from mufasa.pipeline.params import load_params
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.tracking import NullTracker, Tracker

DEFAULT_ROOT = Path(__file__).resolve().parents[2]


class MufasaProject(ConfigurableResource):
    """Where the project lives; its ``params.yaml`` is the single source of stage parameters.

    Parameters are not Dagster run config on purpose: DVC reads the same ``params.yaml``, so a Dagster run and
    ``dvc repro`` can never disagree about what was run.
    """

    root: str = str(DEFAULT_ROOT)
    # Seconds a run waits for another run's project lock (0: fail at once with the holder named). Runs launched
    # from the UI, the schedule or the sensor already queue in Dagster (tag concurrency limit in dagster.yaml).
    lock_timeout_s: float = 0.0

    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["MufasaProject"]:
        """A run holds the project lock from its first step to its end, so two runs never interleave stages."""
        if context.run_id is None:  # sensors, schedules, definitions loading: no lock
            yield self
            return
        with project_lock(Path(self.root), f"dagster run {context.run_id}", timeout=self.lock_timeout_s):
            yield self

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(Path(self.root))

    def params(self) -> Params:
        return load_params(self.paths.params)


class MlflowTracking(ConfigurableResource):
    """MLflow store for stage runs; ``tracking_uri`` None means ``MLFLOW_TRACKING_URI`` or ``<root>/mlflow``."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None  # None: params.yaml tracking.experiment

    def tracker(self, project: MufasaProject) -> Tracker:
        if not self.enabled:
            return NullTracker()
        experiment = self.experiment or project.params().tracking.experiment
        if self.tracking_uri:
            # root: the git tags and the dataset inputs of the project's runs, whichever store they go to
            return Tracker(self.tracking_uri, experiment, root=project.paths.root)
        return Tracker.for_project(project.paths.root, experiment)


class DvcResource(ConfigurableResource):
    """Records Dagster-materialised stages in ``dvc.lock`` (``dvc commit``), so ``dvc status`` stays clean.

    DVC lives in its own virtualenv (its hydra pin breaks Dagster's antlr4): ``executable`` None looks for
    ``dvc`` on PATH, then ``<root>/.venv-dvc/bin/dvc``.
    """

    enabled: bool = True
    executable: str | None = None
    # Also `dvc push <stage>` to the default remote after each commit: teammates and ephemeral run pods
    # (Kubernetes) then `dvc pull` exactly what this run produced. Off by default (the local remote is a folder
    # of this checkout); definitions.py reads MUFASA_DVC_PUSH=1.
    push: bool = False

    def _dvc(self, root: Path) -> str:
        if self.executable:
            return self.executable
        found = shutil.which("dvc")
        if found:
            return found
        candidate = root / ".venv-dvc" / "bin" / "dvc"
        if candidate.exists():
            return str(candidate)
        raise FileNotFoundError("dvc not found: run `make setup` (installs it in .venv-dvc) or disable DvcResource")

    def commit(self, root: Path, stage: str) -> str | None:
        """``dvc commit --force <stage>``; returns its output, None when disabled."""
        if not self.enabled:
            return None
        env = dict(os.environ, DVC_NO_ANALYTICS="1")
        # Stage commands run `python`: make it this interpreter's.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.run(
            [self._dvc(root), "commit", "--force", "--quiet", stage],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dvc commit {stage} failed ({proc.returncode}): {proc.stderr.strip()}")
        if not self.push:
            return proc.stdout
        pushed = subprocess.run(
            [self._dvc(root), "push", "--quiet", stage], cwd=root, env=env, capture_output=True, text=True, check=False
        )
        if pushed.returncode != 0:
            raise RuntimeError(f"dvc push {stage} failed ({pushed.returncode}): {pushed.stderr.strip()}")
        return proc.stdout + pushed.stdout
