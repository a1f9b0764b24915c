"""Simulated engineers: each emits its telemetry through one write strategy.

The abstract `Engineer` knows only the `Writer` interface; a concrete class names its strategy in
`writer_class`, so picking a user class on the Locust command line or in the web UI picks the
strategy.
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
from locust import constant, task
from locust.exception import StopUser

from telemetry.faults import Faults
from telemetry.generator import TraceRows
from users.pacing import Pacing, Schedule
from users.population import Population
from users.run import Run, RunUser
from writers.base import Writer
from writers.batched import BatchedWriter
from writers.copy import CopyWriter
from writers.naive import NaiveWriter
from writers.pooled import PooledWriter
from writers.stream import StreamWriter
from writers.validated import ValidatedCopyWriter
from writers.valve import ValveWriter


class Engineer(RunUser):
    """An engineer emitting ~1,900 OpenTelemetry events (100 traces with their metrics and logs)."""

    abstract = True

    writer_class: type[Writer]
    """The write strategy, shared by all engineers of the class in one process."""

    wait_time = constant(0)
    """No think time: an engineer emits as fast as its writer accepts (the writer applies back-pressure), or,
    with --engineer-rate, at that rate of events per second (users/pacing.py)."""

    schedule: Schedule | None = None
    """This engineer's timetable under --engineer-rate (kept across --continuous rounds)."""

    gave_up = False
    """Its telemetry raised in a fixed-volume run: it emits no more (the run's end counts it as finished)."""

    @task
    def emit(self) -> None:
        options = self.process.options
        run = self.process.process_run
        if run is None or self.gave_up:  # this process's run could not start (reported), or this engineer failed
            raise StopUser()
        writer = run.writer(self.writer_class)
        pacing = run.part(Pacing)
        if pacing.active and self.schedule is None:
            self.schedule = pacing.schedule()
        population = run.part(Population)
        if population.active:  # a gateway: it speaks for its share of the population until the run ends
            traces = population.traces()
        else:
            traces = run.engineer_telemetry(options.traces_per_engineer).traces(run.ids)
        try:
            self._hand_over(run, writer, traces)
        except StopUser:
            raise
        except Exception:
            if not options.continuous:  # Locust reports the error; the run must still end
                self.gave_up = True
                run.engineers_finished += 1
            raise
        if not options.continuous:
            run.engineers_finished += 1
            raise StopUser()

    def _hand_over(self, run: Run, writer: Writer, traces: Iterator[TraceRows]) -> None:
        """Hand each trace to the writer, at the engineer's pace; stops early when the run is ending."""
        while True:
            # Wait before composing the next trace, never with it: a waiting engineer holds no rows.
            if self.schedule is not None:
                self.schedule.wait_until_due()
            writer.wait_for_room()
            if (rows := next(traces, None)) is None:
                break
            if run.closing or writer.fatal is not None:  # the run is ending, or stopping on an error of the setup
                raise StopUser()
            if self.schedule is not None:
                self.schedule.hand_over(len(rows))  # sleeps until the trace is due; records its lag
                if run.closing:
                    raise StopUser()
            # Counted first: nothing yields from here to the writer's own count of the rows it received, so an
            # engineer killed at the end of a timed run never leaves a trace counted by one and not the other.
            run.generated.add(rows.facts)
            writer.write(self.outgoing(rows))
            gevent.sleep(0)  # one trace is ~0.2 ms of CPU: let other engineers and flushers run

    def outgoing(self, rows: TraceRows) -> TraceRows:
        """The rows handed to the writer: a hook for subclasses that alter them (fault injection)."""
        return rows


class CopyEngineer(Engineer):
    """Writes through COPY in batches of 5,000 rows, from a buffer all engineers of the process share."""

    writer_class = CopyWriter


class NaiveEngineer(Engineer):
    """Writes each event with its own INSERT, autocommit, through a pool of 50 connections per process."""

    writer_class = NaiveWriter


class BatchedEngineer(Engineer):
    """Writes through multi-row INSERTs of 500 rows, from a buffer all engineers of the process share."""

    writer_class = BatchedWriter


class PooledEngineer(Engineer):
    """Writes the batched INSERTs through pgBouncer in transaction pooling mode (a local one by default)."""

    writer_class = PooledWriter


class StreamEngineer(Engineer):
    """Writes each trace to a Redis Stream; the process's consumer greenlets COPY batches of 5,000 rows from it."""

    writer_class = StreamWriter


class ValveEngineer(Engineer):
    """Writes each trace to a local spool file (fsynced) and a pointer to it in Redis; the process's consumers COPY
    the pointed-to rows from the spool (Redis as the valve, not the store)."""

    writer_class = ValveWriter


class ValidatedCopyEngineer(Engineer):
    """Writes through COPY after checking every row; malformed rows go to the quarantine table.

    With `--malformed-share`, it first corrupts that share of its rows (telemetry/faults.py).
    """

    writer_class = ValidatedCopyWriter

    def on_start(self) -> None:
        super().on_start()
        run = self.process.process_run
        if run is None:  # the run could not start (reported): `emit` stops this user
            return
        self.faults = Faults(self.process.options.malformed_share, run.seed)

    def outgoing(self, rows: TraceRows) -> TraceRows:
        return self.faults.corrupt(rows)
