#!/bin/bash
# The docs' before/after: COPY (50 engineers) with 8 analysts, schema/indexes.sql not applied vs applied, 3 runs of
# 20 s each per group, the groups alternating and every run on emptied tables (so that a run's figures do not
# depend on how much the runs before it wrote). Run from the repository with `make .venv/bin/.installed` done; a
# PostgreSQL of its own (the embedded server's binaries, port 55402, data under /tmp) stays up between the runs so
# psql can change its indexes, and the runs are kept in a store of their own (FIREHOSE_RUNS_DIR) beside this script.
set -ex
HERE=$(cd "$(dirname "$0")" && pwd)
export FIREHOSE_RUNS_DIR="$HERE/store"
DSN="host=127.0.0.1 port=55402 user=postgres dbname=firehose"
PSQL="/usr/lib/postgresql/15/bin/psql"
SERVER='from pathlib import Path; from services.postgres import EmbeddedPostgres; server = EmbeddedPostgres(Path("/tmp/firehose-indexes/data"), 55402)'
.venv/bin/python -c "$SERVER; server.start()"
trap '.venv/bin/python -c "$SERVER; server.started_here = True; server.stop()"' EXIT
RUN=(CopyEngineer Analyst -u 58 -r 58 --analysts 8 -t 20s --continuous --pg-dsn "$DSN")
DROP="DO \$\$ DECLARE i text; BEGIN FOR i IN SELECT indexname FROM pg_indexes WHERE indexname LIKE 'firehose\_%' AND indexname NOT LIKE '%\_pkey' LOOP EXECUTE format('DROP INDEX %I', i); END LOOP; END \$\$"
for round in 1 2 3; do
  $PSQL "$DSN" -c "TRUNCATE spans, metrics, logs, quarantine" -c "$DROP" -c "CHECKPOINT"
  .venv/bin/firehose run --label "no indexes" -- "${RUN[@]}"
  $PSQL "$DSN" -c "TRUNCATE spans, metrics, logs, quarantine" -f schema/indexes.sql -c "CHECKPOINT"
  .venv/bin/firehose run --label "indexes.sql" -- "${RUN[@]}"
done
.venv/bin/firehose compare "no indexes" "indexes.sql" | tee "$HERE/compare.txt"
.venv/bin/firehose compare "no indexes" "indexes.sql" --json > "$HERE/compare.json"
