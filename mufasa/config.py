"""Typed, frozen configuration for every stage, parsed once from ``params.yaml`` at the edge.

``params.yaml`` has one section per stage; :func:`mufasa.pipeline.params.load_params` turns it into these
dataclasses (unknown keys and wrong types are errors, so a typo never silently falls back to a default).
The model and training sections are the library's own dataclasses (``SALConfig``, ``SALTrainConfig``,
``SASRecConfig``, ``FusionConfig``, ``MFLTrainConfig``), where every field's default and reason lives. Fields that
come from the data (item counts, feature widths) cannot be set in the file: they hold placeholders until
:func:`mufasa.pipeline.params.sal_configs` and friends fill them with ``dataclasses.replace``. The library takes
these objects, never raw dicts.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from mufasa.models.fusion import FusionConfig
from mufasa.models.sal import SALConfig
from mufasa.models.sasrec import SASRecConfig
from mufasa.training.mfl_trainer import MFLTrainConfig
from mufasa.training.sal_trainer import SALTrainConfig

_STRICT = ConfigDict(extra="forbid")


class ParamsError(ValueError):
    """``params.yaml`` is malformed; the message names the file and the offending key."""


def strict_dataclass(cls, raw: dict | None, where: str, **fixed):
    """Build library dataclass ``cls`` from ``raw`` (a params.yaml section), refusing unknown keys at any depth.

    ``fixed`` supplies fields that come from the data, not from params (e.g. feature dimensions); setting them
    in params.yaml is an error too, so the file never claims something the data overrides.
    """
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):  # already parsed (a Params built in code)
        return raw
    raw = dict(raw or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"params.yaml: {where}: unknown key(s) {unknown}; allowed: {sorted(set(names) - set(fixed))}")
    clash = sorted(set(raw) & set(fixed))
    if clash:
        raise ParamsError(f"params.yaml: {where}: {clash} are derived from the data and cannot be set")
    for key, value in list(raw.items()):
        sub = names[key].type
        sub_cls = sub if isinstance(sub, type) else None
        if sub_cls is None and isinstance(sub, str):
            sub_cls = getattr(__import__(cls.__module__, fromlist=["_"]), sub, None)
        if sub_cls is not None and dataclasses.is_dataclass(sub_cls) and isinstance(value, dict):
            raw[key] = strict_dataclass(sub_cls, value, f"{where}.{key}")
    try:
        return TypeAdapter(cls).validate_python({**raw, **fixed})
    except ValidationError as exc:
        details = "; ".join(
            f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ParamsError(f"params.yaml: {details}") from exc
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise ParamsError(f"params.yaml: {where}: {exc}") from exc


# Placeholders for the fields the data fills (never read before they are: sal_configs & co. replace them).
DATA_FIELDS: dict[type, dict[str, Any]] = {
    SALConfig: {"n_items": 1, "item_feature_dim": 1},
    SASRecConfig: {"n_items": 1},
    FusionConfig: {"side_dim": 1, "text_dim": 384, "image_dim": 1280},
    SALTrainConfig: {},
    MFLTrainConfig: {},
}


def _section(cls, where: str, **fixed):
    """A pydantic field type: ``cls`` parsed strictly from its params.yaml mapping (data fields: placeholders)."""

    def parse(raw):
        return strict_dataclass(cls, raw, where, **{**DATA_FIELDS[cls], **fixed})

    return Annotated[Any, BeforeValidator(parse)]


def _default(cls, **fixed):
    return Field(default_factory=lambda: cls(**{**DATA_FIELDS[cls], **fixed}))


@dataclass(frozen=True, config=_STRICT)
class FilesSource:
    """Bring-your-own data: interactions and items files (CSV/TSV or Parquet); see README "Your own data"."""

    interactions: str = "data/input/interactions.csv"
    items: str = "data/input/items.csv"
    sep: str | None = None  # None: ',' for .csv, tab for .tsv
    encoding: str = "utf-8"
    # file column name -> canonical name, e.g. {userId: user_id}; applied to both files
    rename: dict[str, str] = Field(default_factory=dict)
    image_root: str | None = "data/input/images"  # items' image_path is relative to this folder
    # optional knowledge-graph facts about items: columns item_id, relation, entity
    entities: str | None = None


@dataclass(frozen=True, config=_STRICT)
class SyntheticSource:
    """Synthetic data with planted multi-scale interest structure (see ``mufasa.data.synthetic``)."""

    n_users: int = 300
    n_items: int = 600
    n_genres: int = 6
    clusters_per_genre: int = 4
    min_events: int = 20
    max_events: int = 200
    mean_block_len: float = 12.0
    within_block_drift: float = 0.3
    replay_prob: float = 0.15
    tail_replay: int = 0  # > 0: every user's last events replay a segment >= tail_replay_gap events back
    tail_replay_gap: int = 256
    image_size: int = 32
    seed: int = 0


@dataclass(frozen=True, config=_STRICT)
class MovieLens1MSource:
    """MovieLens 1M as published (``ratings.dat``, ``movies.dat``); see ``mufasa.data.public``."""

    path: str = "data/input/ml-1m"  # the unzipped ml-1m.zip folder (relative to the project, or absolute)


@dataclass(frozen=True, config=_STRICT)
class MovieLensCsvSource:
    """MovieLens 20M/25M/32M/latest as published (``ratings.csv``, ``movies.csv``); see ``mufasa.data.public``."""

    path: str = "data/input/ml-25m"  # the unzipped release folder (relative to the project, or absolute)


@dataclass(frozen=True, config=_STRICT)
class Amazon2023Source:
    """Amazon Reviews 2023, one category's reviews + metadata JSONL (``.gz`` too); see ``mufasa.data.public``."""

    reviews: str = "data/input/amazon-2023/All_Beauty.jsonl"  # one JSON review per line (timestamps in ms)
    meta: str = "data/input/amazon-2023/meta_All_Beauty.jsonl"  # one JSON item per line, keyed by parent_asin
    # Folder of already-downloaded images named <parent_asin>.jpg (.jpeg/.png/.webp); None: no images.
    # URLs in the metadata are never fetched (no network at run time).
    image_root: str | None = None


