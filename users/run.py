"""The contract between a process's run and what runs in it: its users and its parts.

- `Run`: what users and parts may use of this process's share of a run (firehose.run.process_run.ProcessRun).
- `Part`: a part of a process's run that its users share (the analysts' queries, pacing, the migration probe):
  it declares, in one place, its options, its name, its per-process report, how the reports of several
  processes merge and how the merged section reads in the summary. firehose.run.parts lists the parts.
- `RunUser`: a Locust user of a firehose run. It receives this process's side of the runs as `process`, set by
  the run's lifecycle at init, as Locust's runner sets a user class's `host`.

It lives here, below firehose and above the writers, so that users, parts and the run all import it.
"""

from __future__ import annotations

import argparse
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Protocol, Self, TypeVar

import gevent
from locust import User
from locust.event import Events

from telemetry.counts import GeneratedCounts
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.pools import Pools
from writers.base import Writer

P = TypeVar("P", bound="Part")

RUN_WAIT_S = 60.0
"""How long a user of a worker that joined a running test waits for the process's share of the run (its init, then
the master's answer): then it stops, as where the run could not open."""
INIT_POLL_S = 0.05
"""How often such a user looks whether the process's init has run."""


class Run(Protocol):
    """What users and parts may use of this process's share of one run."""

    run_id: int
    seed: int
    anchor_us: int
    """Microseconds since the epoch: the end of the time window the run's telemetry falls in."""
    process_index: int
    users: int
    """Users the run was started with, in every process (with --population, its gateways)."""
    processes: int
    """Processes that run users (the workers, or 1)."""
    pools: Pools
    conninfo: str
    """The run's database, as this process reaches it."""
    addresses: Mapping[str, str]
    """Service name -> address, as this process reaches them ("postgres", "analysts", "redis", ...)."""
    options: argparse.Namespace
    events: Events
    closing: bool
    """True once the run drains: users stop at their next step."""
    ids: EventIds
    generated: GeneratedCounts
    engineers_finished: int

    def writer(self, writer_class: type[Writer]) -> Writer:
        """This process's writer of that strategy, created on first use."""
        ...

    def part(self, part_class: type[P]) -> P:
        """This process's `part_class` for the run, built once (`part_class.for_run`)."""
        ...

    def engineer_telemetry(self, traces: int) -> EngineerTelemetry:
        """The next engineer's telemetry."""
        ...

    def rows_acknowledged(self) -> int:
        """Rows this process's writers have seen committed so far."""
        ...


class Part(ABC):
    """A part of a process's run, shared by its users, with a report of its own in the summary.

    One instance per process and run (`Run.part`); at the drain it is closed before the writers (`close`) and its
    `report()` travels to the master in the process's final report under `name`. The master merges the reports
    of every process (`merge`) into the summary's section `name`, and `render` gives that section's lines of
    the text summary. Adding a part: a subclass, and its entry in firehose.run.parts.PARTS.
    """

    name: ClassVar[str]
    """Its key in a process's final report and in the summary JSON (schema/summary.schema.json)."""

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Its options, on Locust's command line and in the web UI's form."""

    @classmethod
    @abstractmethod
    def for_run(cls, run: Run) -> Self:
        """This process's instance for `run`, set up from the run's options."""

    @classmethod
    def starts_with_run(cls, options: argparse.Namespace) -> bool:
        """True: built as soon as the process's share of the run opens. False (default): on first use."""
        return False

    @abstractmethod
    def report(self) -> dict:
        """This process's figures, JSON-serialisable (they travel in a message from a worker)."""

    def close(self) -> None:  # noqa: B027  (most parts hold nothing to close)
        """Stop at the drain, before the writers commit their last rows."""

    @staticmethod
    @abstractmethod
    def merge(reports: list[dict]) -> dict | None:
        """The reports of every process that had one as the summary's section (empty or None: nothing to say)."""

    @staticmethod
    @abstractmethod
    def render(section: dict) -> list[str]:
        """The lines of the text summary for a non-empty merged section."""


class Process(Protocol):
    """This process's side of the runs, as users see it (firehose.run.process_run.WritingProcess)."""

    options: argparse.Namespace
    """The options this process runs with (Locust's `parsed_options`)."""

    def wait_for_run(self, timeout: float) -> None:
        """Return once this process's share of the current run is open, or cannot be (at most `timeout` s)."""
        ...

    @property
    def process_run(self) -> Run | None:
        """This process's share of the current run: None before the first test start, or when it could not open."""
        ...


class RunUser(User):
    """A Locust user of a firehose run: it reaches the run through `process`."""

    abstract = True

    process: ClassVar[Process | None] = None
    """This process's side of the runs, set on this class by the run's lifecycle at Locust's init
    (firehose.run.lifecycle); None where no users run (a master with workers)."""

    def on_start(self) -> None:
        """Wait for this process's share of the run: a worker that joins a running test gets its users from Locust
        before its own init, and opens its share only when the master's run-start message comes."""
        deadline = time.monotonic() + RUN_WAIT_S
        while self.process is None and time.monotonic() < deadline:  # spawned before this process's init
            gevent.sleep(INIT_POLL_S)
        if self.process is not None:
            self.process.wait_for_run(max(deadline - time.monotonic(), 0))
