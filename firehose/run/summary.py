"""End-of-run reconciliation and report: what was generated, acknowledged, and is in the database.

Writers report per process (`ProcessRun.drain`); the database is counted per writer key (one per process).
`lost` = generated - in the database - quarantined, over the processes that reported their final figures:
rows an engineer handed over that never landed and were not set aside as malformed. `duplicates` counts
rows of the run stored more than once (an event id repeated in a table: possible on the partitioned layout,
whose primary key is (event_id, time), when a copy carries another time): a writer that re-sends must not
produce any.

A process with no final report (its worker killed, or past --drain-timeout) cannot be reconciled: its rows in
the database are known, what it received only up to its last stats report. It is named apart ("unaccounted"),
with "lost with it" = received at its last report - its rows in the database (at least that many: what it
received afterwards is unknown), and the run's verdict is INCOMPLETE, never OK.

The run's parts (firehose.run.parts) each add their merged section; firehose.run.summary_text renders the
summary as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from firehose.report.live import FRESHNESS_METHOD, ROUND_TRIP_METHOD, merge, percentiles_ms
from firehose.run import parts, summary_text
from firehose.run.preflight import CONNECT_TIMEOUT_S
from telemetry.counts import GeneratedCounts, merge_counts
from telemetry.layout import TABLES

_COUNT_PER_KEY = """
SELECT k.writer_key, count(t.event_id), count(t.event_id) - count(DISTINCT t.event_id) FROM firehose_writer_keys AS k
LEFT JOIN {table} AS t
  ON t.event_id >= k.writer_key << 32 AND t.event_id < (k.writer_key + 1) << 32
