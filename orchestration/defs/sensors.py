"""Sensors: retrain when the raw data changes (once per version), and record why a retrain failed.

The raw-data sensor reads the same version as the ``raw_source`` observable source asset
(:func:`orchestration.defs.assets.raw_data_version`); the ``retrain`` it starts observes ``raw_source`` first, so
the version it fired for is the input version ``ingest`` records.
"""

import json

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from orchestration.defs.assets import raw_data_version
from orchestration.defs.jobs import retrain_job
from orchestration.defs.resources import MlflowTracking, MufasaProject


def _ingested_fingerprint(project: MufasaProject) -> str | None:
    manifest = project.paths.raw_manifest
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("source_fingerprint")


@sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,  # switch on in the UI (Automation tab)
    description="Starts `retrain` when the configured raw data (files or ingest params) changes.",
)
def raw_data_sensor(context: SensorEvaluationContext, project: MufasaProject):
    """Fire once per new version of the raw source (``raw_source``'s data version); the cursor holds the last
    version acted on.

    On its first tick (no cursor) the sensor compares against what was last ingested (``manifest.json``), so
    switching it on does not retrain on data that is already in.
    """
    current = raw_data_version(project)
    last = context.cursor or _ingested_fingerprint(project)
    if current == last:
        if context.cursor is None:
            context.update_cursor(current)
        return SkipReason(f"raw data unchanged (fingerprint {current[:12]})")
    context.update_cursor(current)
    return RunRequest(
        run_key=f"raw-data-{current}",
        tags={"mufasa/trigger": "raw_data_changed", "mufasa/fingerprint": current},
    )


@run_failure_sensor(
    monitored_jobs=[retrain_job],
    default_status=DefaultSensorStatus.RUNNING,
    description="Tags the MLflow pipeline run of a failed retrain with the Dagster failure.",
)
def retrain_failure_sensor(context: RunFailureSensorContext, project: MufasaProject, mlflow: MlflowTracking):
    """The Dagster event log already holds the failure; this puts the reason on the MLflow parent run too."""
    message = context.failure_event.message or "run failed"
    steps = [e.step_key for e in context.get_step_failure_events()]
    tracker = mlflow.tracker(project)
    tracker.record_pipeline_failure(context.dagster_run.run_id, f"{message} (steps: {', '.join(steps) or '-'})")


SENSORS = [raw_data_sensor, retrain_failure_sensor]
