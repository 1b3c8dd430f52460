"""Training stages as one process or a DDP job: the launcher shared by ``train_mfl`` and ``train_sal``."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from mufasa.pipeline.params import params_to_dict
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.result import StageResult
from mufasa.training import distributed
from mufasa.training.common import MetricsCallback


def data_parallel_stage(
    name: str,
    nproc: int,
    device: str,
    body: Callable,
    params,
    paths: ProjectPaths,
    on_metrics: MetricsCallback | None = None,
):
    """Run training stage ``body(params, paths, on_metrics)`` in this process or as a DDP job of ``nproc`` ranks.

    - ``nproc`` > 1 and not under torchrun: start ``torchrun --standalone --nproc_per_node nproc -m mufasa.cli stage
      <name> --no-track`` on these ``params`` (written to a temp file) and return rank 0's ``StageResult``. Rank 0's
      per-epoch metrics come back to ``on_metrics`` here, so this process's tracker (CLI, Dagster) logs the run as
      it logs an in-process one; the workers log nothing themselves. A failed job raises ``RuntimeError``.
    - Under torchrun (so launched, or ``torchrun ... -m mufasa.cli stage <name>`` by hand): join the process group
      (NCCL for a CUDA ``device``, else gloo) and run ``body`` on every rank; rank 0 writes the outputs, the other
      ranks return an empty ``StageResult``.
    - Otherwise: ``body`` in this process, exactly as without this wrapper.
    """

    if distributed.needs_launch(nproc):
        with tempfile.TemporaryDirectory(prefix="mufasa-params-") as tmp:
            params_file = Path(tmp) / "params.json"  # JSON is YAML: load_params reads it like params.yaml
            params_file.write_text(json.dumps(params_to_dict(params), default=str))
            argv = ["-m", "mufasa.cli", "stage", name, "--no-track", "--root", str(paths.root), "--params", str(params_file)]
            payload = distributed.launch(argv, nproc, on_metrics)
        if payload is None:
            raise RuntimeError(f"{name}: the torchrun job of {nproc} processes ended without rank 0's result")
        return StageResult(
            payload["stage"],
            {k: Path(v) for k, v in payload["outputs"].items()},
            payload["metrics"],
            payload["params"],
            payload["info"],
            tuple(Path(a) for a in payload["artifacts"]),
        )
    with distributed.process_group(device):
        result = body(params, paths, distributed.relay_metrics(on_metrics))
    distributed.publish_result(  # rank 0 of a launched job: back to the launching process
        {
            "stage": result.stage,
            "outputs": {k: str(v) for k, v in result.outputs.items()},
            "metrics": result.metrics,
            "params": result.params,
            "info": result.info,
            "artifacts": [str(a) for a in result.artifacts],
        }
    )
    return result
