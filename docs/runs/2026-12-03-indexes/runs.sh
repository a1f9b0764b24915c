#!/bin/bash
# The docs' before/after: COPY (50 engineers) with 8 analysts, schema/indexes.sql not applied vs applied, 3 runs of 20 s each.
set -ex
# Run from the repository, with a PostgreSQL of your own at $DSN (here: the embedded server's binaries on port 55402,
# started apart so that it stays up between the runs and psql can change its indexes).
DSN="host=127.0.0.1 port=55402 user=postgres dbname=firehose"
PSQL="/usr/lib/postgresql/15/bin/psql"
$PSQL "$DSN" -c "TRUNCATE spans, metrics, logs, quarantine" -c "DO \$\$ DECLARE i text; BEGIN FOR i IN SELECT indexname FROM pg_indexes WHERE indexname LIKE 'firehose\_%' AND indexname NOT LIKE '%\_pkey' LOOP EXECUTE format('DROP INDEX %I', i); END LOOP; END \$\$" -c "CHECKPOINT"
$PSQL "$DSN" -c "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'firehose_%'"
.venv/bin/firehose run --repeat 3 --label "no indexes" -- CopyEngineer Analyst -u 58 -r 58 --analysts 8 -t 20s --continuous --pg-dsn "$DSN"
$PSQL "$DSN" -c "TRUNCATE spans, metrics, logs, quarantine" -f schema/indexes.sql -c "CHECKPOINT"
.venv/bin/firehose run --repeat 3 --label "indexes.sql" -- CopyEngineer Analyst -u 58 -r 58 --analysts 8 -t 20s --continuous --pg-dsn "$DSN"
.venv/bin/firehose compare "no indexes" "indexes.sql"
.venv/bin/firehose compare "no indexes" "indexes.sql" --json > compare.json
