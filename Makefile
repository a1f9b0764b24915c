# firehose: `make run` (the main job) and `make test` (all tests) set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
USERS ?= 100
DURATION ?= 120s
## EMBEDDED_PORT, EMBEDDED_DATA_DIR: where the embedded PostgreSQL of run, sweep, bench, optimize and chaos runs
## (default: firehose's own, port 54329 under the cache dir); clean removes EMBEDDED_DATA_DIR too
EMBEDDED_PORT ?=
EMBEDDED_DATA_DIR ?=
EMBEDDED := $(if $(EMBEDDED_PORT),--embedded-port $(EMBEDDED_PORT)) $(if $(EMBEDDED_DATA_DIR),--embedded-data-dir $(EMBEDDED_DATA_DIR))

.PHONY: run test test-fast lint services clean sweep bench optimize chaos soak mutants capacity grow retention

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: a headless COPY burst of $(USERS) engineers on the embedded PostgreSQL (or --pg-dsn / PG*), then the summary
run: $(BIN)/.installed
	$(BIN)/locust -f locustfile.py CopyEngineer --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
		--only-summary --summary-json results/run.json $(EMBEDDED)

## sweep: each strategy (STRATEGIES, comma-separated; default all) at each of SWEEP_USERS for SWEEP_DURATION,
## each strategy's C-client reference (the database's own ratio), the connection-scale axis (SWEEP_CONNECTIONS client
## connections, batched direct vs through pgBouncer; empty: none), into results/sweep-<timestamp>/ (sweep.md, .csv,
## .json, .png); SWEEP_ARGS="--migration-probe 5" adds the migration-lock probe to every cell
STRATEGIES ?=
SWEEP_USERS ?= 10,50,100
SWEEP_DURATION ?= 10s
SWEEP_CONNECTIONS ?= 20,200,1000
SWEEP_ARGS ?=
SWEEP_NEEDS_SERVICES := $(if $(STRATEGIES)$(SWEEP_CONNECTIONS),$(findstring Pooled,$(STRATEGIES) $(if $(SWEEP_CONNECTIONS),Pooled))$(findstring Stream,$(STRATEGIES)),all)
sweep: $(BIN)/.installed $(if $(SWEEP_NEEDS_SERVICES),services)
	$(BIN)/firehose sweep $(if $(STRATEGIES),--strategies $(STRATEGIES)) --users $(SWEEP_USERS) --duration $(SWEEP_DURATION) \
		$(if $(SWEEP_CONNECTIONS),--connections $(SWEEP_CONNECTIONS)) $(EMBEDDED) $(SWEEP_ARGS)

## bench: generator events/s, CopyEngineer vs raw psql \copy, each strategy vs its C-client reference (pgbench
## scripts in bench/pgbench/) with server cost per row, client CPU profiles, levers -> bench/results/
## (BENCH_ARGS="--quick" for a small run; "--pg-bin /usr/lib/postgresql/15/bin" for a server built with lz4;
## "--only crash_cost" measures what a worker killed -9 loses, per strategy)
## (its layouts part: COPY into partitioned tables against plain ones; BENCH_ARGS="--layout partitioned": every run)
BENCH_ARGS ?=
bench: $(BIN)/.installed services
	$(BIN)/firehose bench $(EMBEDDED) $(BENCH_ARGS)

## optimize: the 8 queries before and after schema/indexes.sql on 500 users over 3 days of history (a loaded dataset
## of that shape is reused), index sizes and their cost on COPY -> results/optimize-<timestamp>/ (OPTIMIZE_ARGS="--reload")
OPTIMIZE_ARGS ?=
optimize: $(BIN)/.installed
	$(BIN)/firehose optimize $(EMBEDDED) $(OPTIMIZE_ARGS)

## chaos: CopyEngineer alone, then with 8 analysts (one per query), 50 engineers, 30 s each, on 200,000 prefilled
## rows over 3 h: retention, queries/s, per-query p50/p95/p99, every query's counts checked against the generator's
## -> results/chaos-<timestamp>/ (CHAOS_ARGS="--strategy BatchedEngineer --users 100 -- --analyst-think-time 0.1")
CHAOS_ARGS ?=
chaos: $(BIN)/.installed
	$(BIN)/firehose chaos $(EMBEDDED) $(CHAOS_ARGS)

## soak: SOAK_DURATION (default 10m) of CopyEngineer, PooledEngineer and StreamEngineer over a master and two workers,
## on a PostgreSQL, pgBouncer and Redis of its own, while a seeded schedule restarts PostgreSQL (fast, immediate),
## pgBouncer and Redis and kills a worker (and starts another) every 30-90 s -> results/soak-<timestamp>/ (soak.md,
## soak.json); fails unless every row and fault is accounted for (SOAK_ARGS="--seed 7 -- --stream-claim-idle 5")
SOAK_DURATION ?= 10m
SOAK_ARGS ?=
soak: $(BIN)/.installed services
	$(BIN)/firehose soak --duration $(SOAK_DURATION) $(SOAK_ARGS)

