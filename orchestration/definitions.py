"""Dagster entry point: wires assets, checks, resources, the retrain job and its schedule."""

import os

from dagster import Definitions

from orchestration.defs.assets import ASSETS
from orchestration.defs.checks import CHECKS
from orchestration.defs.jobs import retrain_job, retrain_schedule
from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject
from orchestration.defs.sensors import SENSORS

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[retrain_job],
    schedules=[retrain_schedule],
    sensors=SENSORS,
    resources={
        "project": MufasaProject(),
        "mlflow": MlflowTracking(),
        # MUFASA_DVC_PUSH=1: push each stage's outputs to the DVC remote (team / Kubernetes setups)
        "dvc": DvcResource(push=os.environ.get("MUFASA_DVC_PUSH", "0") == "1"),
    },
)
