"""Loaded by `firehose retention` into its Locust run beside locustfile.py (`-f locustfile.py,timeline.py`): what
the writers did, moment by moment, so the retention can say what its DETACH, DROP, DELETE and VACUUM cost them.

Appends JSON lines to the file named by `FIREHOSE_RETENTION_TIMELINE` (without it, it does nothing):
- each round trip, as Locust's request event reports it: `{"at", "verb", "table", "ms", "failed"}` (`at`: when it
  ended, seconds since the epoch; `ms` unrounded, unlike Locust's tables);
- every SAMPLE_S, the rows the writers acknowledged so far: `{"at", "acknowledged"}`, from the process's firehose
  snapshot, asked for the way a worker's stats report asks (Locust's `report_to_master` event, whose firehose
  listener adds it). For a run of one process (no --processes): the snapshot is this process's.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

import gevent
from locust import events
from locust.env import Environment
from locust.runners import LocalRunner

TIMELINE_FILE = "FIREHOSE_RETENTION_TIMELINE"
"""Environment variable: the JSON-lines file to append to."""
SNAPSHOT = "firehose_snapshot"
"""Key of firehose's snapshot in a stats report (docs/reliability.md, "Every worker accounted for")."""
SAMPLE_S = 0.25
"""How often the acknowledged rows are sampled: a 5,000-row COPY commits a few times a second per table here."""


class Timeline:
    """Writes the lines; `sample_forever` runs in a greenlet of its own."""

    def __init__(self, environment: Environment, out: IO[str]) -> None:
        self.environment = environment
        self.out = out

    def on_request(self, request_type: str, name: str, response_time: float, exception: object, **_: object) -> None:
        self._write({"at": time.time(), "verb": request_type, "table": name, "ms": response_time,
                     "failed": exception is not None})  # fmt: skip

    def sample_forever(self) -> None:
        while True:
            data: dict = {}
            self.environment.events.report_to_master.fire(client_id="retention timeline", data=data)
            if (snapshot := data.get(SNAPSHOT)) is not None:
                acknowledged = sum(sum(tally["acknowledged"].values()) for tally in snapshot["writers"].values())
                self._write({"at": snapshot["at"], "acknowledged": acknowledged})
            gevent.sleep(SAMPLE_S)

    def _write(self, line: dict) -> None:
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()


@events.init.add_listener
def _attach(environment: Environment, **_: object) -> None:
    path = os.environ.get(TIMELINE_FILE)
    if path and isinstance(environment.runner, LocalRunner):
        timeline = Timeline(environment, open(path, "a"))  # noqa: SIM115 (open for the process's life)
        environment.events.request.add_listener(timeline.on_request)
        gevent.spawn(timeline.sample_forever)