WHERE k.run_id = %s
GROUP BY k.writer_key
"""


def count_in_database(conninfo: str, run_id: int) -> tuple[dict[int, dict[str, int]], int]:
    """Rows of the run per writer key and table (primary-key range scans), and the run's rows stored more than once
    (repeated event ids, on all three tables)."""
    counts: dict[int, dict[str, int]] = {}
    duplicates = 0
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        for table in TABLES:
            for key, rows, repeated in conn.execute(_COUNT_PER_KEY.format(table=table), [run_id]):
                counts.setdefault(key, dict.fromkeys(TABLES, 0))[table] = rows
                duplicates += repeated
    return counts, duplicates


@dataclass
class RunSummary:
    """One run's figures, from the writers' reports and a count in the database."""

    run_id: int
    seed: int
    database: str  # redacted DSN
    started_at: float  # the run's test start (wall clock)
    ended_at: float  # after every writer drained
    reports: list[dict] = field(default_factory=list)
    """Final reports of the processes that drained."""
    in_database_by_key: dict[int, dict[str, int]] | None = field(default_factory=dict)
    """Rows in the database per writer key of the run and table; None when it could not be reached to count them."""
    unaccounted: list[dict] = field(default_factory=list)
    """Writer keys with no final report, with what is known of their workers (firehose.run.worker_ledger)."""
    duplicates: int = 0
    stopped_by: str | None = None
    """The error of the setup that stopped the run, if one did."""
    class_names: dict[str, str] = field(default_factory=dict)
    """Writer (strategy) class name -> the user class that wrote through it."""
    extras: dict = field(default_factory=dict)
    """Sections other parts add (e.g. "live": the live counters' totals when the run ended)."""
    layout: str = "plain"
    """The telemetry tables' layout (--layout): plain or partitioned."""

    @property
    def in_database_counted(self) -> bool:
        return self.in_database_by_key is not None

    @property
    def in_database(self) -> dict[str, int]:
        """Rows in the database per table, of the processes that reported: the ones that reconcile."""
        totals = dict.fromkeys(TABLES, 0)
        for report in self.reports:
            for table, rows in self._key_tables(report["writer_key"]).items():
                totals[table] += rows
        return totals

    def _key_tables(self, writer_key: int) -> dict[str, int]:
        """Rows of a writer key per table; uncountable (the database is gone): what its writers saw committed."""
        if self.in_database_by_key is not None:
            return self.in_database_by_key.get(writer_key, {})
        totals = dict.fromkeys(TABLES, 0)
        for report in self.reports:
            if report["writer_key"] == writer_key:
                for tally in report["writers"].values():
                    for table, rows in tally["acknowledged"].items():
                        totals[table] += rows
        return totals

    def _key_rows(self, writer_key: int) -> int:
        return sum(self._key_tables(writer_key).values())

    def processes(self) -> list[dict]:
        """Per process that reported: rows generated, acknowledged, in the database under its key, lost."""
        found = []
        for report in sorted(self.reports, key=lambda report: report["writer_key"]):
            tallies = report["writers"].values()
            generated = sum(sum(t["received"].values()) for t in tallies)
            quarantined = sum(sum(t["quarantined"].values()) for t in tallies)
            in_database = self._key_rows(report["writer_key"])
            found.append(
                {
                    "process": report.get("process"),
                    "writer_key": report["writer_key"],
                    "generated": generated,
                    "acknowledged": sum(sum(t["acknowledged"].values()) for t in tallies),
                    "in_database": in_database,
                    "lost": generated - in_database - quarantined,
                }
            )
        return found

    def unaccounted_processes(self) -> list[dict]:
        """Per process with no final report: what it last reported, its rows in the database, what died with it."""
        found = []
        for worker in self.unaccounted:
            in_database = self._key_rows(worker["writer_key"])
            received = worker["received"]
            lost = None if received is None else max(received - in_database, 0)
            found.append({**worker, "in_database": in_database, "lost_with_it_at_least": lost})
        return found

    def verdict(self) -> str:
        """OK (reconciled), MISMATCH (lost or duplicated rows), INCOMPLETE (a process never gave its final
        figures), STOPPED (an error of the setup stopped the run)."""
        if self.stopped_by:
            return "STOPPED"
        if self.unaccounted:
            return "INCOMPLETE"
        events = self._events()
        return "OK" if events["lost"] == 0 and events["duplicates"] == 0 else "MISMATCH"

    def _events(self) -> dict:
        generated, in_database = sum(self._sum("received").values()), sum(self.in_database.values())
        quarantined = sum(self._sum("quarantined").values())
        return {
            "generated": generated,
            "acknowledged": sum(self._sum("acknowledged").values()),
            "in_database": in_database,
            "in_database_counted": self.in_database_counted,
            "lost": generated - in_database - quarantined,
            "failed": sum(self._sum("failed").values()),
            "quarantined": quarantined,
            "duplicates": self.duplicates,
        }

    def _sum(self, key: str) -> dict[str, int]:
        totals = dict.fromkeys(TABLES, 0)
        for report in self.reports:
            for tally in report["writers"].values():
                for table, value in tally[key].items():
                    totals[table] += value
        return totals

    @property
    def writing_s(self) -> float:
        """From the first engineer's first write (any process) to the last commit: what rates are over.

        Not from test start: start-up (connecting, spawning users) is the tool's cost, not the strategy's.
        """
        starts = [report["writing_since"] for report in self.reports if report.get("writing_since")]
        return self.ended_at - min(starts, default=self.started_at)

    def part_sections(self) -> dict[str, dict | None]:
        """Each part's section: its reports of every process that had one, merged (users.run.Part.merge)."""
        return {
            part.name: part.merge(
                [report["parts"][part.name] for report in self.reports if part.name in report.get("parts", {})]
            )
            for part in parts.PARTS
        }

    def generated_counts(self) -> dict:
        """The generator's own counts (telemetry.counts) of every process's engineers, added up."""
        none = GeneratedCounts(()).as_dict()  # the shape, for a run where no process reported
        return merge_counts(
            [none, *(report["generated_counts"] for report in self.reports if "generated_counts" in report)]
        )

    def _strategies(self, elapsed: float) -> tuple[dict, dict, dict]:
        """Per user class rows/s and freshness, freshness per table, and round-trip percentiles, from the reports."""
        view = merge([{"engineers": [0, 0], **report} for report in self.reports], self.class_names)
        fresh = view["freshness_histograms"]
        by_class = {
            name: {
                "acknowledged": row["acknowledged"],
                "failed": row["failed"],
                "quarantined": row["quarantined"],
                "retries": row["retries"],
                "blocked_s": row["blocked_s"],
                "rows_per_s": row["acknowledged"] / elapsed,
                "mb_per_s": row["acknowledged_bytes"] / elapsed / 1e6,
                "freshness": percentiles_ms(fresh["by_class"].get(name)),
            }
            for name, row in sorted(view["by_class"].items())
        }
        freshness = {
            "by_class": {name: row["freshness"] for name, row in by_class.items()},
            "by_table": {table: percentiles_ms(fresh["by_table"].get(table)) for table in TABLES},
            "method": FRESHNESS_METHOD,
        }
        round_trips = {
            "by_verb": {
                verb: {"count": histogram.get_total_count(), **percentiles_ms(histogram)}
                for verb, histogram in sorted(view["round_trip_histograms"].items())
            },
            "method": ROUND_TRIP_METHOD,
        }
        return by_class, freshness, round_trips

    def as_dict(self) -> dict:
        generated = self._sum("received")
        acknowledged = self._sum("acknowledged")
        size = self._sum("acknowledged_bytes")
        in_database = self.in_database
        elapsed = max(self.writing_s, 1e-9)
        rows = sum(acknowledged.values())
        by_class, freshness, round_trips = self._strategies(elapsed)
        return {
            "run": {
                "run_id": self.run_id,
                "seed": self.seed,
                "database": self.database,
                "layout": self.layout,
                "elapsed_s": self.ended_at - self.started_at,
                "writing_s": self.writing_s,
                "stopped_by": self.stopped_by,
                "verdict": self.verdict(),
            },
            "events": self._events(),
            "writes": {
                "rows": rows,
                "rows_per_s": rows / elapsed,
                "mb_per_s": sum(size.values()) / elapsed / 1e6,
                "by_table": {
                    table: {
                        "generated": generated[table],
                        "acknowledged": acknowledged[table],
                        "in_database": in_database.get(table, 0),
                        "rows_per_s": acknowledged[table] / elapsed,
                        "mb_per_s": size[table] / elapsed / 1e6,
                    }
                    for table in TABLES
                },
                "by_class": by_class,
            },
            "processes": self.processes(),
            "unaccounted": self.unaccounted_processes(),
            "freshness": freshness,
            "round_trips": round_trips,
            **self.part_sections(),
            "generated_counts": self.generated_counts(),
            **self.extras,
        }

    def render(self) -> str:
        """The summary as a plain-text table for the terminal."""
        return summary_text.render(self.as_dict(), self.ended_at)

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
