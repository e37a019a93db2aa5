# The two commands of the README: `make run` and `make test`. Everything else is a helper.
# The steps of `make run` print only what their tools report (no echo of the commands).
SHELL := /bin/bash
.DEFAULT_GOAL := run

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS_DIR := .uv
UV := $(TOOLS_DIR)/bin/uv
export UV_PYTHON_DOWNLOADS := never

DATA_DIR ?= $(if $(OLIST_CHURN_DATA_DIR),$(OLIST_CHURN_DATA_DIR),data)
export OLIST_CHURN_DATA_DIR := $(abspath $(DATA_DIR))
export DAGSTER_HOME := $(OLIST_CHURN_DATA_DIR)/dagster_home
SCALE ?= 1.0
SEED ?= 42
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: run install data instance prepare browser postgres stack stack-stop stack-status test test-fast \
	bench bench-pipeline bench-user bench-live bench-stack lint format clean-data

$(UV):
	@$(PYTHON) -m venv $(TOOLS_DIR)
	@$(TOOLS_DIR)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Bytecode is compiled at install: every process (each test worker, each server, each
# subprocess a test starts) then imports Dagster, MLflow and scikit-learn from .pyc files
# even where PYTHONDONTWRITEBYTECODE stops Python from caching them itself.
install: $(UV)  ## the locked environment in .venv, compiled to bytecode
	@$(UV) sync --frozen --quiet --compile-bytecode

FEED_DAYS ?= 7

# The demo: the generated marketplace in data/feed/, and data/raw/ as of FEED_DAYS days
# earlier, so the README's walkthrough can replay those days as a daily feed.
data: install  ## generate the demo dataset unless data/raw already has one
	@if [ -n "$$(ls -A $(OLIST_CHURN_DATA_DIR)/raw 2>/dev/null)" ]; then \
		echo "using the dataset in $(OLIST_CHURN_DATA_DIR)/raw"; \
	else \
		$(UV) run --quiet olist-churn generate $(OLIST_CHURN_DATA_DIR)/raw \
			--feed $(OLIST_CHURN_DATA_DIR)/feed --feed-days $(FEED_DAYS) --scale $(SCALE) --seed $(SEED); \
	fi

instance:  ## the Dagster instance home with the project's instance/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	@cp instance/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

prepare: data instance  ## materialize what the UI should show ready (skipped when done)
	@$(UV) run --quiet olist-churn prepare --ui http://$(HOST):$(PORT)

run: prepare  ## set up everything, then the Dagster UI on http://$(HOST):$(PORT)
	@echo "starting the Dagster UI on http://$(HOST):$(PORT) (Ctrl-C stops it)"
	@$(UV) run --quiet dg dev -h $(HOST) -p $(PORT)

CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver

browser:  ## headless Chromium and its driver for the browser tests (Debian/Ubuntu, as root)
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q chromium chromium-driver; \
	fi

PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl) $(shell command -v pg_ctl))

postgres:  ## PostgreSQL server binaries for the stack and its tests (Debian/Ubuntu, as root)
	@if [ -n "$(PG_CTL)" ]; then \
		echo "postgresql is installed"; \
	else \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	fi

# The deployed stack on this machine (docs/deploy.md): Postgres, MLflow's server, the code
# server, the Dagster webserver and daemon, each its own process under one supervisord that
# restarts it when it dies; state and logs in $(STACK_DIR). Its input files are
# $(STACK_DIR)/raw (generated at SCALE unless present).
STACK_DIR ?= $(OLIST_CHURN_DATA_DIR)/stack
STACK_WAREHOUSE ?= ducklake
MLFLOW_PORT ?= 5000

stack: install postgres  ## start the deployed stack (UI on http://127.0.0.1:$(PORT))
	@if [ -z "$$(ls -A $(STACK_DIR)/raw 2>/dev/null)" ]; then \
		$(UV) run --quiet olist-churn generate $(STACK_DIR)/raw --scale $(SCALE) --seed $(SEED); \
	fi
	@$(UV) run --quiet olist-churn stack up --root $(STACK_DIR) --warehouse $(STACK_WAREHOUSE) \
		--webserver-port $(PORT) --mlflow-port $(MLFLOW_PORT)

