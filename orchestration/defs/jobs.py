"""The ``retrain`` job and its schedule."""

from __future__ import annotations

import os

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job, in_process_executor

# In-process: stages run one at a time in one process, so torch training steps never fight over the 2 cores
# and `dvc commit` never races on dvc.lock.
retrain_job = define_asset_job(
    "retrain",
    selection=AssetSelection.all(),
    executor_def=in_process_executor,
    description="Every stage, in order, with its blocking data checks.",
    # One retrain at a time per checkout: .dagster/dagster.yaml limits runs with this tag to 1, so a scheduled,
    # sensor-triggered or UI-launched retrain queues behind a running one (and the project lock of
    # mufasa.pipeline.lock stops out-of-band runs, e.g. `dagster job execute`, with a clear error).
    tags={"mufasa/pipeline": "retrain"},
)

retrain_schedule = ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule=os.environ.get("MUFASA_RETRAIN_CRON", "0 3 * * 1"),  # Mondays 03:00
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,  # switch on in the UI (Automation tab)
)
