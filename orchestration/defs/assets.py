"""Assets: one per stage output, each a thin wrapper over the stage function of the same name.

Every asset runs its stage inside a nested MLflow run (parent: this Dagster run), records the stage in
``dvc.lock`` and puts row counts, data hashes, metrics and the MLflow run link in its metadata.
"""


from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from mufasa.data.io import file_md5
from mufasa.pipeline import stages
from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject

RAW_INTERACTIONS = AssetKey("raw_interactions")
RAW_ITEMS = AssetKey("raw_items")
USER_SEQUENCES = AssetKey("user_sequences")
ITEM_FEATURES = AssetKey("item_features")


def _run_stage(
    context: AssetExecutionContext,
    name: str,
    project: MufasaProject,
    mlflow: MlflowTracking,
    dvc: DvcResource,
) -> tuple[stages.StageResult, dict]:
    params = project.params()
    tracker = mlflow.tracker(project)
    with tracker.stage_run(name, context.run_id, tags={"dagster.run_id": context.run_id}) as run:
        result = stages.run_stage(name, params, project.paths)
        tracker.log_stage_result(run, result)
    dvc.commit(project.paths.root, name)
    meta: dict = {f"metric/{k}": MetadataValue.float(float(v)) for k, v in result.metrics.items()}
    if run.url:
        meta["mlflow_run"] = MetadataValue.url(run.url)
        meta["mlflow_run_id"] = MetadataValue.text(run.run_id)
    context.log.info(f"{name}: {result.metrics}")
    return result, meta


@multi_asset(
    name="ingest",
    specs=[
        AssetSpec(RAW_INTERACTIONS, group_name="data", description="Events (user_id, item_id, timestamp) in source order."),
        AssetSpec(RAW_ITEMS, group_name="data", description="Items (item_id, title, genres, year, image_path)."),
    ],
)
def ingest(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> Iterator[MaterializeResult]:
    """Normalise the configured source (params.yaml ``ingest``) into ``data/raw/``; rejects bad input."""
    result, meta = _run_stage(context, "ingest", project, mlflow, dvc)
    source = MetadataValue.text(result.info["description"])
    yield MaterializeResult(
        asset_key=RAW_INTERACTIONS,
        metadata={
            **meta,
            "source": source,
            "dagster/row_count": int(result.metrics["n_interactions"]),
            "n_users": int(result.metrics["n_users"]),
            "md5": MetadataValue.text(file_md5(result.outputs["interactions"])),
            "path": MetadataValue.path(str(result.outputs["interactions"])),
        },
    )
    yield MaterializeResult(
        asset_key=RAW_ITEMS,
        metadata={
            "source": source,
            "dagster/row_count": int(result.metrics["n_items"]),
            "n_items_with_image": int(result.metrics["n_items_with_image"]),
            "md5": MetadataValue.text(file_md5(result.outputs["items"])),
            "path": MetadataValue.path(str(result.outputs["items"])),
        },
    )


@asset(key=USER_SEQUENCES, deps=[RAW_INTERACTIONS, RAW_ITEMS], group_name="data")
def user_sequences(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """Time-ordered user sequences with the leave-one-out split (``data/sequences/``)."""
    result, meta = _run_stage(context, "sequences", project, mlflow, dvc)
    table = "| split | rows |\n|---|---|\n" + "\n".join(
        f"| {k} | {int(result.metrics[m])} |"
        for k, m in (("train users", "n_train_users"), ("train events", "n_train_events"), ("valid", "n_valid"), ("test", "n_test"))
    )
    return MaterializeResult(
        metadata={
            **meta,
            "dagster/row_count": int(result.metrics["n_train_users"]),
            "splits": MetadataValue.md(table),
            "md5_train": MetadataValue.text(file_md5(result.outputs["train"])),
            "md5_test": MetadataValue.text(file_md5(result.outputs["test"])),
        }
    )


@asset(key=ITEM_FEATURES, deps=[RAW_ITEMS], group_name="features")
def item_features(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """Per-item title (MiniLM), image (EfficientNet-Lite0) and side-information features (``data/features/``)."""
    result, meta = _run_stage(context, "features", project, mlflow, dvc)
    images = result.info["images"]
    problems = "\n".join(f"- {p}" for p in images["problems"]) or "none"
    return MaterializeResult(
        metadata={
            **meta,
            "dagster/row_count": int(result.metrics["n_items"]),
            "device": MetadataValue.text(result.info["device"]),
            "coverage_image": float(result.metrics["coverage_image"]),
            "coverage_entities": float(result.metrics["coverage_entities"]),
            "images_corrupt": int(images["corrupt"]),
            "images_rejected": int(images["rejected"]),
            "image_problems": MetadataValue.md(problems),
            "md5_text": MetadataValue.text(file_md5(result.outputs["text"])),
            "md5_image": MetadataValue.text(file_md5(result.outputs["image"])),
        }
    )


ASSETS = [ingest, user_sequences, item_features]