stack-stop: install  ## stop every server of the stack
	@$(UV) run --quiet olist-churn stack down --root $(STACK_DIR)

stack-status: install  ## each server's state, pid, uptime and restarts, and where it answers
	@$(UV) run --quiet olist-churn stack status --root $(STACK_DIR)

test: install browser postgres  ## the whole test suite (CI runs this)
	$(UV) run --quiet pytest

# The fast loop runs its modules on TEST_WORKERS processes (pytest-xdist), a module's tests
# on one of them, so its module fixtures are built once; the modules go out heaviest first
# by their tests' last durations (olist_churn_dagster_tests/balance.py), not by test count.
TEST_WORKERS ?= 2

test-fast: install  ## unit and in-process tests only: no server, no browser, nothing slow
	$(UV) run --quiet pytest -m "not e2e and not slow" -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

# `make bench` runs four benchmarks, each skipped when its scales are empty
# (e.g. `make bench BENCH_SCALES= BENCH_LIVE_SCALES= BENCH_STACK_SCALES=` runs only the
# user's backfill):
# - every pipeline stage, in process on an ephemeral instance (bench/pipeline.py);
# - the feature backfill as a user launches it, through the CLI on the instance `make run`
#   sets up, beside Dagster's floor (bench/user_backfill.py);
# - snapshot marker to committed scores and digest under a real `dg dev` (bench/live_loop.py):
#   BENCH_LIVE_SNAPSHOTS free snapshots, then one while a reader holds the warehouse
#   file for BENCH_LIVE_HOLD seconds (0 leaves that one out);
# - the feature backfill on the deployed stack, launched through the webserver as the UI
#   does, beside Dagster's floor on it and the embedded path, then snapshot marker to
#   committed scores through the stack's daemon (bench/stack_backfill.py).
# BENCH_MARKDOWN=docs/benchmarks.md also writes the stage table into that file.
BENCH_SCALES ?= 1 10 30
BENCH_MARKDOWN ?=
BENCH_USER_SCALES ?= 1 30
BENCH_LIVE_SCALES ?= 1
BENCH_LIVE_SNAPSHOTS ?= 3
BENCH_LIVE_HOLD ?= 60
BENCH_STACK_SCALES ?= 1 30

bench: bench-pipeline bench-user bench-live bench-stack  ## all four benchmarks (each prints its table)

bench-pipeline: install  ## every pipeline stage at scale 1, 10 and 30 if it fits
	$(if $(strip $(BENCH_SCALES)),$(UV) run python bench/pipeline.py --scales $(BENCH_SCALES) \
		$(if $(BENCH_MARKDOWN),--markdown $(BENCH_MARKDOWN)))

bench-user: install  ## the feature backfill through the CLI, beside Dagster's floor
	$(foreach scale,$(BENCH_USER_SCALES),$(UV) run python bench/user_backfill.py --scale $(scale) &&) true

bench-live: install  ## snapshot marker to committed scores under `dg dev`
	$(foreach scale,$(BENCH_LIVE_SCALES),$(UV) run python bench/live_loop.py --scale $(scale) \
		--snapshots $(BENCH_LIVE_SNAPSHOTS) --hold $(BENCH_LIVE_HOLD) &&) true

bench-stack: install postgres  ## the feature backfill and daily loop on `make stack`, beside the floor and embedded path
	$(foreach scale,$(BENCH_STACK_SCALES),$(UV) run python bench/stack_backfill.py --scale $(scale) &&) true

lint: install
	$(UV) run ruff check . && $(UV) run ruff format --check .

format: install
	$(UV) run ruff check --fix . && $(UV) run ruff format .

clean-data:  ## remove all generated state under the data directory (keeps its README)
	find $(OLIST_CHURN_DATA_DIR) -mindepth 1 -maxdepth 1 ! -name README.md ! -name .gitkeep -exec rm -rf {} +
