"""The stage table (mufasa.pipeline.stages.STAGES) is the one list of stages: dvc.yaml, the CLI and the Dagster
definitions must agree with it, and every stage module has the entry point the table calls."""

from __future__ import annotations

import inspect

import pytest
import yaml
from typer.testing import CliRunner

from mufasa.cli import StageName, app
from mufasa.pipeline.stages import STAGES, run_stage
from tests.conftest import REPO


def test_dvc_yaml_runs_the_table_in_order_and_depends_on_each_stage_module():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == list(STAGES)
    for name, stage in STAGES.items():
        # the gate only records under DVC, and a recorded refusal is a result, not a failed stage (README)
        options = " --no-fail-on-refusal" if name == "gate" else ""
        assert dvc[name]["cmd"] == f"python -m mufasa.cli stage {name}{options}"
        assert stage.source in dvc[name]["deps"], f"dvc.yaml: {name} does not depend on {stage.source}"
        assert (REPO / stage.source).is_file()


def test_every_stage_module_has_the_entry_point_the_table_calls():
    for name, stage in STAGES.items():
        parameters = inspect.signature(stage.module().run).parameters
        assert list(parameters)[:4] == ["params", "paths", "on_metrics", "stage_run"], name
        for extra in list(parameters.values())[4:]:  # a stage's own switches: keyword-only, off by default
            assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is False, (name, extra)
        assert stage.module().__doc__, f"{stage.module_name} has no opening comment"


def test_the_cli_offers_exactly_the_table():
    assert [s.value for s in StageName] == list(STAGES)
    out = CliRunner().invoke(app, ["stage", "no_such_stage"])
    assert out.exit_code == 2


def test_an_unknown_stage_name_is_refused_before_anything_runs(project, small_params):
    with pytest.raises(ValueError, match="unknown stage 'trian_sal'"):
        run_stage("trian_sal", small_params, project)


def test_the_dagster_nodes_that_run_stages_cover_the_table_once_each():
    from orchestration.defs.assets import STAGE_TAG, stage_tags
    from orchestration.definitions import defs

    tagged = []
    for node in [*defs.assets, *(defs.asset_checks or [])]:
        for op_tags in [getattr(node, "op", None) and node.op.tags, getattr(node, "node_def", None) and node.node_def.tags]:
            if op_tags and STAGE_TAG in op_tags:
                tagged.extend(op_tags[STAGE_TAG].split(","))
                break
    assert sorted(tagged) == sorted(STAGES), tagged
    with pytest.raises(ValueError, match="unknown stage"):
        stage_tags("trian_sal")


def test_every_asset_has_the_code_version_of_its_stages_code(tmp_path, monkeypatch):
    import orchestration.defs.assets as assets
    from orchestration.defs.assets import STAGE_TAG, stage_code_version
    from orchestration.definitions import defs

    from dagster import SourceAsset

    # raw_source (an observable source asset) runs no stage: its version is the data's, not code's
    for node in [a for a in defs.assets if not isinstance(a, SourceAsset)]:
        if STAGE_TAG not in node.op.tags:  # on-demand studies (orchestration.defs.studies) are no pipeline stage
            assert set(node.group_names_by_key.values()) == {"studies"}, node.keys
            continue
        stage_names = node.op.tags[STAGE_TAG].split(",")
        assert set(node.code_versions_by_key.values()) == {stage_code_version(*stage_names)}
    # the version follows the code dvc.yaml lists, and only the code
    (tmp_path / "mufasa").mkdir()
    (tmp_path / "mufasa" / "stage.py").write_text("x = 1\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"deps": ["mufasa/stage.py", "data/raw"]}}}))
    monkeypatch.setattr(assets, "CODE_ROOT", tmp_path)
    before = stage_code_version("s")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").write_text("data changes are DVC's business")
    assert stage_code_version("s") == before
    (tmp_path / "mufasa" / "stage.py").write_text("x = 2\n")
    assert stage_code_version("s") != before
