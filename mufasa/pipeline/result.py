"""What a stage returns: its outputs, metrics, params and facts, for the tracking adapter and asset metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StageResult"]


@dataclass(frozen=True)
class StageResult:
    stage: str
    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # non-numeric facts for people (source, hashes)
    artifacts: tuple[Path, ...] = ()  # files worth attaching to the tracking run
