"""Atomic, deterministic file output.

Every stage writes through these helpers: the data goes to a temporary file in the destination folder and is
renamed into place only when complete, so a crash never leaves a half-written output that looks valid, and a
stage that fails validation never touches the previous output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


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
    pf = pq.ParquetFile(path)
    start = 0
    for batch in pf.iter_batches(batch_size=rows, columns=columns):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame
    if start == 0:
        empty = pf.schema_arrow.empty_table()
        yield (empty if columns is None else empty.select(columns)).to_pandas()
