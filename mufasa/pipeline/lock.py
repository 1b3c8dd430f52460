"""One pipeline run at a time per project checkout: an OS file lock on ``<root>/.mufasa.lock``.

Two retrains writing the same ``data/``, ``models/`` and registry aliases at once would interleave their outputs
(a model trained on one run's sequences, evaluated on the other's). Every entry point takes this lock:

- a Dagster run holds it for the whole run (the ``MufasaProject`` resource), so its stages never interleave with
  another run's; Dagster's run queue (``concurrency.runs.tag_concurrency_limits`` in ``.dagster/dagster.yaml``)
  makes runs launched from the UI, the schedule or the sensor *wait* their turn instead of failing;
- ``mufasa stage <name>`` (what ``dvc repro`` runs) holds it for one stage (DVC's own repo lock already keeps two
  ``dvc repro`` apart).

The lock is ``fcntl``/``flock``-based (``filelock``): the kernel releases it when the holder dies, even on
``kill -9``, so a crashed run never leaves a stale lock behind. Within one process it is re-entrant (a Dagster
run's stages take it again), keyed by the resolved project root. A second process either waits up to
``timeout`` seconds or fails with :class:`ProjectLocked`, whose message names the holder (pid, host, what it
runs, since when) from the side file ``.mufasa.lock.json``. Child processes of the holder (torchrun workers of a
locked stage) inherit ``MUFASA_LOCK_HELD`` and pass through.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_NAME = ".mufasa.lock"
INFO_NAME = ".mufasa.lock.json"
ENV_HELD = "MUFASA_LOCK_HELD"  # set while this process holds the lock; child processes inherit it

_held: dict[Path, int] = {}  # resolved root -> re-entry depth in this process
_locks: dict[Path, FileLock] = {}
_guard = threading.Lock()


class ProjectLocked(RuntimeError):
    """Another process runs a pipeline stage or run in this project checkout."""


def holder(root: Path) -> dict | None:
    """Who holds (or last held) the lock, from the side file; None if unknown."""
    try:
        return json.loads((Path(root) / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def project_lock(root: Path, what: str, timeout: float = 0.0) -> Iterator[None]:
    """Hold the project lock while the block runs (re-entrant in this process).

    ``timeout``: seconds to wait for another holder (0: fail at once; negative: wait forever).
    """
    key = Path(root).resolve()
    with _guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if not depth and os.environ.get(ENV_HELD) == str(key):
        yield  # a parent process holds it for us (e.g. torchrun workers started by a locked stage)
        return
    if depth:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return

    lock = _locks.setdefault(key, FileLock(str(key / LOCK_NAME)))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        info = holder(key) or {}
        who = (
            f"pid {info.get('pid')} on {info.get('host')} running {info.get('what')!r} since {info.get('since')}"
            if info
            else "another process"
        )
        raise ProjectLocked(
            f"{key / LOCK_NAME} is held by {who}: one pipeline run at a time per checkout. Wait for it to finish "
            "(Dagster queues runs launched from the UI, schedule or sensor), or use a separate clone."
        ) from None
    with _guard:
        _held[key] = 1
    previous_env = os.environ.get(ENV_HELD)
    os.environ[ENV_HELD] = str(key)  # inherited by child processes, which then re-enter instead of blocking
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (key / INFO_NAME).write_text(json.dumps(info) + "\n")
        yield
    finally:
        if previous_env is None:
            os.environ.pop(ENV_HELD, None)
        else:
            os.environ[ENV_HELD] = previous_env
        with _guard:
            _held.pop(key, None)
        lock.release()
