# firehose: `make run` (the main job) and `make test` (all tests) set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
USERS ?= 100
DURATION ?= 120s

.PHONY: run test test-fast lint services clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: a headless COPY burst of $(USERS) engineers on the embedded PostgreSQL (or --pg-dsn / PG*), then the summary
run: $(BIN)/.installed
	$(BIN)/locust -f locustfile.py CopyEngineer --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
		--only-summary --summary-json results/run.json

## test: lint, then every test (fast ones first, then the end-to-end ones marked slow)
test: $(BIN)/.installed services
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## services: pgbouncer and redis-server binaries (Debian packages) for the strategies that need them
services:
	@if command -v pgbouncer >/dev/null && command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer redis-server >/dev/null; \
	else echo "pgbouncer and redis-server are missing: install them (e.g. sudo apt-get install pgbouncer redis-server)"; exit 1; fi

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache *.egg-info
