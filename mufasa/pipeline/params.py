"""Parse ``params.yaml`` into :class:`mufasa.config.Params` (the one place raw dicts are seen)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from mufasa.config import DATA_FIELDS, Params, ParamsError, strict_dataclass

__all__ = ["ParamsError", "load_params", "mfl_configs", "params_to_dict", "parse_params", "quiet", "sal_configs",
           "sasrec_configs", "strict_dataclass", "with_seed"]


def parse_params(raw: dict | None, *, source: str = "params.yaml") -> Params:
    """``params.yaml``'s mapping as :class:`~mufasa.config.Params`, every model/training section a library
    dataclass; the reference SASRec takes ``train_sal.train.seed`` (a seeded comparison reseeds both)."""
    try:
        params = TypeAdapter(Params).validate_python(raw or {})
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ParamsError(f"{source}: {details}") from exc
    params = with_seed(params, params.train_sal.train.seed)
    # the combinations only the data-filled configs can judge, checked now rather than halfway through a run
    try:
        mfl_configs(params, side_dim=1)
        sal_configs(params, n_items=1, item_feature_dim=0 if not params.train_mfl.enabled else 1)
        sasrec_configs(params, n_items=1)
    except ValueError as exc:
        raise ParamsError(f"{source}: {exc}") from exc
    return params


def params_to_dict(params: Params) -> dict:
    """The mapping ``params.yaml`` would hold for ``params`` (every field written out, data-filled fields and
    the SASRec seed left out): ``parse_params(params_to_dict(p)) == p``."""

    def plain(obj, drop=()):
        if dataclasses.is_dataclass(obj):
            skip = set(drop) | set(DATA_FIELDS.get(type(obj), {}))
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj

    out = plain(params)
    out["evaluate"]["sasrec"]["train"].pop("seed")
    return out


def with_seed(params: Params, seed: int) -> Params:
    """``params`` with MUFASA's and the reference SASRec's training seed set to ``seed``."""
    sal, ev = params.train_sal, params.evaluate
    return dataclasses.replace(
        params,
        train_sal=dataclasses.replace(sal, train=dataclasses.replace(sal.train, seed=seed)),
        evaluate=dataclasses.replace(
            ev, sasrec=dataclasses.replace(ev.sasrec, train=dataclasses.replace(ev.sasrec.train, seed=seed))
        ),
    )


def quiet(params: Params) -> Params:
    """The same params with every training progress bar off (for parallel workers, whose bars would interleave)."""
    sal, mfl, ev = params.train_sal, params.train_mfl, params.evaluate
    return dataclasses.replace(
        params,
        train_sal=dataclasses.replace(sal, train=dataclasses.replace(sal.train, progress=False)),
        train_mfl=dataclasses.replace(mfl, train=dataclasses.replace(mfl.train, progress=False)),
        evaluate=dataclasses.replace(
            ev, sasrec=dataclasses.replace(ev.sasrec, train=dataclasses.replace(ev.sasrec.train, progress=False))
        ),
    )


def sal_configs(params: Params, *, n_items: int, item_feature_dim: int, **overrides):
    """``(SALConfig, SALTrainConfig)`` of ``train_sal`` with the data's sizes filled in; ``overrides`` replace
    model fields (ablations)."""
    data = {"n_items": n_items, "item_feature_dim": item_feature_dim}
    model = dataclasses.replace(params.train_sal.model, **{**data, **overrides})
    return model, params.train_sal.train


def sasrec_configs(params: Params, *, n_items: int):
    """``(SASRecConfig, SALTrainConfig)`` of the reference SASRec (``evaluate.sasrec``), seeded as ``train_sal``."""
    section = params.evaluate.sasrec
    return dataclasses.replace(section.model, n_items=n_items), section.train


def mfl_configs(params: Params, *, side_dim: int, text_dim: int = 384, image_dim: int = 1280):
    """``(FusionConfig, MFLTrainConfig)`` from ``train_mfl``, with the data-derived dimensions filled in."""
    fusion = dataclasses.replace(params.train_mfl.fusion, side_dim=side_dim, text_dim=text_dim, image_dim=image_dim)
    return fusion, params.train_mfl.train


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
