"""Simulated engineers: each emits its telemetry through one write strategy.

The abstract `Engineer` knows only the `Writer` interface; a concrete class names its strategy in
`writer_class`, so picking a user class on the Locust command line or in the web UI picks the
strategy.
"""

from __future__ import annotations

import gevent
from locust import User, constant, task
from locust.exception import StopUser

from writers.base import Writer
from writers.copy import CopyWriter


class Engineer(User):
    """An engineer emitting ~1,900 OpenTelemetry events (100 traces with their metrics and logs)."""

    abstract = True

    writer_class: type[Writer]
    """The write strategy, shared by all engineers of the class in one process."""

    wait_time = constant(0)
    """No think time: an engineer emits as fast as its writer accepts (the writer applies back-pressure)."""

    @task
    def emit(self) -> None:
        firehose = self.environment.firehose
        run = firehose.process_run
        writer = run.writer(self.writer_class)
        for rows in run.engineer_telemetry(firehose.options.traces_per_engineer).traces(run.ids):
            if run.closing:
                raise StopUser()
            writer.write(rows)
            gevent.sleep(0)  # one trace is ~0.2 ms of CPU: let other engineers and flushers run
        if not firehose.options.continuous:
            raise StopUser()


class CopyEngineer(Engineer):
    """Writes through COPY in batches of 5,000 rows, from a buffer all engineers of the process share."""

    writer_class = CopyWriter
