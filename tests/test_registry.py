"""Registry and gate end to end on small synthetic data: register, promote, refuse, roll back, serve."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from mufasa.cli import app
from mufasa.evaluation.protocol import evaluate
from mufasa.pipeline import stages
from mufasa.pipeline.params import parse_params
from mufasa.pipeline.paths import ProjectPaths
from mufasa.pipeline.registry import CHAMPION, alias_version, load_recommender
from mufasa.pipeline.tracking import Tracker
from mufasa.pipeline.sal_model import load_inputs
from tests.conftest import REPO, synthetic_params_dict

NAME = "mufasa-sal"


def _gate(params, paths, tracker, register=True):
    with tracker.stage_run("gate", "test") as run:
        result = stages.run_stage("gate", params, paths, stage_run=run, register=register)
        tracker.log_stage_result(run, result)  # as `mufasa stage gate` does: run report, dataset inputs
        return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    raw = synthetic_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    paths, params = ProjectPaths(root), parse_params(raw)
    for name in ("ingest", "sequences", "features", "train_mfl", "train_sal", "evaluate"):
        stages.run_stage(name, params, paths)
    tracker = Tracker.for_project(root)
    first = _gate(params, paths, tracker)
    return paths, params, tracker, first


def test_first_model_is_registered_and_promoted_with_reasons(pipeline):
    paths, params, tracker, first = pipeline
    assert first.info["passed"] and first.info["version"] == "1"
    client = MlflowClient(tracker.tracking_uri)
    version = client.get_model_version_by_alias(NAME, CHAMPION)
    assert str(version.version) == "1"
    assert version.tags["gate.decision"] == "promoted" and "popularity" in version.tags["gate.reasons"]
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
    assert first.info["champion"] == "1" and first.info["registered"]
    recorded = json.loads((paths.metrics_dir / "gate.json").read_text())
    assert recorded["decision"] == "promote" and recorded["compared_with_champion"] is None
    assert recorded["candidate_key"] == version.tags["gate.candidate_key"]
    report = (paths.reports_dir / "run_report.md").read_text()
    assert "**promote**" in report and "| mufasa |" in report and "![eval.png]" in report


def test_version_is_logged_from_code_and_loads_by_its_registry_uri(pipeline, monkeypatch, tmp_path):
    """No pickled Python object in the artifact (models from code), and MLflow's own
    ``mlflow.pyfunc.load_model("models:/mufasa-sal@champion")`` loads it from MLFLOW_TRACKING_URI."""
    import mlflow
    import pandas as pd

    paths, _, tracker, _ = pipeline
    client = MlflowClient(tracker.tracking_uri, registry_uri=tracker.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(NAME, "1"), dst_path=str(tmp_path / "m"),
        tracking_uri=tracker.tracking_uri))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert flavor["model_code_path"].endswith("sal_pyfunc.py") and (local / "sal_pyfunc.py").is_file()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    out = model.predict(pd.DataFrame({"item_ids": [[1, 2, 3]], "timestamps": [[10, 20, 30]]}), params={"k": 4})
    assert len(out["item_ids"][0]) == len(out["titles"][0]) == 4
    with pytest.raises(mlflow.exceptions.MlflowException, match="item_ids"):
        model.predict(pd.DataFrame({"items": [[1, 2, 3]]}))  # the signature is enforced


def test_version_description_is_a_model_card(pipeline, tmp_path):
    """Data version (the MD5s DVC records), the metrics table, the gate decision and its reasons, and the run
    report, which is really where the card says."""
    import mlflow

    from mufasa.data.io import file_md5

    paths, _, tracker, _ = pipeline
    version = MlflowClient(tracker.tracking_uri, registry_uri=tracker.tracking_uri).get_model_version(NAME, "1")
    card = version.description
    for table in (paths.raw_interactions, paths.raw_items, paths.sequences_dir / "test.parquet"):
        assert file_md5(table) in card, table
    eval_models = json.loads((paths.metrics_dir / "eval.json").read_text())["models"]
    ndcg = f"{eval_models['sasrec']['ndcg@10']:.4f}"
    assert "| mufasa |" in card and "| popularity |" in card and "| sasrec | " in card and ndcg in card
    assert "Gate decision: **promoted**" in card
    reasons = json.loads(version.tags["gate.outcome"])["reasons"]
    assert len(reasons) == 3 and all(f"- {reason}" in card for reason in reasons)
    link = f"runs:/{version.run_id}/run_report.md"
    assert link in card
    report = mlflow.artifacts.download_artifacts(artifact_uri=link, dst_path=str(tmp_path),
                                                 tracking_uri=tracker.tracking_uri)
    assert "**promote**: it may become champion" in Path(report).read_text()


def test_stage_runs_carry_the_tables_they_read_as_datasets_with_dvc_hashes(pipeline):
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mufasa.data.io import file_md5
    from mufasa.pipeline.result import StageResult

    paths, _, tracker, first = pipeline
    client = MlflowClient(tracker.tracking_uri)
    version = MlflowClient(tracker.tracking_uri, registry_uri=tracker.tracking_uri).get_model_version(NAME, "1")
    inputs = {d.dataset.name: d for d in client.get_run(version.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"interactions", "items", "train_sequences", "valid_sequences", "test_sequences"}
    assert inputs["interactions"].dataset.digest == file_md5(paths.raw_interactions)
    assert inputs["items"].dataset.digest == file_md5(paths.raw_items)
    assert json.loads(inputs["items"].dataset.profile)["num_rows"] == 60
    assert {t.key: t.value for t in inputs["test_sequences"].tags}[MLFLOW_DATASET_CONTEXT] == "testing"

    # A training stage's run; with a dvc.lock, the output folder's hash DVC recorded is on each input too.
    lock = paths.root / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "ingest": {"cmd": "x", "outs": [{"path": "data/raw", "hash": "md5", "md5": "0123abcd.dir"}]},
        "sequences": {"cmd": "x", "outs": [{"path": "data/sequences", "hash": "md5", "md5": "4567ef.dir"}]}}}))
    try:
        with tracker.stage_run("train_sal", "datasets") as run:
            tracker.log_stage_result(run, StageResult("train_sal", {}))
    finally:
        lock.unlink()
    inputs = {d.dataset.name: d for d in client.get_run(run.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"items", "train_sequences", "valid_sequences"}
    assert inputs["train_sequences"].dataset.digest == file_md5(paths.sequences_dir / "train.parquet")
    tags = {t.key: t.value for t in inputs["items"].tags}
    assert tags[MLFLOW_DATASET_CONTEXT] == "training" and tags["mufasa.path"] == "data/raw/items.parquet"
    assert (tags["mufasa.dvc_out"], tags["mufasa.dvc_out_md5"]) == ("data/raw", "0123abcd.dir")
    valid = {t.key: t.value for t in inputs["valid_sequences"].tags}
    assert valid[MLFLOW_DATASET_CONTEXT] == "validation" and valid["mufasa.dvc_out_md5"] == "4567ef.dir"


def test_registered_model_reproduces_the_evaluated_scores(pipeline):
    paths, params, tracker, _ = pipeline
    rec = load_recommender(tracker.tracking_uri, f"models:/{NAME}/1")
    data = load_inputs(paths).data
    again = evaluate(rec, data.test, data.n_items, ks=tuple(params.evaluate.ks))
    stored = json.loads((paths.metrics_dir / "eval.json").read_text())["models"]["mufasa"]
    for key in ("hr@10", "ndcg@10", "mrr@10", "hr@50"):
        assert again[key] == pytest.approx(stored[key], abs=1e-6), key
    out = rec.predict(None, __import__("pandas").DataFrame({"item_ids": [[1, 2, 3]]}), {"k": 5})
    assert len(out["item_ids"][0]) == 5 and all(1 <= i <= 60 for i in out["item_ids"][0])


def test_degraded_model_is_refused_and_the_champion_stays(pipeline, tmp_path):
    paths, params, tracker, _ = pipeline
    champion_before = alias_version(tracker.tracking_uri, NAME, CHAMPION)
    weights = paths.root / "models" / "sal" / "model.pt"
    good = weights.read_bytes()
    try:
        state = torch.load(weights, weights_only=True)
        degraded = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(degraded, weights)  # a model that scores every item the same: worst rank everywhere
        stages.run_stage("evaluate", params, paths)
        strict = parse_params({**synthetic_params_dict(), "gate": {"min_gain_over_popularity": 0.0,
                                                                    "min_gain_over_sasrec": -0.5,
                                                                    "max_regression_vs_champion": 0.0}})
        result = _gate(strict, paths, tracker)
    finally:
        weights.write_bytes(good)
    assert not result.info["passed"]
    assert result.info["checks"]["beats_popularity"] is False and result.info["checks"]["no_regression"] is False
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == champion_before
    tags = MlflowClient(tracker.tracking_uri).get_model_version(NAME, result.info["version"]).tags
    assert tags["gate.decision"] == "refused" and "FAIL" in tags["gate.reasons"]


def test_passing_model_moves_champion_and_promote_rolls_back(pipeline):
    paths, params, tracker, _ = pipeline
    stages.run_stage("evaluate", params, paths)  # the good model again
    result = _gate(params, paths, tracker)
    assert result.info["passed"]
    new = result.info["version"]
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == new
    runner = CliRunner()
    out = runner.invoke(app, ["promote", "--version", "1", "--root", str(paths.root)])
    assert out.exit_code == 0, out.output
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == "1"
    bad = runner.invoke(app, ["promote", "--version", "999", "--root", str(paths.root)])
    assert bad.exit_code == 2


def test_recommend_prints_titles_and_rejects_unknown_users(pipeline):
    paths, _, _, _ = pipeline
    runner = CliRunner()
    out = runner.invoke(app, ["recommend", "--user", "1", "--k", "3", "--root", str(paths.root)])
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()[:2].rstrip(".").isdigit()]
    assert len(lines) == 3 and "(item " in lines[0]
    missing = runner.invoke(app, ["recommend", "--user", "424242", "--root", str(paths.root)])
    assert missing.exit_code == 2 and "424242" in missing.output


def test_report_prints_the_table(pipeline):
    paths, _, _, _ = pipeline
    out = CliRunner().invoke(app, ["report", "--root", str(paths.root)])
    assert out.exit_code == 0 and "| mufasa |" in out.output and "| popularity |" in out.output
    assert np.isfinite(json.loads((paths.metrics_dir / "eval.json").read_text())["models"]["sasrec"]["ndcg@10"])


def test_benchmark_compares_every_baseline_and_ablation(pipeline, tmp_path):
    from mufasa.pipeline.benchmark import HEADLINE, MODEL_ORDER, run_benchmark

    paths, params, _, _ = pipeline
    payload = run_benchmark(params, paths, [0, 1], tmp_path / "cmp", ablation_seeds=1, workers=2)
    for protocol in ("unfiltered", "filtered"):
        assert set(payload["mean_std"][protocol]) == set(MODEL_ORDER)
        mean, std = payload["mean_std"][protocol]["mufasa"]["ndcg@10"]
        assert 0 <= mean <= 1 and std >= 0
        sig = payload["significance_mufasa_vs_sasrec_ndcg@10"][protocol]
        assert 0 <= sig["wilcoxon_p"] <= 1 and sig["ci95_low"] <= sig["mean_diff"] <= sig["ci95_high"]
    # the headline models ran on both seeds, the rest on the first only
    assert payload["seeds_per_model"]["sasrec"] == [0, 1] and payload["seeds_per_model"]["window_only"] == [0]
    assert set(payload["per_seed"]["1"]) == set(HEADLINE)
    # filtering can only help a model whose target is never removed
    for name in MODEL_ORDER:
        m = payload["per_seed"]["0"][name]
        assert m["filtered"]["hr@10"] >= m["unfiltered"]["hr@10"], name
    table = (tmp_path / "cmp.md").read_text()
    assert "| window_only |" in table and "±" in table and "Wilcoxon" in table and "History filtered" in table
    # every model with ranks is paired with MUFASA on the seeds both ran; the seen-bias SASRec is its own model
    # (same seed as sasrec: identical ranks would mean the bias never reached it)
    assert set(payload["paired_vs_mufasa_ndcg@10"]) == set(MODEL_ORDER) - {"mufasa"}
    assert payload["paired_vs_mufasa_ndcg@10"]["sasrec"]["unfiltered"]["seeds"] == [0, 1]
    assert payload["paired_vs_mufasa_ndcg@10"]["sasrec_seen_bias"]["filtered"]["seeds"] == [0]
    assert "| sasrec_seen_bias | [0] |" in table and "Paired per user" in table
    with np.load(tmp_path / "cmp.ranks.npz") as ranks:
        assert not np.array_equal(ranks["0/sasrec/unfiltered"], ranks["0/sasrec_seen_bias/unfiltered"])
    # the ablations ran on seed 0 only: they are also compared with MUFASA's seed-0 score, not its 2-seed mean
    m0 = payload["per_seed"]["0"]["mufasa"]["unfiltered"]["ndcg@10"]
    w0 = payload["per_seed"]["0"]["window_only"]["unfiltered"]["ndcg@10"]
    assert f"| window_only | [0] | {m0:.4f} | {w0:.4f} | {w0 - m0:+.4f} |" in table


def test_benchmark_resumes_runs_only_what_is_missing_and_refuses_another_budget(pipeline, tmp_path):
    from mufasa.pipeline.benchmark import run_benchmark

    paths, params, _, _ = pipeline
    out = tmp_path / "cmp"
    ran: list[tuple[int, str]] = []
    first = run_benchmark(params, paths, [0], out, models=("popularity", "sasrec"), ablation_seeds=1,
                          progress=lambda seed, r: ran.extend((seed, m) for m in r))
    assert sorted(ran) == [(0, "popularity"), (0, "sasrec")]
    assert first["significance_mufasa_vs_sasrec_ndcg@10"] == {}
    assert "No paired test yet" in (tmp_path / "cmp.md").read_text()

    ran.clear()
    second = run_benchmark(params, paths, [0], out, models=("mufasa", "popularity", "sasrec"), ablation_seeds=1,
                           resume=True, progress=lambda seed, r: ran.extend((seed, m) for m in r))
    assert ran == [(0, "mufasa")]  # the two models already in cmp.json are kept, not retrained
    assert second["per_seed"]["0"]["sasrec"] == first["per_seed"]["0"]["sasrec"]
    assert second["per_seed"]["0"]["popularity"] == first["per_seed"]["0"]["popularity"]
    sig = second["significance_mufasa_vs_sasrec_ndcg@10"]["unfiltered"]
    assert sig["seeds"] == [0] and 0 <= sig["wilcoxon_p"] <= 1
    with np.load(tmp_path / "cmp.ranks.npz") as ranks:
        assert {"0/mufasa/unfiltered", "0/sasrec/filtered", "0/popularity/unfiltered"} <= set(ranks.files)

    ran.clear()
    assert run_benchmark(params, paths, [0], out, models=("mufasa", "sasrec"), resume=True,
                         progress=lambda seed, r: ran.extend(r))["per_seed"] == second["per_seed"]
    assert ran == []  # nothing missing: nothing trained

    train = params.evaluate.sasrec.train
    other = dataclasses.replace(params, evaluate=dataclasses.replace(
        params.evaluate, sasrec=dataclasses.replace(params.evaluate.sasrec, train=dataclasses.replace(train, lr=train.lr * 2))))
    with pytest.raises(ValueError, match="sasrec.lr"):
        run_benchmark(other, paths, [0], out, models=("sasrec",), resume=True)


def test_paired_test_detects_a_real_difference_and_not_a_null_one():
    from mufasa.pipeline.benchmark import paired_test

    rng = np.random.default_rng(0)
    base = rng.random(900)
    better = paired_test(base + 0.05 + 0.01 * rng.standard_normal(900), base)
    assert better["wilcoxon_p"] < 1e-6 and better["ci95_low"] > 0
    same = paired_test(base + 0.01 * rng.standard_normal(900), base)
    assert same["wilcoxon_p"] > 0.01 and same["ci95_low"] < 0 < same["ci95_high"]


def test_refusal_at_the_shipped_margins_exits_3_and_fails_the_dagster_check(pipeline):
    """The shipped gate (params.yaml) demands MUFASA >= the reference SASRec: a candidate that trails it by 0.001
    NDCG@10 is refused by `mufasa stage gate` (exit 3) and by the Dagster `promotion_gate` check."""
    from dagster import materialize

    from orchestration.defs.assets import registered_model
    from orchestration.defs.checks import promotion_gate
    from orchestration.defs.resources import DvcResource, MlflowTracking, MufasaProject

    paths, _, tracker, _ = pipeline
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["gate"]
    assert shipped["min_gain_over_sasrec"] >= 0  # the shipped gate never lets MUFASA trail the baseline
    params_path, eval_path = paths.root / "params.yaml", paths.metrics_dir / "eval.json"
    saved_params, saved_eval = params_path.read_text(), eval_path.read_text()
    champion_before = alias_version(tracker.tracking_uri, NAME, CHAMPION)
    try:
        params_path.write_text(yaml.safe_dump({**synthetic_params_dict(), "gate": shipped}))
        results = json.loads(saved_eval)
        mufasa = results["models"]["mufasa"]
        # popularity far below, SASRec just above MUFASA: only the SASRec rule can refuse
        results["models"]["popularity"] = {**mufasa, "ndcg@10": mufasa["ndcg@10"] - 1.0}
        results["models"]["sasrec"] = {**mufasa, "ndcg@10": mufasa["ndcg@10"] + 0.001}
        eval_path.write_text(json.dumps(results))

        out = CliRunner().invoke(app, ["stage", "gate", "--root", str(paths.root)])
        assert out.exit_code == 3, out.output
        gate = json.loads((paths.metrics_dir / "gate.json").read_text())
        assert gate["passed"] is False and gate["checks"]["beats_sasrec"] is False
        assert gate["checks"]["beats_popularity"] is True
        # what dvc.yaml runs: the same refusal is recorded and the stage succeeds (dvc.lock records it)
        recorded = CliRunner().invoke(app, ["stage", "gate", "--no-fail-on-refusal", "--root", str(paths.root)])
        assert recorded.exit_code == 0 and "refuse" in recorded.output, recorded.output
        assert json.loads((paths.metrics_dir / "gate.json").read_text()) == gate

        resources = {
            "project": MufasaProject(root=str(paths.root)),
            "mlflow": MlflowTracking(enabled=True, tracking_uri=tracker.tracking_uri),
            "dvc": DvcResource(enabled=False),
        }
        result = materialize([registered_model, promotion_gate], resources=resources, raise_on_error=False)
        checks = {
            e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }
        assert checks == {"promotion_gate": False}
        assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == champion_before
    finally:
        params_path.write_text(saved_params)
        eval_path.write_text(saved_eval)


def test_a_version_pickled_by_older_code_is_rebuilt_for_the_gate_and_refused_for_serving(pipeline):
    """Versions registered before models-from-code hold a pickled python_model.pkl (the project's store has such
    champions): the gate rebuilds them from their own weights and tables; `recommend` says why it cannot serve one."""
    import mlflow
    import pandas as pd

    from mufasa.pipeline.registry import SALRecommender, using_store

    paths, _, tracker, _ = pipeline
    uri = tracker.tracking_uri
    artifacts = {"model_dir": str(paths.sal_model_dir), "fused": str(paths.fused_items),
                 "items": str(paths.raw_items)}
    with tracker.stage_run("legacy", "test") as run, using_store(uri):
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=SALRecommender(), artifacts=artifacts)
        version = MlflowClient(uri, registry_uri=uri).create_model_version(
            NAME, info.model_uri, run_id=run.run_id, model_id=info.model_id).version
    frame = pd.DataFrame({"item_ids": [[1, 2, 3], [4, 5]]})
    legacy = load_recommender(uri, f"models:/{NAME}/{version}").predict(None, frame, {"k": 5})
    current = load_recommender(uri, f"models:/{NAME}/1").predict(None, frame, {"k": 5})  # same weights
    assert legacy["item_ids"].tolist() == current["item_ids"].tolist()
    out = CliRunner().invoke(app, ["recommend", "--user", "1", "--root", str(paths.root),
                                   "--model-uri", f"models:/{NAME}/{version}"])
    assert out.exit_code == 2 and "pickled" in out.output and "mufasa promote" in out.output


def test_a_recording_gate_registers_nothing_and_writes_what_a_registering_one_writes(pipeline):
    """What `dvc repro`/`dvc exp run` run (no --register): the decision is recorded, the registry is untouched,
    and the files (what dvc.lock hashes) are byte-identical to those of the run that then registers."""
    paths, params, tracker, _ = pipeline
    stages.run_stage("evaluate", params, paths)
    client = MlflowClient(tracker.tracking_uri)
    versions_before = {v.version for v in client.search_model_versions(f"name='{NAME}'")}
    champion_before = alias_version(tracker.tracking_uri, NAME, CHAMPION)
    # another rule makes another candidate (the key covers the rule): one no version was registered for yet
    other = parse_params({**synthetic_params_dict(), "gate": {**synthetic_params_dict()["gate"],
                                                              "min_gain_over_popularity": -0.9}})
    recorded = _gate(other, paths, tracker, register=False)
    assert recorded.info["passed"] and not recorded.info["registered"] and recorded.info["version"] is None
    assert {v.version for v in client.search_model_versions(f"name='{NAME}'")} == versions_before
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == champion_before
    files = {p: p.read_bytes() for p in (paths.metrics_dir / "gate.json", paths.reports_dir / "run_report.md")}
    assert json.loads(files[paths.metrics_dir / "gate.json"])["compared_with_champion"] == champion_before

    registered = _gate(other, paths, tracker, register=True)
    assert registered.info["registered"] and registered.info["version"] not in versions_before
    assert alias_version(tracker.tracking_uri, NAME, CHAMPION) == registered.info["version"]
    assert {p: p.read_bytes() for p in files} == files
    # and a recording run of a candidate that is registered now reuses its recorded decision: same files again
    again = _gate(other, paths, tracker, register=False)
    assert again.info["version"] == registered.info["version"] and {p: p.read_bytes() for p in files} == files
    shown = CliRunner().invoke(app, ["report", "--root", str(paths.root)])
    assert shown.exit_code == 0 and f"promote (compared with champion version {champion_before})" in shown.output


def test_register_is_refused_inside_a_dvc_experiment(project, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-123")
    out = CliRunner().invoke(app, ["stage", "gate", "--register", "--root", str(project.root)])
    assert out.exit_code == 2 and "never registers a version" in out.output, out.output
    monkeypatch.delenv("DVC_EXP_NAME")
    out = CliRunner().invoke(app, ["stage", "sequences", "--register", "--root", str(project.root)])
    assert out.exit_code == 2 and "gate's option" in out.output, out.output