## capacity: per strategy (CAPACITY_STRATEGIES, default COPY, batched, naive), the largest population of engineers at
## 1,900 events/day whose runs hold (p99 lag < 1 s, freshness p99 < 30 s, lost 0): doubling from 100,000 then
## bisecting, 15 s per probe, with who ran out of CPU -> results/capacity-<timestamp>/ (capacity.md, .json, .png)
## (CAPACITY_ARGS="--day-shape office --precision 0.05")
CAPACITY_STRATEGIES ?= CopyEngineer,BatchedEngineer,NaiveEngineer
CAPACITY_ARGS ?=
capacity: $(BIN)/.installed
	$(BIN)/firehose capacity --strategies $(CAPACITY_STRATEGIES) $(EMBEDDED) $(CAPACITY_ARGS)

## grow: COPY writes continuously (rows stamped as written) into each layout (plain, then partitioned), each on a
## PostgreSQL of its own in a new data directory under /var/tmp (removed when done), until the tables and indexes reach
## 30GB; every 2GB the rows/s, WAL, checkpoints, hit ratio, bytes read and a 30 s burst of the 8 queries ->
## results/grow-<timestamp>/ (grow.md, .csv, .json, .png) (GROW_ARGS="--layout partitioned --to 10GB --indexes")
GROW_ARGS ?=
grow: $(BIN)/.installed
	$(BIN)/firehose grow $(GROW_ARGS)
## retention: per layout (RETENTION_LAYOUTS), RETENTION_PREFILL of telemetry over 24 h, then the rows older than
## RETENTION_KEEP removed while 20 COPY engineers write: DETACH PARTITION ... CONCURRENTLY + DROP against DELETE +
## VACUUM, side by side -> results/retention-<timestamp>/ (RETENTION_ARGS="--before 60s -- --seed 3")
RETENTION_LAYOUTS ?= plain,partitioned
RETENTION_PREFILL ?= 5GB
RETENTION_KEEP ?= 12h
RETENTION_ARGS ?=
retention: $(BIN)/.installed
	$(BIN)/firehose retention --layout $(RETENTION_LAYOUTS) --prefill $(RETENTION_PREFILL) --keep $(RETENTION_KEEP) \
		$(EMBEDDED) $(RETENTION_ARGS)

## test: lint, layer rules (import-linter), dependencies (deptry), then every test on TEST_WORKERS pytest-xdist
## workers (default: cores + 2, each with a PostgreSQL of its own); a test that compares a rate or a timing raises its
## own priority (tests/conftest.py, rate_priority); pytest prints the 25 slowest tests (docs/contributing.md)
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 2 )))
test: $(BIN)/.installed services
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/deptry .
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

## test-fast: the tests that start no server and run no Locust (~30 s)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

## mutants: each named fault of tests/mutants/ (MUTANTS=03,06 or full names: some) applied to a scratch copy of the
## tree, the suite run there until its first failure; a table of the failing tests, fails if a fault survived
## (MUTANTS_ARGS="--pytest-arg=--deselect=tests/test_x.py" passes arguments to the suite's pytest)
MUTANTS ?=
MUTANTS_ARGS ?=
mutants: $(BIN)/.installed services
	$(BIN)/python tests/mutants/run.py $(if $(MUTANTS),--only $(MUTANTS)) $(MUTANTS_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports && $(BIN)/deptry .

## services: pgbouncer and redis-server binaries (Debian packages) for the strategies that need them, and
## chromium with chromium-driver for the web UI test
services:
	@if command -v pgbouncer >/dev/null && command -v redis-server >/dev/null \
		&& command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			pgbouncer redis-server chromium chromium-driver >/dev/null; \
	else echo "pgbouncer, redis-server, chromium or chromium-driver is missing: install them" \
		"(e.g. sudo apt-get install pgbouncer redis-server chromium chromium-driver)"; exit 1; fi

## clean: remove the embedded PostgreSQL's data directories (firehose reset --remove, refused while a run uses one:
## the default one and those bench --pg-bin made beside it), the cached value pools, results/, the tools' caches and the venv
clean:
	if [ -x $(BIN)/firehose ]; then \
		$(BIN)/firehose reset --remove && \
		$(BIN)/python -c 'from telemetry.pools import cache_path; [p.unlink() for p in cache_path(0).parent.glob("pools-*.pickle")]' && \
		$(if $(EMBEDDED_DATA_DIR),$(BIN)/firehose reset --remove --embedded-data-dir $(EMBEDDED_DATA_DIR) &&) \
		for dir in $$($(BIN)/python -c 'from services.postgres import default_data_dir as d; print(*d().parent.glob("postgres-*/"))'); do \
			$(BIN)/firehose reset --remove --embedded-data-dir "$$dir" || exit 1; done; fi
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis .import_linter_cache *.egg-info
