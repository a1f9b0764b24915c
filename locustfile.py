"""firehose: simulated engineers write OpenTelemetry telemetry into PostgreSQL.

    locust -f locustfile.py CopyEngineer                      # web UI on :8089
    locust -f locustfile.py CopyEngineer --headless -u 100 -r 100 -t 60s

With no --pg-dsn (and no PG* variables) an embedded PostgreSQL is started on 127.0.0.1.
"""

from locust import events

from firehose.run import lifecycle
from users import (
    Analyst,
    BatchedEngineer,
    CopyEngineer,
    NaiveEngineer,
    PooledEngineer,
    StreamEngineer,
    ValidatedCopyEngineer,
)

lifecycle.register(
    events,
    user_classes=[
        CopyEngineer,
        NaiveEngineer,
        BatchedEngineer,
        PooledEngineer,
        StreamEngineer,
        ValidatedCopyEngineer,
        Analyst,
    ],
)

__all__ = [
    "Analyst",
    "BatchedEngineer",
    "CopyEngineer",
    "NaiveEngineer",
    "PooledEngineer",
    "StreamEngineer",
    "ValidatedCopyEngineer",
]
