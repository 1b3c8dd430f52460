"""Atomic, deterministic file output.

Every stage writes through these helpers: the data goes to a temporary file in the destination folder and is
renamed into place only when complete, so a crash never leaves a half-written output that looks valid, and a
stage that fails validation never touches the previous output.
"""

from __future__ import annotations

import errno
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


class OutputWriteError(RuntimeError):
    """An output could not be written (disk full, quota, read-only): the previous output is left as it was."""

    def __init__(self, dest: Path, exc: OSError):
        self.dest = Path(dest)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        where = self.dest.parent
        super().__init__(
            f"cannot write {self.dest}: {reason}. The previous {self.dest.name} (if any) is unchanged and no partial "
            f"file was left. Free space (or fix permissions) on the filesystem of {where} and rerun the stage."
        )


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}


def raise_write_error(dest: Path, exc: OSError) -> None:
    """Re-raise ``exc`` as :class:`OutputWriteError` when it says the disk (not the program) is at fault."""
    if exc.errno in _WRITE_ERRNOS:
        raise OutputWriteError(dest, exc) from exc
    raise exc


FAULT_ENV = "MUFASA_FAULT_AT"  # test-only: SIGKILL this process at the named write point (tests/test_faults.py)


def fault_point(name: str) -> None:
    """Die here, as a machine dies (SIGKILL: no cleanup runs), when ``MUFASA_FAULT_AT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest`` (files or folders).

    Killed at any moment, the writer leaves ``dest`` as it was or complete and new, never partial. Temporary
    folders a killed writer left beside ``dest`` (``.<name>.*.tmp``) are removed by the next write of ``dest``
    (the project lock keeps stages from writing the same output concurrently).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        old = stale / (dest.name + ".old")
        if not dest.exists() and old.exists():  # killed between the two renames of the fallback below
            os.replace(old, dest)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        try:
            yield target
        except OSError as exc:
            raise_write_error(dest, exc)
        fault_point(f"before-rename:{dest.name}")
        if dest.is_dir() and not dest.is_symlink():
            # A folder cannot be renamed over a non-empty folder: swap the two in one step (Linux renameat2
            # RENAME_EXCHANGE), so dest is always the old or the new folder; elsewhere move the old one aside.
            if not _exchange(target, dest):
                old = tmp / (dest.name + ".old")
                os.replace(dest, old)
                fault_point(f"mid-rename:{dest.name}")
                os.replace(target, dest)
        else:
            os.replace(target, dest)
        fault_point(f"after-rename:{dest.name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False  # this filesystem or kernel cannot swap: fall back
    raise OSError(err, os.strerror(err), str(b))


def save_figure(fig, dest: Path, **kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_path` (format from ``dest``'s suffix unless given)."""
    dest = Path(dest)
    kwargs.setdefault("format", dest.suffix.lstrip(".") or "png")
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, **kwargs)
    return dest


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


def save_npy(array: np.ndarray, dest: Path) -> Path:
    """Write one array as ``.npy`` atomically (no pickles; the same array gives the same bytes)."""
    with atomic_path(Path(dest)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
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
