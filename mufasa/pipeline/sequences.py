"""The ``sequences`` stage: time-ordered per-user histories and the leave-one-out split, checked by its suite.

Reads ``data/raw/interactions.parquet`` (user, item, time only) and ``items.parquet``; writes
``data/sequences/{train,valid,test}.parquet`` (:mod:`mufasa.data.sequences`) and ``metrics/sequences.json``.
The suite's validation is a GX Data Docs page (``reports/validation/data_docs/``), logged to the stage's MLflow run.
"""

from __future__ import annotations

import numpy as np

from data_checks import SuiteResult
from mufasa.config import Params, SequencesConfig
from mufasa.data import sequences as seq
from mufasa.data.io import tree_md5, write_json
from mufasa.data.readers import TableSource
from mufasa.pipeline import validation
from mufasa.pipeline.inputs import read_raw
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult

__all__ = ["SEQUENCE_COLUMNS", "check_sequences", "sequences"]

SEQUENCE_COLUMNS = ("user_id", "item_id", "timestamp")  # all the split needs (ratings stay in data/raw)


def sequences(cfg: SequencesConfig, paths: ProjectPaths, stage_run=None) -> StageResult:
    """Time-ordered per-user sequences and the leave-one-out split, checked by the sequences suite."""
    interactions, items = read_raw(paths, columns=list(SEQUENCE_COLUMNS))
    split = seq.leave_one_out(interactions, min_events=cfg.min_events)
    summary = seq.split_summary(split, interactions)
    result = validation.check_sequences(
        summary, item_ids=items["item_id"], docs=validation.docs_run(paths, "sequences"), asset=_asset(paths)
    )
    validation.log_data_docs(stage_run, [result])
    validation.raise_for([(result, TableSource(f"{paths.sequences_dir} (derived)", "parquet"))])

    written = seq.write_split(split, paths.sequences_dir)
    lengths = np.diff(split.train_offsets)
    metrics = {
        "n_train_users": float(len(split.train)),
        "n_train_events": float(len(split.train_items)),
        "n_valid": float(len(split.valid)),
        "n_test": float(len(split.test)),
        "train_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "train_len_max": float(lengths.max()) if len(lengths) else 0.0,
        "n_users_not_evaluated": float((summary["n_test"] == 0).sum()),
    }
    write_json(metrics, paths.sequences_metrics)
    outputs = dict(written, metrics=paths.sequences_metrics)
    info = {"suite": result.to_dict(), "hashes": {k: tree_md5(v) for k, v in written.items()}}
    return StageResult("sequences", outputs, metrics, {"min_events": cfg.min_events}, info)


def _asset(paths: ProjectPaths) -> str:
    return f"{validation.asset_name(paths.sequences_dir, paths)} (per-user split summary)"


def check_sequences(paths: ProjectPaths, run_name: str = "sequences") -> SuiteResult:
    """Run the sequences suite on the stored split (what downstream stages will read); its Data Docs page is a
    run named ``run_name``."""
    interactions, items = read_raw(paths, columns=list(SEQUENCE_COLUMNS))
    split = seq.read_split(paths.sequences_dir)
    return validation.check_sequences(
        seq.split_summary(split, interactions), item_ids=items["item_id"],
        docs=validation.docs_run(paths, run_name), asset=_asset(paths),
    )


def run(params: Params, paths: ProjectPaths, on_metrics=None, stage_run=None) -> StageResult:
    """The stage's entry point in the stage table (:mod:`mufasa.pipeline.stages`)."""
    return sequences(params.sequences, paths, stage_run)
