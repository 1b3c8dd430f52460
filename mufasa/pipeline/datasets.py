"""The tables each stage reads, as MLflow dataset inputs carrying their DVC hashes (data lineage of a run).

A stage's MLflow run lists, under "Datasets used", every Parquet table the stage reads (:data:`STAGE_DATASETS`)
with its context (``training``, ``validation``, ``testing``, ``source``). The dataset digest is the file's MD5,
which is the hash DVC records for that file (inside the ``.dir`` manifest of its output folder), so a run's
datasets can be matched against ``dvc.lock`` or ``dvc data status``; when ``dvc.lock`` records the output folder
that holds the file, its hash is an input tag too (``mufasa.dvc_out``, ``mufasa.dvc_out_md5``).

Only the Parquet footer is read (row count, column types), never the table itself, so a 20M-event table costs
one MD5 pass, not a second load. The same facts make the "data version" section of the model card.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from mufasa.pipeline.paths import ProjectPaths

# stage -> (dataset name, ProjectPaths attribute or sequences split, context), in the order the stage reads them
STAGE_DATASETS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "train_mfl": (("items", "raw_items", "training"), ("train_sequences", "split:train", "training")),
    "train_sal": (
        ("items", "raw_items", "training"),
        ("train_sequences", "split:train", "training"),
        ("valid_sequences", "split:valid", "validation"),
    ),
    "evaluate": (
        ("items", "raw_items", "training"),
        ("train_sequences", "split:train", "training"),
        ("valid_sequences", "split:valid", "validation"),
        ("test_sequences", "split:test", "testing"),
    ),
    "gate": (
        ("interactions", "raw_interactions", "source"),
        ("items", "raw_items", "training"),
        ("train_sequences", "split:train", "training"),
        ("valid_sequences", "split:valid", "validation"),
        ("test_sequences", "split:test", "testing"),
    ),
}


@dataclass(frozen=True)
class DatasetVersion:
    """One table as a run read it: where, which bytes (MD5 = DVC's file hash), how many rows."""

    name: str
    path: Path
    context: str
    md5: str
    rows: int
    dvc_out: str | None = None  # the dvc.lock output folder/file holding it, and that output's hash
    dvc_out_md5: str | None = None

    def relative(self, root: Path) -> str:
        try:
            return self.path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return str(self.path)


def _path(paths: ProjectPaths, where: str) -> Path:
    if where.startswith("split:"):
        return paths.sequences_dir / f"{where.removeprefix('split:')}.parquet"
    return getattr(paths, where)


def dvc_outputs(root: Path) -> dict[str, str]:
    """Every output ``dvc.lock`` records (path relative to the project -> md5); empty without a lock file."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    raw = yaml.safe_load(lock.read_text()) or {}
    found = {}
    for stage in (raw.get("stages") or {}).values():
        for out in stage.get("outs") or ():
            if "path" in out and "md5" in out:
                found[str(out["path"]).rstrip("/")] = str(out["md5"])
    return found


def stage_datasets(stage: str, paths: ProjectPaths) -> list[DatasetVersion]:
    """The tables ``stage`` reads that exist, with their MD5, row count and ``dvc.lock`` output."""
    import pyarrow.parquet as pq

    from mufasa.data.io import file_md5

    outs = dvc_outputs(paths.root)
    found = []
    for name, where, context in STAGE_DATASETS.get(stage, ()):
        path = _path(paths, where)
        if not path.is_file():
            continue
        version = DatasetVersion(name, path, context, file_md5(path), pq.ParquetFile(path).metadata.num_rows)
        rel = version.relative(paths.root)
        holder = next((o for o in sorted(outs, key=len, reverse=True) if rel == o or rel.startswith(o + "/")), None)
        if holder is not None:
            version = dataclasses.replace(version, dvc_out=holder, dvc_out_md5=outs[holder])
        found.append(version)
    return found


def dataset_input(version: DatasetVersion, root: Path):
    """``version`` as an MLflow :class:`~mlflow.entities.DatasetInput`: the table's schema from its Parquet footer,
    its true row count as the profile, digest = MD5, and the context / DVC facts as input tags."""
    import mlflow.data
    import pyarrow.parquet as pq
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    empty = pq.read_schema(version.path).empty_table().to_pandas()  # column types only, no rows read
    with warnings.catch_warnings():
        # a local path "can be interpreted in multiple ways" (both are the local-file source), and the schema
        # hint about integer columns and missing values concerns model inputs, not these tables
        warnings.simplefilter("ignore", UserWarning)
        config = mlflow.data.from_pandas(
            empty, source=str(version.path.resolve()), name=version.name, digest=version.md5
        ).to_dict()
    n_cols = len(empty.columns)
    config["profile"] = json.dumps({"num_rows": version.rows, "num_elements": version.rows * n_cols})
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, version.context), InputTag("mufasa.path", version.relative(root))]
    if version.dvc_out is not None:
        tags += [InputTag("mufasa.dvc_out", version.dvc_out), InputTag("mufasa.dvc_out_md5", version.dvc_out_md5)]
    return DatasetInput(Dataset(**config), tags=tags)


def data_version_table(versions: list[DatasetVersion], root: Path) -> str:
    """Markdown table of ``versions`` (the model card's "Data version")."""
    lines = ["| dataset | file | rows | md5 (DVC file hash) | dvc.lock output |", "|---|---|---:|---|---|"]
    for v in versions:
        out = f"`{v.dvc_out}` {v.dvc_out_md5}" if v.dvc_out else "not in dvc.lock"
        lines.append(f"| {v.name} | `{v.relative(root)}` | {v.rows:,} | `{v.md5}` | {out} |")
    return "\n".join(lines) + "\n"
