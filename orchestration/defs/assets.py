"""Assets: one per stage output, each a thin wrapper over the stage function of the same name.

Every asset runs its stage inside a nested MLflow run (parent: this Dagster run), records the stage in
``dvc.lock`` and puts row counts, data hashes, metrics and the MLflow run link in its metadata; report plots are
embedded in markdown metadata (``report_images``) so the UI shows them. Upstream of everything is ``raw_source``,
an observable source asset: the raw input files and ``ingest`` parameters, versioned by their fingerprint.
"""


import hashlib
from collections.abc import Iterator
from pathlib import Path

import yaml

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    asset,
    multi_asset,
    observable_source_asset,
)

from mufasa.data.io import file_md5
from mufasa.data.schema import DataValidationError
from mufasa.pipeline import stages
from mufasa.pipeline.fingerprint import source_files, source_fingerprint
from mufasa.pipeline.stages import STAGES
from orchestration.defs.report_images import images_markdown
from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject

RAW_SOURCE = AssetKey("raw_source")
RAW_INTERACTIONS = AssetKey("raw_interactions")
RAW_ITEMS = AssetKey("raw_items")
USER_SEQUENCES = AssetKey("user_sequences")
ITEM_FEATURES = AssetKey("item_features")
FUSION_MODEL = AssetKey("fusion_model")
FUSED_ITEM_VECTORS = AssetKey("fused_item_vectors")
SAL_MODEL = AssetKey("sal_model")
EVALUATION = AssetKey("evaluation_report")
REGISTERED_MODEL = AssetKey("registered_model")

# Every node that runs a stage of the table (mufasa.pipeline.stages.STAGES) carries its name in this op tag; the
# stage it runs is read from the tag, and tests/test_stage_table.py checks that the tags cover the table.
STAGE_TAG = "mufasa/stage"


CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding mufasa/, orchestration/ and dvc.yaml
_CODE_DIRS = ("mufasa/", "data_checks/", "orchestration/")