@dataclass(frozen=True, config=_STRICT)
class IngestConfig:
    source: Literal["movielens-100k", "synthetic", "files", "movielens-1m", "movielens-csv", "amazon-2023"] = (
        "movielens-100k"
    )
    files: FilesSource = Field(default_factory=FilesSource)
    synthetic: SyntheticSource = Field(default_factory=SyntheticSource)
    movielens_1m: MovieLens1MSource = Field(default_factory=MovieLens1MSource)
    movielens_csv: MovieLensCsvSource = Field(default_factory=MovieLensCsvSource)
    amazon_2023: Amazon2023Source = Field(default_factory=Amazon2023Source)
    # Timestamps after this Unix time are rejected as "in the future"; None means the wall clock at run time.
    now: int | None = None


@dataclass(frozen=True, config=_STRICT)
class SequencesConfig:
    # Users need >= 3 events for leave-one-out (train history, validation target, test target).
    min_events: int = Field(default=3, ge=3)


@dataclass(frozen=True, config=_STRICT)
class FeaturesConfig:
    """Frozen modality encoders run once per catalogue (``mufasa.encoders``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    text_batch_size: int = Field(default=256, ge=1)  # MiniLM is small: 256 titles fit any device
    image_batch_size: int = Field(default=64, ge=1)  # 64 x 3x224x224 fp32 = 38 MB of input per batch
    entity_dim: int = Field(default=64, ge=1)  # KG bag-of-entities -> TF-IDF -> SVD to this width
    entity_min_items: int = Field(default=2, ge=1)  # an entity on a single item adds no item-item signal
    seed: int = 0
    # The run fails if fewer items than this share have an encoded image. 0: images are optional
    # (ML-100k has none); raise it for catalogues where every item should have one.
    min_image_coverage: float = Field(default=0.0, ge=0.0, le=1.0)
    progress: bool = True  # tqdm bars on stderr


@dataclass(frozen=True, config=_STRICT)
class TrainMFLConfig:
    """``train_mfl``: the fusion layer (``mufasa.models.fusion``) and its training (``mufasa.training``).

    ``fusion`` and ``train`` are checked key by key against ``FusionConfig`` / ``MFLTrainConfig`` when the file
    is parsed (their defaults and the reasons for them live there).
    """

    enabled: bool = True  # False: no fused vectors; SAL falls back to ID embeddings (the MFL-off ablation)
    collab_window: int = Field(default=5, ge=1)  # co-occurrence window (events) for the collaborative space
    # Data-parallel processes (PyTorch DDP; gloo on CPU, NCCL on GPU). > 1: the stage starts itself under
    # `torchrun --standalone --nproc_per_node nproc`; train.batch_size stays the global batch. 1: in-process.
    nproc: int = Field(default=1, ge=1)
    fusion: _section(FusionConfig, "train_mfl.fusion") = _default(FusionConfig)  # FusionConfig
    train: _section(MFLTrainConfig, "train_mfl.train") = _default(MFLTrainConfig)  # MFLTrainConfig


@dataclass(frozen=True, config=_STRICT)
class TrainSALConfig:
    """``train_sal``: checked key by key against ``SALConfig`` (``model``) and ``SALTrainConfig`` (``train``)."""

    # Data-parallel processes, as train_mfl.nproc (DDP under torchrun; train.batch_size stays the global batch).
    nproc: int = Field(default=1, ge=1)
    model: _section(SALConfig, "train_sal.model") = _default(SALConfig)  # SALConfig
    train: _section(SALTrainConfig, "train_sal.train") = _default(SALTrainConfig)  # SALTrainConfig


@dataclass(frozen=True, config=_STRICT)
class SASRecBaselineConfig:
    """``evaluate.sasrec``: the reference SASRec, checked key by key against ``SASRecConfig`` (``model``) and
    ``SALTrainConfig`` (``train``). Its seed is ``train_sal.train.seed``, so a seeded comparison reseeds both."""

    model: _section(SASRecConfig, "evaluate.sasrec.model") = _default(SASRecConfig)  # SASRecConfig
    # SALTrainConfig; its seed is not set here: parse_params copies train_sal.train.seed into it
    train: _section(SALTrainConfig, "evaluate.sasrec.train", seed=0) = _default(SALTrainConfig)


Ablation = Literal["mfl_off", "dense_attention", "window_only", "no_selection", "no_compression", "no_seen_bias"]


@dataclass(frozen=True, config=_STRICT)
class EvaluateConfig:
    """``evaluate``: leave-one-out, full ranking; baselines trained on the same split in the same run."""

    filter_history: bool = False  # standard LOO protocol for sequential models ranks every item, history included
    ks: tuple[int, ...] = (10, 50)
    # Always run (the gate needs both): most-popular and the reference SASRec (ID-only, RecBole's settings).
    # copy_oracle (mufasa.evaluation.oracle): copies what followed the best-matching earlier moment of a history;
    # the reference for long-range recall on data with planted replays (ingest.synthetic.tail_replay)
    baselines: tuple[Literal["popularity", "sasrec", "copy_oracle"], ...] = ("popularity", "sasrec")
    # Ablations of MUFASA, each one SAL training: MFL off (ID only), dense attention instead of the sparse
    # branches, SAL with branches removed.
    ablations: tuple[Ablation, ...] = ()
    batch_size: int = Field(default=512, ge=1)
    sasrec: SASRecBaselineConfig = Field(default_factory=SASRecBaselineConfig)


@dataclass(frozen=True, config=_STRICT)
class GateConfig:
    """``gate``: promotion thresholds (absolute differences in ``metric`` on the test split)."""

    metric: str = "ndcg@10"
    min_gain_over_popularity: float = 0.0
    # Against the reference SASRec (``evaluate.sasrec``), by name; >= 0 demands that MUFASA wins.
    min_gain_over_sasrec: float = 0.0
    max_regression_vs_champion: float = 0.0
    model_name: str = "mufasa-sal"


@dataclass(frozen=True, config=_STRICT)
class TrackingConfig:
    """``tracking``: where MLflow keeps runs and the model registry (no stage reads it, so DVC ignores it)."""

    experiment: str = "mufasa"
    # None: the project's SQLite store mlflow/mlflow.db. For a team: an MLflow server (http://127.0.0.1:5001,
    # artifacts proxied by the server) or a database URI (postgresql+psycopg2://user:password@host:5433/mlflow;
    # the driver named: SQLAlchemy >= 2.1 reads a bare postgresql:// as psycopg 3, which is not installed).
    # The environment variable MLFLOW_TRACKING_URI, when set, wins over this value.
    uri: str | None = None
    # Artifact folder for experiments created in a database store (sqlite/postgresql URI), relative to the project
    # root or absolute. None: beside a SQLite file, else mlflow/artifacts. A server keeps its own (--artifacts-*).
    artifact_root: str | None = None
    # Seconds a stage keeps retrying an unreachable server or database (with backoff) before it fails with one
    # clear message (exit 5). MUFASA_TRACKING_TIMEOUT, when set, wins over this value.
    timeout_s: float = 30.0


@dataclass(frozen=True, config=_STRICT)
class Params:
    """All of ``params.yaml``."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sequences: SequencesConfig = Field(default_factory=SequencesConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train_mfl: TrainMFLConfig = Field(default_factory=TrainMFLConfig)
    train_sal: TrainSALConfig = Field(default_factory=TrainSALConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
