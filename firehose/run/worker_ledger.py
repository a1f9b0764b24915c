"""The master's ledger of its workers in a run: whose rows each writer key numbers, what each last reported,
and whether it is still there.

Each worker tells its writer key as soon as its share of the run opens, before it writes a row (WRITER_KEY),
then its snapshot (its writers' and engineers' counters) with every stats report (SNAPSHOT, every 3 s): what
is known of a worker that dies without its final report. Whether a worker is still there is Locust's own judgement:
its master marks a worker `missing` in `runner.clients` after a few heartbeats fail to arrive (~4 s; Locust
2.47 fires no event for it) and drops it about a minute later, handing its users to the survivors. The
ledger reads that state (`runner.clients`, `WorkerNode.state`) when it needs it: at the end check and
while the master waits for the workers' final reports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from locust.runners import STATE_MISSING, MasterRunner

logger = logging.getLogger("firehose")


@dataclass
class WorkerEntry:
    """What the master knows of one worker in the current run."""

    client_id: str
    worker_index: int | None = None
    writer_key: int | None = None
    snapshot: dict | None = None
    """Its last snapshot (firehose.run.process_run.ProcessRun.snapshot; None before its first stats report)."""
    reported_at: float | None = None
    """Wall-clock time of that snapshot's arrival."""

    @property
    def engineers(self) -> tuple[int, int]:
        """Engineers (started, finished) in its last report."""
        return tuple(self.snapshot["engineers"]) if self.snapshot is not None else (0, 0)

    def rows(self, kind: str) -> int | None:
        """Rows "received" or "acknowledged" at its last report, all writers and tables (None before its first)."""
        if self.snapshot is None:
            return None
        return sum(sum(tally[kind].values()) for tally in self.snapshot["writers"].values())

    @property
    def name(self) -> str:
        return f"firehose worker {self.worker_index}" if self.worker_index is not None else self.client_id


class WorkerLedger:
    """The workers of the master's current run, by Locust client id."""

    def __init__(self, runner: MasterRunner) -> None:
        self.runner = runner
        self.run_id: int | None = None
        self.entries: dict[str, WorkerEntry] = {}

    def begin(self, run_id: int) -> None:
        self.run_id, self.entries = run_id, {}

    def _entry(self, client_id: str) -> WorkerEntry:
        return self.entries.setdefault(client_id, WorkerEntry(client_id))

    def on_writer_key(self, client_id: str, data: dict) -> None:
        if data["run_id"] == self.run_id:
            entry = self._entry(client_id)
            entry.writer_key, entry.worker_index = data["writer_key"], data["worker_index"]

    def on_snapshot(self, client_id: str, snapshot: dict) -> None:
        """A worker's snapshot, from its stats report: keep the latest, with its figures and engineer counts."""
        if snapshot["run_id"] != self.run_id:
            return  # a report from before this run
        entry = self._entry(client_id)
        was_writing = bool(entry.rows("received"))
        entry.writer_key, entry.snapshot, entry.reported_at = snapshot["writer_key"], snapshot, time.time()
        if entry.rows("received") and not was_writing:  # once per worker and run: whose rows this key numbers
            logger.info("%s writes under writer key %d", entry.name, entry.writer_key)

    def state(self, client_id: str) -> str:
        """ "live", "missing" (heartbeats stopped arriving) or "gone" (Locust dropped it, or it quit)."""
        node = self.runner.clients.get(client_id)
        if node is None:
            return "gone"
        return "missing" if node.state == STATE_MISSING else "live"

    def engineers(self) -> tuple[int, int]:
        """Engineers (started, finished) of the run. A worker that is no longer live counts only the engineers
        it finished: the others died with it (in a fixed-volume run Locust hands their users to the survivors,
        where they start as new engineers), so they can never hold the run's end."""
        started = finished = 0
        for client_id, entry in self.entries.items():
            done = entry.engineers[1]
            started += entry.engineers[0] if self.state(client_id) == "live" else done
            finished += done
        return started, finished

    def owner(self, writer_key: int) -> WorkerEntry | None:
        return next((entry for entry in self.entries.values() if entry.writer_key == writer_key), None)

    def awaited(self, keys: set[int], drained: set[int]) -> set[int]:
        """Keys of the run with no final report yet whose worker may still send one: live, or not known."""
        return {
            key for key in keys - drained if (owner := self.owner(key)) is None or self.state(owner.client_id) == "live"
        }

    def unaccounted(self, keys: set[int], drained: set[int], drain_timeout: float) -> list[dict]:
        """The run's keys with no final report, each with what is known of its worker (for the summary)."""
        found = []
        for key in sorted(keys - drained):
            owner = self.owner(key)
            state = "unknown" if owner is None else self.state(owner.client_id)
            reason = {
                "unknown": "never reported: no worker told the master this key",
                "live": f"no final report within --drain-timeout ({drain_timeout:g} s)",
                "missing": "missing: its heartbeats stopped (process killed or unreachable)",
                "gone": "gone: dropped by Locust's master after missing heartbeats, or quit",
            }[state]
            found.append(
                {
                    "worker": owner.name if owner is not None else None,
                    "worker_index": owner.worker_index if owner is not None else None,
                    "writer_key": key,
                    "state": state,
                    "reason": reason,
                    "last_report_at": owner.reported_at if owner is not None else None,
                    "received": owner.rows("received") if owner is not None else None,
                    "acknowledged": owner.rows("acknowledged") if owner is not None else None,
                }
            )
        return found
