#!/bin/sh
# Entrypoint of the streaming read replica. On first start (empty data directory) it clones the primary
# with pg_basebackup -R: the copy brings the primary's postgresql.conf (which includes firehose's settings
# file, mounted here too) and -R adds standby.signal and primary_conninfo with the slot. Then the image's
# own entrypoint finds an existing cluster, skips initdb, and starts it as a hot standby.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  # primary_conninfo (written by -R) keeps this password, inside the replica's own volume.
  PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
    --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$REPLICATION_USER" \
    --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream --slot="$REPLICATION_SLOT" \
    --checkpoint=fast
fi
exec docker-entrypoint.sh postgres
