#!/bin/sh
# Runs once, at the primary's first start (after 10-include-firehose-conf.sh): the role and the physical
# slot the read replica streams through, and the pg_hba.conf line that lets it connect for replication.
# The slot makes the primary keep WAL until the replica has it, so a replica that restarts catches up
# instead of needing a new base backup (drop the slot if you remove the replica for good).
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set role="$REPLICATION_USER" --set password="$REPLICATION_PASSWORD" --set slot="$REPLICATION_SLOT" <<'SQL'
CREATE ROLE :"role" WITH REPLICATION LOGIN PASSWORD :'password';
SELECT pg_create_physical_replication_slot(:'slot');
SQL
echo "host replication $REPLICATION_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"
