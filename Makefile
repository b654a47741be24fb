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

.PHONY: setup smoke demo test lint browser bench gpu-check mlflow-ui mlflow-server clean-demo

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(BIN)/python || python3 -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv sync --frozen
	touch $@

# A newcomer's first minute: the tiny test study end to end (tuning, training, analyses, report) in results/tiny/.
smoke: setup
	$(BIN)/snakemake --cores $(CORES) --configfile .test/config/config.yaml --rerun-incomplete
	@echo "Report: reports/tiny/index.html; what a real study costs: $(BIN)/cnnablate plan --configfile config/config.yaml"

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

# The report test renders the HTML page in Debian's headless chromium: installed here when missing and we may
# (root with apt-get); otherwise make stops before anything else, printing the one command to run.
test: browser lint
	$(BIN)/pytest

browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium (the report test renders the page in it)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "make test needs Debian's chromium for the report test; run: sudo apt-get install -y chromium" >&2; \
			exit 1; \
		fi; }

bench: setup
	$(BIN)/python benchmarks/throughput.py --config config/demo.yaml

# On a GPU host: pytest -m gpu, throughput (eager and CUDA graphs) and a CIFAR-shaped study slice, summarised
# (docs/performance.md, "GPU check"). Without nvidia-smi it runs its reduced CPU mode.
gpu-check: setup
	PY=$(BIN)/python bash benchmarks/gpu_check.sh

# The local SQLite store only (MLFLOW_TRACKING_URI is not read: a tracking server is its own UI, open its address).
# It listens on 127.0.0.1: from a remote box, tunnel it (ssh -L 5000:127.0.0.1:5000 gpu-box), open localhost:5000.
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000

# A tracking server for a cluster: PostgreSQL backend, MLflow's basic-auth app, artifacts served by the server.
# Credentials come from the environment or the private file MLFLOW_SERVER_ENV (`sudo bash scripts/mlflow-postgres.sh`
# sets up PostgreSQL and writes it); never from this file. Open it to compute nodes with, e.g.,
# `make mlflow-server MLFLOW_HOST=0.0.0.0 MLFLOW_ALLOWED_HOSTS=login01.cluster:5000` (docs/slurm.md).
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_ALLOWED_HOSTS ?= $(MLFLOW_HOST),$(MLFLOW_HOST):$(MLFLOW_PORT)
MLFLOW_SERVER_ENV ?= $(HOME)/.config/cnnablate/mlflow-server.env
MLFLOW_ARTIFACTS ?= $(CURDIR)/results/mlflow-server-artifacts
mlflow-server: setup
	$(BIN)/uv sync --frozen --extra cluster
	MLFLOW_HOST=$(MLFLOW_HOST) MLFLOW_PORT=$(MLFLOW_PORT) MLFLOW_ALLOWED_HOSTS=$(MLFLOW_ALLOWED_HOSTS) \
		MLFLOW_SERVER_ENV=$(MLFLOW_SERVER_ENV) MLFLOW_ARTIFACTS=$(MLFLOW_ARTIFACTS) bash scripts/mlflow-server.sh

# The conda environment (Snakemake's `conda:` directive, conda users) with every pin of uv.lock, for Python 3.11.
# Regenerate after `uv lock`; tests/test_environment.py fails while it and the lock disagree.
ENVIRONMENT_YML ?= environment.yml
$(ENVIRONMENT_YML): uv.lock | $(VENV)/.synced
	{ echo "# Generated from uv.lock by \`make environment.yml\`: every pin of the lock (pip/uv users: uv.lock itself)."; \
	  echo "# PyTorch and torchvision come from PyPI so that their builds match each other."; \
	  echo "name: cnnablate"; echo "channels:"; echo "  - conda-forge"; echo "  - nodefaults"; \
	  echo "dependencies:"; echo "  - python=3.11"; echo "  - pip"; echo "  - pip:"; \
	  $(BIN)/uv export --frozen --no-dev --no-hashes --no-emit-project --no-header --no-annotate \
		--format requirements-txt | sed 's/^/      - /'; \
	  echo "      - -e ."; } > $@

clean-demo:
	rm -rf results/demo reports/demo
