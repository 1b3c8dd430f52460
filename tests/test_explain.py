"""`mufasa recommend --explain` from a registered model trained on replay data: the replayed session is shown."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.models.sal import SALConfig
from mufasa.pipeline import registry
from mufasa.pipeline.sal_model import save_model
from mufasa.pipeline.tracking import default_tracking_uri
from mufasa.training.sal_trainer import SALTrainConfig, train_sal
from tests.conftest import REPO
from tests.helpers import EPOCH_BUDGET
from tests.test_sal import replay_data

N, S = 200, 16  # items, session length (as the replay test of tests/test_sal.py)


@pytest.mark.slow  # ~1.5 min: the replay training of the long-range recall test, then one registration
def test_recommend_explain_shows_the_replayed_session_from_the_registered_model(tmp_path):
    train_rows, test_rows = replay_data(1000, N, seed=0, session=S), replay_data(10, N, seed=1, session=S)
    U, T = train_rows.shape
    seqs = (np.arange(U + 1) * T, train_rows.reshape(-1), np.zeros(U * T, dtype=np.int64))
    cfg = SALConfig(n_items=N, d_model=64, window=8, block_size=8, top_k=2, max_len=128, dropout=0.0,
                    time_encoding=False)
    train_cfg = SALTrainConfig(**EPOCH_BUDGET, epochs=12, batch_size=32, lr=3e-3, progress=False, device="cpu")
    model = train_sal(cfg, train_cfg, seqs, np.zeros(U, dtype=np.int64)).model

    # a project holding that model, its catalogue, and the test users' histories up to 4 events into the replay
    root = tmp_path / "project"
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    model_dir = save_model(model, cfg, train_cfg, root / "models" / "sal")
    np.save(root / "fused.npy", np.zeros((N, 0), dtype=np.float32))
    items = pd.DataFrame({"item_id": np.arange(1, N + 1), "title": [f"Film {i}" for i in range(1, N + 1)]})
    items.to_parquet(root / "items.parquet", index=False)
    seen = test_rows[:, : T - S + 4]
    day = 86_400
    pd.DataFrame({
        "user_id": np.repeat(np.arange(1, len(seen) + 1), seen.shape[1]),
        "item_id": seen.reshape(-1),
        "timestamp": 1_600_000_000 + np.tile(np.arange(seen.shape[1]) * day, len(seen)),
    }).to_parquet(root / "data" / "raw" / "interactions.parquet", index=False)
    uri = default_tracking_uri(root)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("explain"))
    example = pd.DataFrame({"item_ids": [seen[0].tolist()]})
    name = yaml.safe_load((REPO / "params.yaml").read_text())["gate"]["model_name"]
    version = registry.log_and_register(run.info.run_id, uri, name, model_dir, root / "fused.npy",
                                        root / "items.parquet", example).version
    client.set_registered_model_alias(name, registry.CHAMPION, version)

    runner = CliRunner()
    shown = 0
    for user in range(1, len(seen) + 1):
        session = {f"Film {i}" for i in test_rows[user - 1, :S]}
        out = runner.invoke(app, ["recommend", "--user", str(user), "--k", "3", "--explain", "--root", str(root)])
        assert out.exit_code == 0, out.output
        assert "why: the past blocks" in out.output and "layer 1 gates: window" in out.output
        blocks = [ln.strip() for ln in out.output.splitlines() if ln.strip().startswith("block ")]
        assert blocks and all(" .. " in b and "weight " in b for b in blocks)  # dates of first/last events

        def titles(line: str) -> list[str]:
            return line.split("): ", 1)[1].removesuffix(" ...").split("; ")

        shown += any(all(t in session for t in titles(b)) for b in blocks)  # the replayed session is listed
    # 3 of ~10 candidate blocks are listed: by chance the session (2 blocks) would be in ~half of the lists
    assert shown >= 9, shown

    # the same explanation through the pyfunc schema, as `mlflow models serve` answers {"params": {"explain": true}}
    pyfunc = registry.load_pyfunc(uri, f"models:/{name}@champion")
    answer = pyfunc.predict(pd.DataFrame({"item_ids": [seen[0].tolist()]}), params={"k": 3, "explain": True})
    why = json.loads(answer["explanation"][0])
    assert set(why) == {"blocks", "gates", "because"} and len(why["because"]) == 3
    assert any(set(b["item_ids"]) <= set(test_rows[0, :S].tolist()) for b in why["blocks"])
    assert all(0.0 <= g <= 1.0 for layer in why["gates"] for g in layer.values())
    plain = pyfunc.predict(pd.DataFrame({"item_ids": [seen[0].tolist()]}), params={"k": 3})
    assert "explanation" not in plain
