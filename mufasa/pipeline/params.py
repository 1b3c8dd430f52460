"""Parse ``params.yaml`` into :class:`mufasa.config.Params` (the one place raw dicts are seen)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from mufasa.config import Params


class ParamsError(ValueError):
    """``params.yaml`` is malformed; the message names the file and the offending key."""


def strict_dataclass(cls, raw: dict | None, where: str, **fixed):
    """Build library dataclass ``cls`` from ``raw`` (a params.yaml section), refusing unknown keys at any depth.

    ``fixed`` supplies fields that come from the data, not from params (e.g. feature dimensions); setting them
    in params.yaml is an error too, so the file never claims something the data overrides.
    """
    import dataclasses

    raw = dict(raw or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"params.yaml: {where}: unknown key(s) {unknown}; allowed: {sorted(set(names) - set(fixed))}")
    clash = sorted(set(raw) & set(fixed))
    if clash:
        raise ParamsError(f"params.yaml: {where}: {clash} are derived from the data and cannot be set")
    for key, value in list(raw.items()):
        sub = names[key].type
        sub_cls = sub if isinstance(sub, type) else None
        if sub_cls is None and isinstance(sub, str):
            sub_cls = getattr(__import__(cls.__module__, fromlist=["_"]), sub, None)
        if sub_cls is not None and dataclasses.is_dataclass(sub_cls) and isinstance(value, dict):
            raw[key] = strict_dataclass(sub_cls, value, f"{where}.{key}")
    try:
        return TypeAdapter(cls).validate_python({**raw, **fixed})
    except ValidationError as exc:
        details = "; ".join(
            f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ParamsError(f"params.yaml: {details}") from exc
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise ParamsError(f"params.yaml: {where}: {exc}") from exc


def parse_params(raw: dict | None, *, source: str = "params.yaml") -> Params:
    try:
        params = TypeAdapter(Params).validate_python(raw or {})
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ParamsError(f"{source}: {details}") from exc
    mfl_configs(params, side_dim=1)  # validate the model sections now, not halfway through a run
    sal_configs(params, n_items=1, item_feature_dim=0 if not params.train_mfl.enabled else 1)
    sasrec_configs(params, n_items=1)
    return params


def quiet(params: Params) -> Params:
    """The same params with every training progress bar off (for parallel workers, whose bars would interleave)."""
    import dataclasses

    sal, mfl, ev = params.train_sal, params.train_mfl, params.evaluate
    return dataclasses.replace(
        params,
        train_sal=dataclasses.replace(sal, train={**sal.train, "progress": False}),
        train_mfl=dataclasses.replace(mfl, train={**mfl.train, "progress": False}),
        evaluate=dataclasses.replace(
            ev, sasrec=dataclasses.replace(ev.sasrec, train={**ev.sasrec.train, "progress": False})
        ),
    )


def sal_configs(params: Params, *, n_items: int, item_feature_dim: int, **overrides):
    """``(SALConfig, SALTrainConfig)`` from ``train_sal``; ``overrides`` change the model (baselines, ablations)."""
    from mufasa.models.sal import SALConfig
    from mufasa.training.sal_trainer import SALTrainConfig

    model_raw = {**params.train_sal.model, **overrides}
    model = strict_dataclass(
        SALConfig, model_raw, "train_sal.model", n_items=n_items, item_feature_dim=item_feature_dim
    )
    return model, strict_dataclass(SALTrainConfig, params.train_sal.train, "train_sal.train")


def sasrec_configs(params: Params, *, n_items: int):
    """``(SASRecConfig, SALTrainConfig)`` of the reference SASRec (``evaluate.sasrec``), seeded as ``train_sal``."""
    from mufasa.models.sasrec import SASRecConfig
    from mufasa.training.sal_trainer import SALTrainConfig

    section = params.evaluate.sasrec
    model = strict_dataclass(SASRecConfig, section.model, "evaluate.sasrec.model", n_items=n_items)
    seed = strict_dataclass(SALTrainConfig, params.train_sal.train, "train_sal.train").seed
    train = strict_dataclass(SALTrainConfig, section.train, "evaluate.sasrec.train", seed=seed)
    return model, train


def mfl_configs(params: Params, *, side_dim: int, text_dim: int = 384, image_dim: int = 1280):
    """``(FusionConfig, MFLTrainConfig)`` from ``train_mfl``, with the data-derived dimensions filled in."""
    from mufasa.models.fusion import FusionConfig
    from mufasa.training.mfl_trainer import MFLTrainConfig

    fusion = strict_dataclass(
        FusionConfig, params.train_mfl.fusion, "train_mfl.fusion", side_dim=side_dim, text_dim=text_dim,
        image_dim=image_dim,
    )
    return fusion, strict_dataclass(MFLTrainConfig, params.train_mfl.train, "train_mfl.train")


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
