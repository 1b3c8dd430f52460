"""The champion served the way MLflow users serve models: `mlflow models serve -m models:/mufasa-sal@champion`.

Two registered versions that answer differently (version 2 is version 1's weights plus noise), a real scoring
server on 127.0.0.1, REST requests built exactly as `mufasa recommend --payload` builds them; answers compared
with `mufasa recommend`, bad requests answered 4xx with a message, and a rollback (`mufasa promote --version 1`)
served by a newly started server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch
import yaml
from typer.testing import CliRunner

from mufasa.cli import app, user_request
from mufasa.pipeline import stages
from mufasa.pipeline.gate import input_example
from mufasa.pipeline.params import parse_params
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.registry import CHAMPION, alias_version, load_pyfunc, log_and_register, record_decision
from mufasa.pipeline.sal_model import load_inputs
from mufasa.pipeline.tracking import Tracker
from tests.conftest import REPO, synthetic_params_dict
from tests.helpers import free_port, stop_process_group, wait_for_http

NAME = "mufasa-sal"
USERS = (1, 2, 3, 5, 8)
K = 5


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A small project with version 1 (gated, champion first) and version 2 (noisy weights, then champion)."""
    root = tmp_path_factory.mktemp("serving")
    raw = synthetic_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    paths, params = ProjectPaths(root), parse_params(raw)
    for name in ("ingest", "sequences", "features", "train_mfl", "train_sal", "evaluate"):
        stages.run_stage(name, params, paths)
    tracker = Tracker.for_project(root)
    with tracker.stage_run("gate", "serving") as run:
        first = stages.run_stage("gate", params, paths, stage_run=run, register=True)
    assert first.info["version"] == "1" and first.info["passed"]

    noisy = root / "noisy_sal"
    shutil.copytree(paths.sal_model_dir, noisy)
    state = torch.load(noisy / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    torch.save({k: v + 0.5 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                for k, v in state.items()}, noisy / "model.pt")
    with tracker.stage_run("register-noisy", "serving") as run:
        second = log_and_register(run.run_id, tracker.tracking_uri, NAME, noisy, paths.fused_items, paths.raw_items,
                                  input_example(load_inputs(paths)), tags={"gate.decision": "promoted"})
    record_decision(tracker.tracking_uri, NAME, second.version, promote=True)
    assert second.version == "2" and alias_version(tracker.tracking_uri, NAME, CHAMPION) == "2"
    return paths, tracker.tracking_uri


def _requests(paths: ProjectPaths) -> dict[int, dict]:
    """The REST body `mufasa recommend --user U --k K --payload` prints, per user."""
    out = {}
    for user in USERS:
        result = CliRunner().invoke(app, ["recommend", "--user", str(user), "--k", str(K), "--payload",
                                          "--root", str(paths.root)])
        assert result.exit_code == 0, result.output
        out[user] = json.loads(result.output)
    return out


def _cli_top_k(paths: ProjectPaths, user: int) -> list[int]:
    result = CliRunner().invoke(app, ["recommend", "--user", str(user), "--k", str(K), "--root", str(paths.root)])
    assert result.exit_code == 0, result.output
    return [int(m) for m in re.findall(r"\(item (\d+), score", result.output)]


def _pyfunc_top_k(uri: str, tracking_uri: str, paths: ProjectPaths) -> dict[int, list[int]]:
    model = load_pyfunc(tracking_uri, uri)
    return {u: model.predict(user_request(paths.raw_interactions, u), params={"k": K, "drop_unknown": True})
            ["item_ids"][0] for u in USERS}


class Server:
    """`mlflow models serve` of the champion, in its own process group, on a free port of 127.0.0.1."""

    def __init__(self, tracking_uri: str, log: Path):
        self.port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port), "-w", "1"],
            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        try:
            wait_for_http(f"{self.url}/ping", self.proc, self.log, 180, "mlflow models serve")
        except BaseException:
            stop_process_group(self.proc)
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop_process_group(self.proc)

    def post(self, body) -> requests.Response:
        data = body if isinstance(body, str) else json.dumps(body)
        return requests.post(f"{self.url}/invocations", data=data, headers={"Content-Type": "application/json"},
                             timeout=60)

    def top_k(self, body: dict) -> list[int]:
        answer = self.post(body)
        assert answer.status_code == 200, answer.text
        (row,) = answer.json()["predictions"]
        assert len(row["item_ids"]) == len(row["scores"]) == len(row["titles"]) == K
        return row["item_ids"]


@pytest.mark.slow
def test_served_champion_answers_like_recommend_and_rejects_bad_requests(two_versions, tmp_path):
    paths, tracking_uri = two_versions
    bodies = _requests(paths)
    with Server(tracking_uri, tmp_path / "serve.log") as server:
        served = {u: server.top_k(bodies[u]) for u in USERS}

        def rejected(body, *expected: str) -> None:
            answer = server.post(body)
            assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
            payload = answer.json()
            assert "stack_trace" not in payload and "Traceback" not in answer.text, answer.text
            for text in expected:
                assert text in payload["message"], payload["message"]

        # a history of items the model has never seen (no known user can have one)
        rejected({"dataframe_split": {"columns": ["item_ids"], "data": [[[987654, 1]]]}},
                 "not in the model's catalogue", "987654", "drop_unknown")
        rejected({"dataframe_split": {"columns": ["item_ids"], "data": [[[987654]]]}, "params": {"drop_unknown": True}},
                 "no item the model knows")
        # malformed: wrong column, wrong types, mismatched timestamps, bad k, not JSON
        rejected({"dataframe_split": {"columns": ["user"], "data": [[42]]}}, "item_ids")
        rejected({"dataframe_split": {"columns": ["item_ids"], "data": [[["a", "b"]]]}}, "item_ids")
        rejected({"dataframe_split": {"columns": ["item_ids", "timestamps"], "data": [[[1, 2], [5]]]}},
                 "2 item_ids but 1 timestamps")
        rejected({"dataframe_split": {"columns": ["item_ids"], "data": [[[1, 2]]]}, "params": {"k": 0}}, "k must be")
        rejected({"dataframe_split": {"columns": ["item_ids"], "data": [[[1, 2]]]}, "params": {"k": "ten"}}, "'k'")
        rejected("{not json", "JSON")
    for user in USERS:
        assert served[user] == _cli_top_k(paths, user), user  # `mufasa recommend` = the served champion
    assert served == _pyfunc_top_k(f"models:/{NAME}/2", tracking_uri, paths)


@pytest.mark.slow
def test_rollback_is_what_a_new_server_serves(two_versions, tmp_path):
    paths, tracking_uri = two_versions
    v1 = _pyfunc_top_k(f"models:/{NAME}/1", tracking_uri, paths)
    v2 = _pyfunc_top_k(f"models:/{NAME}/2", tracking_uri, paths)
    assert v1 != v2  # else serving the wrong version could not be told apart
    out = CliRunner().invoke(app, ["promote", "--version", "1", "--root", str(paths.root)])
    assert out.exit_code == 0, out.output
    try:
        bodies = _requests(paths)
        with Server(tracking_uri, tmp_path / "serve.log") as server:
            served = {u: server.top_k(bodies[u]) for u in USERS}
        assert served == v1
        assert {u: _cli_top_k(paths, u) for u in USERS} == v1
    finally:
        record_decision(tracking_uri, NAME, "2", promote=True)  # leave the champion as the fixture made it
