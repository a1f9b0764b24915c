"""What the master and the writing processes tell each other, beyond Locust's own messages.

What a run decided (its id, seed, time anchor and the addresses of its database and services) travels in
the RUN_START message, sent by the master at test start, before Locust's spawn messages (so every worker
has it when its own test_start fires). The options the user typed stay in `parsed_options`, untouched.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field, replace

from firehose.run.reach import loopback_identity

RUN_START = "firehose:run_start"
"""master -> workers: a `RunStart`."""
DRAIN = "firehose:drain"
"""master -> workers at the end: commit what you buffered, then report ({"run_id": ...})."""
DRAINED = "firehose:drained"
"""worker -> master: a process's final report (`ProcessRun.drain`: its final snapshot and its parts' reports)."""
FATAL = "firehose:fatal"
"""worker -> master: an error of the setup stops the run ({"run_id": ..., "reason": one line})."""
WRITER_KEY = "firehose:writer_key"
"""worker -> master, as soon as its share of the run opens, before it writes a row:
{"run_id": ..., "writer_key": ..., "worker_index": ...}. The master then knows whose rows a key numbers."""
JOIN = "firehose:join"
"""worker -> master at the worker's init ({}): send me the run under way, if one is. Locust connects a worker (and
fires `worker_connect` on the master) before the worker's init, and a master whose test runs hands it users at
once: a run-start message sent on `worker_connect` arrives before the worker can take it ("Unknown message type")."""
REFUSED = "firehose:refused"
"""worker -> master: a worker that belongs to another run refuses this one and quits; the run goes on without it
({"run_id": ..., "reason": one line})."""
SNAPSHOT = "firehose_snapshot"
"""Key of a worker's stats report (events.report_to_master, every 3 s): its `ProcessRun.snapshot()`, the
counters of its writers and engineers now. The master's live view and its worker ledger read it: what is
known of a worker that dies before its final report."""


def master_identity() -> str:
    """This process as the master of a run: its host and process id (a master restarted is another master)."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class RunStart:
    """What a run decided, for every writing process."""

    run_id: int
    seed: int
    anchor_us: int
    """Microseconds since the epoch: the end of the time window generated telemetry falls in."""
    addresses: dict[str, str]
    """Service name -> address: "postgres" always, plus the services the selected writers declared."""
    loopback: str = field(default_factory=loopback_identity)
    """Whose 127.0.0.1 the addresses mean: the machine and network namespace of the process that made the
    message, the master (a worker elsewhere refuses such addresses: firehose.run.reach)."""
    master: str = field(default_factory=master_identity)
    """Which master made the message (`master_identity`): a worker serves one master, never another run's."""
    users: int = 0
    """Users the run was started with (-u or the web form): with --population, the gateways that share it."""
    processes: int = 1
    """Processes that run users when the run started (the workers, or 1): with --population, its split."""

    def as_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, data: dict) -> RunStart:
        return cls(**data)

    def with_own(self, own: dict[str, str]) -> RunStart:
        """The same run with a process's own addresses, which win over the master's."""
        return replace(self, addresses={**self.addresses, **own})
