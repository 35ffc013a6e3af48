# quoteflow — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv assets services services-down services-status test lint bench run stop status logs constraints clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "quoteflow needs Python 3.11+; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	@touch $@

venv: $(VENV)/.installed ## create .venv, install the pinned dependencies and quoteflow itself (editable, with its command)

PLUGIN_ASSETS := plugins/quotes_view/static/vendor/uPlot.iife.min.js plugins/quotes_view/static/vendor/lightweight-charts.standalone.production.js
$(PLUGIN_ASSETS) &: plugins/quotes_view/package.json plugins/quotes_view/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed to build the quotes view's chart (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix plugins/quotes_view --no-audit --no-fund
	@touch $(PLUGIN_ASSETS)

assets: $(PLUGIN_ASSETS) ## build the quotes view's chart assets (uPlot and lightweight-charts, from npm)

services: ## start the local Kafka and Elasticsearch (a no-op when up)
	scripts/services up

services-down: ## stop the local Kafka and Elasticsearch this project started
	scripts/services down

services-status: ## show whether Kafka and Elasticsearch answer
	scripts/services status

test: venv assets ## run the whole suite (starts the services it needs, stops what it started); ARGS="-m unit" etc.
	scripts/run-tests $(ARGS)

lint: venv ## ruff (lint + format check) and mypy over the library
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv ## run the benchmarks in bench/ (services must be up: make services); writes bench/results.json
	@set -e; for b in bench/[!_]*.py; do echo "==> $$b"; $(PY) $$b; done

run: venv assets ## the whole pipeline locally, without Docker (SOURCE=tradingview|replay)
	scripts/run $(if $(SOURCE),--source $(SOURCE)) $(if $(REPLAY_FILE),--replay-file $(REPLAY_FILE))

stop: ## stop everything `make run` started
	scripts/run --stop

status: ## each component of `make run` and the last indexer window
	scripts/run --status

logs: ## the last lines of each log of `make run`, then follow them
	scripts/run --logs

constraints: ## regenerate constraints.txt from a clean install of requirements-dev.txt
	rm -rf .state/constraints-venv && $(PYTHON) -m venv .state/constraints-venv
	.state/constraints-venv/bin/pip install --quiet -r requirements-dev.txt
	{ echo "# Full pin set: \`pip freeze\` of a clean install of requirements-dev.txt on Python 3.11."; \
	  echo "# Regenerate with \`make constraints\` after changing requirements*.txt."; \
	  .state/constraints-venv/bin/pip freeze; } > constraints.txt
	rm -rf .state/constraints-venv

clean: stop services-down ## stop everything and delete local state (data, logs, Airflow home)
	rm -rf .state
