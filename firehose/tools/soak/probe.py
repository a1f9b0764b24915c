"""Loaded by `firehose soak` into its Locust master beside locustfile.py (`-f locustfile.py,probe.py`): each
worker's counters as its stats reports arrive, one JSON line each, so the soak can say what each fault cost.

A worker's stats report (Locust's `worker_report` event, every 3 s) carries firehose's snapshot of its writers'
counters since its share of the run opened. The line keeps, per writer, the sums over tables of the counters
the soak reads (retries, seconds blocked, rows received and acknowledged), with the arrival time and the
worker's writer key. Without `FIREHOSE_SOAK_PROBE` (the file to append to) it does nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

from locust import events
from locust.env import Environment
from locust.runners import MasterRunner

PROBE_FILE = "FIREHOSE_SOAK_PROBE"
"""Environment variable: the JSON-lines file the master appends each worker's counters to."""
SNAPSHOT = "firehose_snapshot"
"""Key of firehose's snapshot in a worker's stats report (docs/reliability.md, "Every worker accounted for")."""
COUNTERS = ("received", "acknowledged", "failed", "quarantined", "retries", "blocked_s")


def counters_line(client_id: str, snapshot: dict, at: float) -> dict:
    """One worker's snapshot as the soak reads it: per writer, each counter summed over its tables."""
    return {
        "at": at,
        "client_id": client_id,
        "writer_key": snapshot["writer_key"],
        "writers": {
            writer: {counter: sum(tally[counter].values()) for counter in COUNTERS}
            for writer, tally in snapshot["writers"].items()
        },
    }


class Probe:
    """Appends a line to `out` for every worker report that holds a snapshot."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def on_worker_report(self, client_id: str, data: dict, **_: object) -> None:
        if (snapshot := data.get(SNAPSHOT)) is not None:
            self.out.write(json.dumps(counters_line(client_id, snapshot, time.time())) + "\n")
            self.out.flush()


@events.init.add_listener
def _attach(environment: Environment, **_: object) -> None:
    path = os.environ.get(PROBE_FILE)
    if path and isinstance(environment.runner, MasterRunner):
        environment.events.worker_report.add_listener(Probe(open(path, "a")).on_worker_report)  # noqa: SIM115
