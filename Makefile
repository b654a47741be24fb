# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv from uv.lock.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
CORES ?= all
# Some machines' pip configuration offers a CPU-only torch wheel that torchvision's compiled ops cannot
# load against; ignore local pip configuration and take torch from the registry, as uv.lock pins it.
export PIP_CONFIG_FILE := /dev/null
export PIP_FIND_LINKS :=
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Jobs are short-lived processes: ship compiled bytecode so none of them recompiles torch or mlflow
# (PYTHONDONTWRITEBYTECODE, set on some machines, would otherwise make every job compile from source).
export UV_COMPILE_BYTECODE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: setup demo test lint bench mlflow-ui mlflow-server clean-demo

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(BIN)/python || python3 -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv sync --frozen
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete --keep-going
	$(BIN)/snakemake --cores 1 --configfile config/demo.yaml --report reports/demo/report.zip
	@echo "Report: reports/demo/index.html (and reports/demo/report.zip); MLflow: make mlflow-ui"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakemake --lint --configfile .test/config/config.yaml

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/throughput.py --config config/demo.yaml

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --port 5000

# A tracking server for a cluster: PostgreSQL backend, artifacts served by the server.
MLFLOW_DB ?= postgresql://mlflow:mlflow@localhost:5432/mlflow
MLFLOW_ARTIFACTS ?= $(CURDIR)/results/mlflow-server-artifacts
mlflow-server: setup
	$(BIN)/uv sync --frozen --extra cluster
	$(BIN)/mlflow db upgrade $(MLFLOW_DB)
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_DB) --artifacts-destination $(MLFLOW_ARTIFACTS) \
		--host 0.0.0.0 --port 5000

clean-demo:
	rm -rf results/demo reports/demo
