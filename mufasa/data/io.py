"""Atomic, deterministic file output.

Every stage writes through these helpers: the data goes to a temporary file in the destination folder and is
renamed into place only when complete, so a crash never leaves a half-written output that looks valid, and a
stage that fails validation never touches the previous output.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


# Which stage writes what (by path parts under the project root): named in every "cannot read" error.
PRODUCERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("data", "raw"), "ingest"),
    (("data", "sequences"), "sequences"),
    (("data", "features"), "features"),
    (("data", "fused"), "train_mfl"),
    (("models", "mfl"), "train_mfl"),
    (("models", "sal"), "train_sal"),
    (("metrics", "eval.json"), "evaluate"),
    (("metrics", "gate.json"), "gate"),
)


def producer_of(path: Path) -> str | None:
    """The pipeline stage that writes ``path`` (None when it is not a stage output)."""
    parts = Path(path).parts
    for key, stage in PRODUCERS:
        n = len(key)
        if any(parts[i : i + n] == key for i in range(len(parts) - n + 1)):
            return stage
    return None


class CorruptInputError(ValueError):
    """A stage input that exists but cannot be read: truncated, damaged, or not the expected format.

    The message names the file, what is wrong and how to recover (the stage that rewrites it).
    """

    def __init__(self, path: Path, problem: str):
        self.path, self.problem, self.stage = Path(path), problem, producer_of(path)
        how = (
            f"rerun `mufasa stage {self.stage}` (or `dvc repro`), which rewrites it"
            if self.stage
            else "restore or recreate the file"
        )
        super().__init__(f"{self.path}: {problem}. To recover: {how}.")


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError, RuntimeError)


@contextmanager
def reading(path: Path) -> Iterator[Path]:
    """Turn any failure to read ``path`` into a :class:`CorruptInputError` naming it (a missing file stays a
    ``FileNotFoundError``). pyarrow's ArrowInvalid/ArrowIOError are ValueError/OSError subclasses."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found"
            + (f": run the {producer_of(path)} stage first (or `dvc repro`)" if producer_of(path) else "")
        )
    try:
        yield path
    except CorruptInputError:
        raise
    except _READ_ERRORS as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CorruptInputError(path, f"cannot be read ({type(exc).__name__}: {first[:200]})") from exc


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """``pd.read_parquet`` that names the file when it is truncated or not Parquet (:func:`reading`)."""
    with reading(path):
        return pd.read_parquet(path, columns=columns)


def read_table(path: Path) -> pa.Table:
    with reading(path):
        return pq.read_table(path)


def load_npy(path: Path) -> Any:
    """``np.load`` (no pickles) that names the file when it is truncated or not a NumPy array."""
    with reading(path):
        return np.load(path, allow_pickle=False)


def read_json(path: Path) -> Any:
    """JSON of ``path``; a truncated or invalid file names itself (:func:`reading`)."""
    with reading(path):
        return json.loads(Path(path).read_text())


def load_tensors(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (never unpickles code) that names the file when it cannot be read."""
    import torch

    with reading(path):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest`` (files or folders)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if dest.is_dir() and not dest.is_symlink():
            # Folders cannot be renamed over a non-empty folder: move the old one aside first.
            old = tmp / (dest.name + ".old")
            os.replace(dest, old)
            os.replace(target, dest)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, dest: Path) -> Path:
    """Write ``df`` to ``dest`` atomically, byte-identical for identical frames (no pandas index, fixed options)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    # Drop pandas' schema metadata: it embeds library versions, which would change the bytes across upgrades.
    table = table.replace_schema_metadata(None)
    with atomic_path(Path(dest)) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    return Path(dest)


def write_json(obj: Any, dest: Path) -> Path:
    """Write ``obj`` as sorted, indented JSON atomically."""
    with atomic_path(Path(dest)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(dest)


def write_text(text: str, dest: Path) -> Path:
    with atomic_path(Path(dest)) as tmp:
        tmp.write_text(text)
    return Path(dest)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes (the same digest DVC records for a file output)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_md5(path: Path) -> str:
    """A digest of a file, or of a folder's relative paths and file contents (sorted, so order-free)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    h = hashlib.md5()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_md5(p).encode())
    return h.hexdigest()


def iter_parquet_frames(path: Path, rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Read a Parquet file ``rows`` rows at a time as frames indexed by their row positions in the file.

    Memory stays bounded by the batch whatever the file size; dtypes are those of ``pd.read_parquet``.
    An empty file yields one empty frame with the file's columns.
    """
    with reading(path):
        pf = pq.ParquetFile(path)
    start = 0
    batches = pf.iter_batches(batch_size=rows, columns=columns)
    while True:
        with reading(path):  # a file truncated mid-way fails here, on the first damaged row group
            batch = next(batches, None)
        if batch is None:
            break
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame
    if start == 0:
        empty = pf.schema_arrow.empty_table()
        yield (empty if columns is None else empty.select(columns)).to_pandas()
