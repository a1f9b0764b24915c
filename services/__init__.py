"""Processes firehose starts and addresses it resolves: the embedded PostgreSQL, pgBouncer, Redis.

This package stands beside the others and imports none of them: the run (firehose) starts what the
selected writers declare they need and hands the addresses down.
"""
