"""The ``retrain`` job and its schedule."""

from __future__ import annotations

import os
from collections.abc import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster import (
    AssetSelection,
    DagsterInvalidDefinitionError,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

# In-process: stages run one at a time in one process, so torch training steps never fight over the 2 cores
# and `dvc commit` never races on dvc.lock.
retrain_job = define_asset_job(
    "retrain",
    # include_sources: the run first observes `raw_source` (the raw data's version), so `ingest` records the input
    # version it consumed (lineage, staleness in the UI); studies (orchestration.defs.studies) are materialized on
    # demand, never retrained
    selection=AssetSelection.all(include_sources=True) - AssetSelection.groups("studies"),
    executor_def=in_process_executor,
    description="Observes the raw source, then every stage, in order, with its blocking data checks.",
    # One retrain at a time per checkout: .dagster/dagster.yaml limits runs with this tag to 1, so a scheduled,
    # sensor-triggered or UI-launched retrain queues behind a running one (and the project lock of
    # mufasa.pipeline.lock stops out-of-band runs, e.g. `dagster job execute`, with a clear error).
    tags={"mufasa/pipeline": "retrain"},
)

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00
DEFAULT_TIMEZONE = "UTC"


def build_retrain_schedule(env: Mapping[str, str] | None = None) -> ScheduleDefinition:
    """The ``weekly_retrain`` schedule, configured when the definitions load (``orchestration.definitions``).

    ``MUFASA_RETRAIN_CRON`` (default ``0 3 * * 1``, Mondays 03:00) and ``MUFASA_RETRAIN_TIMEZONE`` (an IANA name,
    default ``UTC``) come from ``env`` (default: the process environment of the code location); a value Dagster or
    the time-zone database does not accept is an error naming the variable. Stopped until switched on in the UI.
    """
    env = os.environ if env is None else env
    cron = env.get("MUFASA_RETRAIN_CRON", DEFAULT_CRON).strip()
    timezone = env.get("MUFASA_RETRAIN_TIMEZONE", DEFAULT_TIMEZONE).strip()
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"MUFASA_RETRAIN_TIMEZONE={timezone!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc
    try:
        return ScheduleDefinition(
            name="weekly_retrain",
            job=retrain_job,
            cron_schedule=cron,
            execution_timezone=timezone,
            default_status=DefaultScheduleStatus.STOPPED,  # switch on in the UI (Automation tab)
            tags={"mufasa/trigger": "schedule"},
            description=f"Retrain on the cron {cron!r} ({timezone}); MUFASA_RETRAIN_CRON / MUFASA_RETRAIN_TIMEZONE.",
        )
    except DagsterInvalidDefinitionError as exc:
        raise ValueError(f"MUFASA_RETRAIN_CRON={cron!r} is not a cron schedule (five fields, e.g. '0 3 * * 1'): "
                         f"{exc}") from exc
