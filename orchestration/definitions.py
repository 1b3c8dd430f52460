"""Dagster entry point: wires assets, checks, resources, the retrain job, its schedule and the sensors.

Configuration read from the code location's environment when the definitions load (restart ``dagster dev`` or
reload the code location after changing one): ``MUFASA_RETRAIN_CRON`` / ``MUFASA_RETRAIN_TIMEZONE`` (the
``weekly_retrain`` schedule; :func:`orchestration.defs.jobs.build_retrain_schedule`) and ``MUFASA_DVC_PUSH=1``
(push each stage's outputs to the DVC remote: team and Kubernetes setups).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dagster import Definitions

from orchestration.defs.assets import ASSETS
from orchestration.defs.checks import CHECKS
from orchestration.defs.jobs import build_retrain_schedule, retrain_job
from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject
from orchestration.defs.sensors import SENSORS
from orchestration.defs.studies import STUDIES


def build_definitions(env: Mapping[str, str] | None = None) -> Definitions:
    """The project's definitions, configured from ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    push = env.get("MUFASA_DVC_PUSH", "0").strip()
    if push not in ("0", "1"):
        raise ValueError(f"MUFASA_DVC_PUSH={push!r}: use 1 (push each stage's outputs) or 0")
    return Definitions(
        assets=[*ASSETS, *STUDIES],
        asset_checks=CHECKS,
        jobs=[retrain_job],
        schedules=[build_retrain_schedule(env)],
        sensors=SENSORS,
        resources={"project": MufasaProject(), "mlflow": MlflowTracking(), "dvc": DvcResource(push=push == "1")},
    )


defs = build_definitions()