def stage_code_version(*names: str) -> str:
    """Digest of the code ``dvc.yaml`` lists as the stages' dependencies (files, and ``.py`` files under folders):
    the asset's ``code_version``, so the UI marks an asset stale when the code that makes it changes."""
    deps = yaml.safe_load((CODE_ROOT / "dvc.yaml").read_text())["stages"]
    digest = hashlib.md5()
    for name in names:
        for dep in deps[name].get("deps", []):
            if not dep.startswith(_CODE_DIRS):
                continue  # data dependencies are versioned by DVC, not by the code version
            path = CODE_ROOT / dep
            for f in [path] if path.is_file() else sorted(path.rglob("*.py")):
                digest.update(f.relative_to(CODE_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def stage_tags(*names: str) -> dict[str, str]:
    """The op tag of a node that runs ``names`` (stages of the table, in order; comma-separated in the tag)."""
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    return {STAGE_TAG: ",".join(names)}


def _run_stage(
    context: AssetExecutionContext,
    project: MufasaProject,
    mlflow: MlflowTracking,
    dvc: DvcResource,
    commit: bool = True,
    name: str | None = None,
    **options,
) -> tuple[stages.StageResult, dict]:
    tagged = context.op_def.tags[STAGE_TAG].split(",")
    name = name or tagged[0]
    if name not in tagged:
        raise ValueError(f"{context.op_def.name} runs {tagged}, not {name!r}")
    params = project.params()
    tracker = mlflow.tracker(project)
    with tracker.stage_run(name, context.run_id, tags={"dagster.run_id": context.run_id}) as run:
        result = stages.run_stage(
            name,
            params,
            project.paths,
            on_metrics=lambda step, m: run.log_metrics(m, step=step),
            stage_run=run if mlflow.enabled else None,
            **options,
        )
        tracker.log_stage_result(run, result)
    if commit:
        dvc.commit(project.paths.root, name)
    meta: dict = {f"metric/{k}": MetadataValue.float(float(v)) for k, v in result.metrics.items()}
    if run.url:
        meta["mlflow_run"] = MetadataValue.url(run.url)
        meta["mlflow_run_id"] = MetadataValue.text(run.run_id)
    context.log.info(f"{name}: {result.metrics}")
    return result, meta


def raw_data_version(project: MufasaProject) -> str:
    """The raw data's version: :func:`~mufasa.pipeline.fingerprint.source_fingerprint` of the configured source (the
    files ``ingest`` reads and its parameters), the value ``ingest`` records in ``data/raw/manifest.json``. The
    ``raw_source`` observation and the ``raw_data_sensor`` both use it, so they never disagree."""
    return source_fingerprint(project.params().ingest, project.paths.root)


@observable_source_asset(
    key=RAW_SOURCE,
    group_name="data",
    description="The raw input the `ingest` stage reads (params.yaml `ingest`: the source files, or the synthetic "
    "generator's parameters). Its data version is the source fingerprint: it changes exactly when re-ingesting "
    "could change the data.",
)
def raw_source(project: MufasaProject) -> ObserveResult:
    """Observed at the start of every ``retrain`` (and by "Observe sources" in the UI): ``ingest`` then records the
    version it consumed, and the UI marks it stale when a later observation differs."""
    cfg = project.params().ingest
    files = source_files(cfg, project.paths.root)
    listing = "\n".join(f"- `{f}`" + ("" if f.exists() else " (missing)") for f in files)
    return ObserveResult(
        data_version=DataVersion(raw_data_version(project)),
        metadata={"source": cfg.source, "files": MetadataValue.md(listing or "none: the parameters are the data")},
    )


@multi_asset(
    name="ingest",
    # ingest, then the DVC validate stage (its report and dvc.lock entry): the asset that writes the data records
    # it; the raw_data_suites check only reads (executing checks from the UI never changes dvc.lock)
    op_tags=stage_tags("ingest", "validate"), code_version=stage_code_version("ingest", "validate"),
    specs=[
        AssetSpec(RAW_INTERACTIONS, deps=[RAW_SOURCE], group_name="data",
                  description="Events (user_id, item_id, timestamp) in source order."),
        AssetSpec(RAW_ITEMS, deps=[RAW_SOURCE], group_name="data",
                  description="Items (item_id, title, genres, year, image_path)."),
    ],
)
def ingest(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> Iterator[MaterializeResult]:
    """Normalise the configured source (params.yaml ``ingest``) into ``data/raw/``; rejects bad input. Then the
    ``validate`` stage re-checks the stored tables and writes ``reports/validation/raw.json``."""
    result, meta = _run_stage(context, project, mlflow, dvc)
    try:
        _run_stage(context, project, mlflow, dvc, name="validate")
    except DataValidationError as exc:  # stored data that fails a suite: the blocking raw_data_suites check says so
        context.log.warning(f"validate: {exc}")
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


@asset(key=USER_SEQUENCES, deps=[RAW_INTERACTIONS, RAW_ITEMS], group_name="data",
       op_tags=stage_tags("sequences"), code_version=stage_code_version("sequences"))
def user_sequences(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """Time-ordered user sequences with the leave-one-out split (``data/sequences/``)."""
    result, meta = _run_stage(context, project, mlflow, dvc)
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


@asset(key=ITEM_FEATURES, deps=[RAW_ITEMS], group_name="features", op_tags=stage_tags("features"),
       code_version=stage_code_version("features"))
def item_features(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """Per-item title (MiniLM), image (EfficientNet-Lite0) and side-information features (``data/features/``)."""
    result, meta = _run_stage(context, project, mlflow, dvc)
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


@multi_asset(
    name="train_mfl",
    op_tags=stage_tags("train_mfl"), code_version=stage_code_version("train_mfl"),
    specs=[
        AssetSpec(FUSION_MODEL, deps=[ITEM_FEATURES, USER_SEQUENCES], group_name="training",
                  description="The multimodal fusion layer (models/mfl/: state dict + config)."),
        AssetSpec(FUSED_ITEM_VECTORS, deps=[ITEM_FEATURES, USER_SEQUENCES], group_name="training",
                  description="One fused, title-anchored vector per item (data/fused/items.npy)."),
    ],
)
def train_mfl(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> Iterator[MaterializeResult]:
    """Train MFL with its four losses (GPU when present); write fused item vectors and the model."""
    result, meta = _run_stage(context, project, mlflow, dvc)
    m = result.metrics
    diag = {k.removeprefix("diag_"): MetadataValue.float(float(v)) for k, v in m.items() if k.startswith("diag_")}
    pngs = [p for p in result.artifacts if p.suffix == ".png"]
    plots = images_markdown(pngs) if pngs else MetadataValue.md("MFL disabled")
    yield MaterializeResult(
        asset_key=FUSION_MODEL,
        metadata={**meta, "epochs_run": int(m.get("epochs_run", 0)), "plots": plots},
    )
    yield MaterializeResult(
        asset_key=FUSED_ITEM_VECTORS,
        metadata={**diag, "md5": MetadataValue.text(file_md5(result.outputs["fused"]))},
    )


@asset(key=SAL_MODEL, deps=[USER_SEQUENCES, FUSED_ITEM_VECTORS], group_name="training",
       op_tags=stage_tags("train_sal"), code_version=stage_code_version("train_sal"))
def sal_model(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """The SAL user encoder trained on whole sequences (next-item loss at every position), early-stopped on
    validation NDCG@10 (``models/sal/``)."""
    result, meta = _run_stage(context, project, mlflow, dvc)
    best = {k.removeprefix("best_"): MetadataValue.float(float(v)) for k, v in result.metrics.items() if k.startswith("best_")}
    return MaterializeResult(
        metadata={**meta, **best, "epochs_run": int(result.metrics["epochs_run"]),
                  "uses_fused_items": bool(result.info["uses_fused"]), "curves": images_markdown(result.artifacts)}
    )


@asset(key=EVALUATION, deps=[SAL_MODEL], group_name="evaluation", op_tags=stage_tags("evaluate"),
       code_version=stage_code_version("evaluate"))
def evaluation_report(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """Full-ranking leave-one-out metrics of MUFASA, its baselines and ablations (``metrics/eval.json``)."""
    result, meta = _run_stage(context, project, mlflow, dvc)
    m = result.metrics
    return MaterializeResult(
        metadata={
            **meta,
            "table": MetadataValue.md(result.info["table"]),
            "ndcg@10": MetadataValue.float(float(m["mufasa_ndcg@10"])),
            "hr@10": MetadataValue.float(float(m["mufasa_hr@10"])),
            "plot": images_markdown([result.outputs["plot"]]),
        }
    )


@asset(key=REGISTERED_MODEL, deps=[EVALUATION], group_name="evaluation", op_tags=stage_tags("gate"),
       code_version=stage_code_version("gate"))
def registered_model(
    context: AssetExecutionContext, project: MufasaProject, mlflow: MlflowTracking, dvc: DvcResource
) -> MaterializeResult:
    """The SAL recommender registered in MLflow (``challenger``); promoted to ``champion`` if the gate passes.

    A refusal still materialises (the version and its reasons are real); the ``promotion_gate`` check fails.
    The retrain is what registers (``register=True``; ``dvc repro``/``dvc exp run`` only record the decision), and
    the gate's files are the decision alone, so ``dvc commit`` records them whatever the outcome, as ``dvc repro``.
    """
    result, meta = _run_stage(context, project, mlflow, dvc, register=True)
    info = result.info
    return MaterializeResult(
        metadata={
            **meta,
            "model": MetadataValue.text(info["model"]),
            "version": MetadataValue.text(str(info["version"])),
            "decision": MetadataValue.text(info["decision"]),
            "champion": MetadataValue.text(str(info["champion"])),
            "reasons": MetadataValue.md("\n".join(f"- {r}" for r in info["reasons"])),
            "report": MetadataValue.md(result.outputs["report"].read_text()),
        }
    )


ASSETS = [raw_source, ingest, user_sequences, item_features, train_mfl, sal_model, evaluation_report, registered_model]
