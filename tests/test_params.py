"""params.yaml is parsed once into the library's own dataclasses, refuses what it does not know, and round-trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mufasa.models.fusion import FusionConfig
from mufasa.models.sal import SALConfig
from mufasa.models.sasrec import SASRecConfig
from mufasa.pipeline.params import (
    ParamsError,
    load_params,
    params_to_dict,
    parse_params,
    sal_configs,
    with_seed,
)
from mufasa.training.mfl_trainer import MFLTrainConfig
from mufasa.training.sal_trainer import SALTrainConfig
from tests.conftest import REPO


def _subset(small: dict, big: dict, where: str = "") -> None:
    """Every key of ``small`` is in ``big`` with the same value (lists/tuples compared as lists)."""
    for key, value in small.items():
        assert key in big, f"{where}{key} lost"
        if isinstance(value, dict):
            _subset(value, big[key], f"{where}{key}.")
        else:
            got = big[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{where}{key}: {got!r} != {value!r}"


def test_the_shipped_file_becomes_library_dataclasses_and_round_trips():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    assert isinstance(params.train_sal.model, SALConfig) and isinstance(params.train_sal.train, SALTrainConfig)
    assert isinstance(params.evaluate.sasrec.model, SASRecConfig)
    assert isinstance(params.evaluate.sasrec.train, SALTrainConfig)
    assert isinstance(params.train_mfl.fusion, FusionConfig) and isinstance(params.train_mfl.train, MFLTrainConfig)
    written = params_to_dict(params)
    _subset(raw, written)  # every value the file sets survives
    assert parse_params(yaml.safe_load(yaml.safe_dump(written))) == params  # and parses back to the same object
    assert "n_items" not in written["train_sal"]["model"] and "seed" not in written["evaluate"]["sasrec"]["train"]


@pytest.mark.parametrize(
    ("section", "key", "match"),
    [
        (("train_sal", "model"), "windw", r"train_sal\.model: unknown key\(s\) \['windw'\]"),
        (("train_sal", "train"), "learning_rate", r"train_sal\.train: unknown key\(s\) \['learning_rate'\]"),
        (("train_mfl", "train", "losses"), "semantc", r"train_mfl\.train\.losses: unknown key\(s\) \['semantc'\]"),
        (("train_sal", "model"), "n_items", "derived from the data"),
        (("evaluate", "sasrec", "train"), "seed", "derived from the data"),
        (("gate",), "min_gain", "min_gain"),
    ],
)
def test_unknown_and_data_derived_keys_are_refused_by_name(section, key, match):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    node = raw
    for part in section:
        node = node.setdefault(part, {})
    node[key] = 3
    with pytest.raises(ParamsError, match=match):
        parse_params(raw)


def test_a_combination_only_the_data_can_judge_is_refused_at_parse_time():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train_mfl"]["enabled"] = False
    raw["train_sal"]["model"]["use_id_embedding"] = False  # no fused vectors and no IDs: nothing to embed
    with pytest.raises(ParamsError, match="items need a representation"):
        parse_params(raw)


def test_data_fields_are_filled_by_replace_and_the_seed_reaches_both_models():
    params = with_seed(load_params(REPO / "params.yaml"), 7)
    assert params.train_sal.train.seed == params.evaluate.sasrec.train.seed == 7
    model, train = sal_configs(params, n_items=1682, item_feature_dim=0, use_id_embedding=True, attention="dense")
    assert (model.n_items, model.item_feature_dim, model.use_id_embedding, model.attention) == (1682, 0, True, "dense")
    assert model.max_len == params.train_sal.model.max_len and train is params.train_sal.train
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train_sal.model.max_len = 3  # type: ignore[misc]
