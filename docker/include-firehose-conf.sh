#!/bin/sh
# Runs once, at the database's first start: make postgresql.conf include firehose's settings file.
echo "include '/etc/firehose/postgresql.conf'" >> "$PGDATA/postgresql.conf"
