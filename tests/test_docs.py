"""What the docs tell a user to put in params.yaml must be what the strict parser accepts.

Every ```yaml block whose top-level keys are params.yaml sections is merged into the shipped file and parsed;
every `section.key` path written in backticks (or set with `dvc exp run -S`) must name a real field.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import yaml

from mufasa.pipeline.params import load_params, parse_params
from tests.conftest import REPO

DOCS = ["README.md", "deploy/README.md", "benchmarks/README.md", "data/input/README.md"]
SECTIONS = ("ingest", "sequences", "features", "train_mfl", "train_sal", "evaluate", "gate", "tracking")
KEY = re.compile(r"`((?:%s)(?:\.[a-z_0-9]+)+)(?::[^`]*)?`" % "|".join(SECTIONS))
SET_PARAM = re.compile(r"(?:-S|--set-param)\s+((?:%s)(?:\.[a-z_0-9]+)+)=" % "|".join(SECTIONS))
# Paths the docs name on purpose that are not params: an error message's typo and a registry tag.
NOT_PARAMS = {"ingest.sorce", "gate.candidate_key"}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _resolve(params, dotted: str) -> None:
    node = params
    for i, part in enumerate(dotted.split(".")):
        if isinstance(node, dict):  # a free-form mapping (e.g. ingest.files.rename): any key goes
            return
        if not dataclasses.is_dataclass(node):
            raise AssertionError(f"{dotted}: {'.'.join(dotted.split('.')[:i])} is a value, not a section")
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            raise AssertionError(f"{dotted}: no field {part!r} (has {sorted(names)})")
        node = getattr(node, part)


def _mentions():
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for pattern in (KEY, SET_PARAM):
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                yield pytest.param(m.group(1), id=f"{doc}:{line}:{m.group(1)}")


def _yaml_blocks():
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            block = yaml.safe_load(m.group(1))
            if isinstance(block, dict) and block and set(block) <= set(SECTIONS):
                line = text.count("\n", 0, m.start()) + 1
                yield pytest.param(block, id=f"{doc}:{line}")


@pytest.mark.parametrize("dotted", list(_mentions()))
def test_every_params_key_the_docs_name_exists(dotted):
    if dotted in NOT_PARAMS:
        return
    _resolve(load_params(REPO / "params.yaml"), dotted)


@pytest.mark.parametrize("block", list(_yaml_blocks()))
def test_every_params_snippet_in_the_docs_parses(block):
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    parse_params(_merge(shipped, block), source="a snippet in the docs")


def test_the_checks_catch_a_wrong_key():
    with pytest.raises(AssertionError, match="no field 'nproc'"):
        _resolve(load_params(REPO / "params.yaml"), "train_sal.train.nproc")
    assert len(list(_mentions())) > 10 and len(list(_yaml_blocks())) >= 1
