"""firehose: simulated engineers write OpenTelemetry telemetry into PostgreSQL.

    locust -f locustfile.py CopyEngineer                      # web UI on :8089
    locust -f locustfile.py CopyEngineer --headless -u 100 -r 100 -t 60s

With no --pg-dsn (and no PG* variables) an embedded PostgreSQL is started on 127.0.0.1.
The user classes: one engineer per write strategy (the table in firehose/strategies.py), and the analysts.
"""

from locust import events

from firehose import strategies
from firehose.run import lifecycle
from users import Analyst

USER_CLASSES = [*strategies.user_classes(), Analyst]

lifecycle.register(events, user_classes=USER_CLASSES)

globals().update({user_class.__name__: user_class for user_class in USER_CLASSES})  # Locust picks classes by name
__all__ = [user_class.__name__ for user_class in USER_CLASSES]
