"""Parse ``params.yaml`` into :class:`mufasa.config.Params` (the one place raw dicts are seen)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from mufasa.config import Params


class ParamsError(ValueError):
    """``params.yaml`` is malformed; the message names the file and the offending key."""


def parse_params(raw: dict | None, *, source: str = "params.yaml") -> Params:
    try:
        return TypeAdapter(Params).validate_python(raw or {})
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ParamsError(f"{source}: {details}") from exc


def load_params(path: Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of stage sections at the top level")
    return parse_params(raw, source=str(path))
