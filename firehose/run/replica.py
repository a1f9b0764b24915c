"""The analysts' replica: how far behind the primary it is while the firehose runs, and how long a row takes to
become visible there.

The analysts query a streaming replica when the run starts one (`--replica`, services.replica) or when their
`--analyst-dsn` is a standby (`pg_is_in_recovery()`) of the target primary (same `system_identifier`); a standby of
another system is refused before start. On the master (or the only process) a `ReplicaWatch` then runs from test
start to the summary:
- lag, every LAG_SAMPLE_S: the primary's `pg_stat_replication` row of the replica (write, flush, replay lag) and the
  bytes between the primary's current WAL position and the replica's replay position; a role that cannot see the
  lag columns gets the replay lag from the replica (`now() - pg_last_xact_replay_timestamp()` while it is behind);
- visible freshness, every FRESHNESS_S: each writer key's newest event id committed on the primary (an index probe
  of `spans`), then the same on the replica; a row's freshness is the time from when the primary showed it to when
  the replica did. The primary is polled, so a figure is short by up to FRESHNESS_S (the resolution); the same
  probe against the primary itself gives the probe's own cost;
- at the end, after every process drained: wait at most --replica-catch-up seconds for the replica to replay the
  primary's last WAL position, and say how far behind it was if it did not;
- a replica that cannot be reached is noted ("went away"): the run's exit code is then REPLICA_LOST.
"""

from __future__ import annotations

import argparse
import logging
import time

import gevent
import psycopg

from firehose.run.preflight import CONNECT_TIMEOUT_S, Refused
from services.postgres import redact

logger = logging.getLogger("firehose")

LAG_SAMPLE_S = 1.0
"""How often the replication lag is sampled (the issue's "every second")."""
FRESHNESS_S = 0.1
"""How often the freshness probe reads each writer key's newest event id: its resolution."""
CATCH_UP_S = 30
"""--replica-catch-up's default: a replica 80 ms behind under a 12.6k rows/s COPY (measured) replays a run's tail in
well under a second; one that is not there after this is reported behind."""

_NEWEST_PER_KEY = """
SELECT k.writer_key, (
  SELECT max(event_id) FROM spans
  WHERE event_id >= k.writer_key::bigint << 32 AND event_id < (k.writer_key::bigint + 1) << 32
) FROM firehose_writer_keys AS k WHERE k.run_id = %s
"""
_REPLICATION_ROWS = """
SELECT r.pid, s.slot_name,
  extract(epoch FROM r.write_lag) * 1000, extract(epoch FROM r.flush_lag) * 1000,
  extract(epoch FROM r.replay_lag) * 1000, r.state
FROM pg_stat_replication AS r LEFT JOIN pg_replication_slots AS s ON s.active_pid = r.pid
"""
_REPLICA_POSITION = """
SELECT pg_last_wal_replay_lsn(), extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--replica and its port, directory and catch-up bound."""
    parser.add_argument(
        "--replica",
        action="store_true",
        default=False,
        include_in_web_ui=False,
        help="With the embedded PostgreSQL: a streaming hot-standby replica of it for the run (pg_basebackup through "
        "a replication slot, kept in --replica-data-dir and reused), which the analysts query while the writers "
        "stay on the primary; the summary gives its lag and how long rows take to become visible there.",
    )
    parser.add_argument(
        "--replica-port",
        type=int,
        default=None,
        include_in_web_ui=False,
        help="Port of the replica (default: a free one).",
    )
    parser.add_argument(
        "--replica-data-dir",
        default=None,
        include_in_web_ui=False,
        help="Data directory of the replica (default: the embedded data directory's name + '-standby', beside it).",
    )
    parser.add_argument(
        "--replica-catch-up",
        type=float,
        default=CATCH_UP_S,
        include_in_web_ui=False,
        help="Seconds the run waits at its end for the analysts' replica to replay everything the primary committed "
        "(default: %(default)s); past it the summary says how far behind it was.",
    )


def check_options(options: argparse.Namespace, given: dict[str, str]) -> None:
    """--replica needs the embedded server, and is the analysts' address: refused beside --pg-dsn or --analyst-dsn."""
    if not getattr(options, "replica", False):
        return
    for service, flag in (("postgres", "--pg-dsn (or the PG* variables)"), ("analysts", "--analyst-dsn")):
        if service in given:
            raise Refused(f"--replica starts a replica of the embedded PostgreSQL: it cannot go with {flag}", "replica")


def is_replica_of(primary: str, analysts: str) -> bool:
    """Whether the analysts' server is a standby of the primary; a standby of another system is refused."""
    try:
        with psycopg.connect(analysts, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return False
            standby_of = _system_identifier(conn)
        with psycopg.connect(primary, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            primary_id = _system_identifier(conn)
    except psycopg.OperationalError:
        return False  # unreachable: the analysts' pool says so when they start
    if standby_of != primary_id:
        raise Refused(
            f"--analyst-dsn {redact(analysts)} is a standby of another system (system identifier {standby_of}, the "
            f"target's is {primary_id}): give a replica of the target, or leave --analyst-dsn out",
            "analyst_dsn",
        )
    return True


def _system_identifier(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]


def lsn(text: str | None) -> int | None:
    """A WAL position ("16/B374D848") as bytes since the start of WAL."""
    if text is None:
        return None
    high, low = str(text).split("/")
    return (int(high, 16) << 32) + int(low, 16)


def percentiles(values: list[float]) -> dict:
    """p50/p95/p99/max of `values` (nearest rank), None each when there are none."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"count": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1]}


class ReplicaWatch:
    """Samples the replica's lag and visible freshness from `start` to `finish` (greenlets of the master)."""

    def __init__(self, primary: str, replica: str, run_id: int, how: str, backup: dict | None = None) -> None:
        """`how`: "--replica" (started by the run) or "--analyst-dsn" (the user's standby)."""
        self.primary = primary
        self.replica = replica
        self.run_id = run_id
        self.how = how
        self.backup = backup
        self.started = time.monotonic()
        self.lag: dict[str, list[float]] = {"write_ms": [], "flush_ms": [], "replay_ms": [], "behind_bytes": []}
        self.lag_source = "pg_stat_replication"
        self.freshness_ms: list[float] = []
        self.on_primary_ms: list[float] = []
        self.pending: list[tuple[float, int, int]] = []
        """(when the primary showed it, writer key, event id) not seen on the replica yet."""
        self.went_away: dict | None = None
        self.end: dict | None = None
        self.hot_standby_feedback: str | None = None
        self.latest: dict[str, int] = {}
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        try:
            with psycopg.connect(self.replica, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                self.hot_standby_feedback = conn.execute("SHOW hot_standby_feedback").fetchone()[0]
        except psycopg.OperationalError as error:
            self._gone(error)
        self._greenlets = [gevent.spawn(self._sample_lag_forever), gevent.spawn(self._probe_freshness_forever)]

    def gauges(self) -> dict[str, int]:
        """The latest lag, for the live view (progress line, Telemetry tab)."""
        return dict(self.latest)

    def _gone(self, error: Exception) -> None:
        """A sampling connection failed: the replica went away unless it still answers (the error was the
        primary's, or a connection slow to open on a loaded machine: sampled again, not a lost replica)."""
        if self.went_away is not None:
            return
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if self._replica_answers():
            logger.warning("the replica's sampling was interrupted (%s); the replica answers: sampling again", message)
            return
        self.went_away = {"at_s": round(time.monotonic() - self.started, 1), "error": message}
        logger.error("the analysts' replica went away: %s", message)

    def _replica_answers(self) -> bool:
        try:
            with psycopg.connect(self.replica, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def _sample_lag_forever(self) -> None:
        while True:
            try:
                with (
                    psycopg.connect(self.primary, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as primary,
                    psycopg.connect(self.replica, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as replica,
                ):
                    slot = replica.execute("SELECT slot_name FROM pg_stat_wal_receiver").fetchone()
                    while True:
                        self.sample_lag(primary, replica, slot[0] if slot else None)
                        gevent.sleep(LAG_SAMPLE_S)
            except psycopg.OperationalError as error:
                self._gone(error)
            gevent.sleep(LAG_SAMPLE_S)

    def sample_lag(self, primary: psycopg.Connection, replica: psycopg.Connection, slot: str | None) -> None:
        """One sample: the replica's row of pg_stat_replication, and the bytes it has still to replay."""
        current = lsn(primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
        rows = primary.execute(_REPLICATION_ROWS).fetchall()
        replayed, since_replay_ms = replica.execute(_REPLICA_POSITION).fetchone()
        behind = max(current - (lsn(replayed) or current), 0)
        row = next((row for row in rows if slot is not None and row[1] == slot), rows[0] if len(rows) == 1 else None)
        visible = row is not None and row[5] is not None  # a role without the right sees the row, empty
        if visible:
            self.lag_source = "pg_stat_replication"
            # Empty lag columns: the replica caught up and the primary is idle.
            write, flush, replay = (float(value) if value is not None else 0.0 for value in row[2:5])
            self.lag["write_ms"].append(write)
            self.lag["flush_ms"].append(flush)
        else:
            self.lag_source = "the replica's replay position and timestamp (pg_stat_replication not visible)"
            replay = float(since_replay_ms or 0.0) if behind else 0.0
        self.lag["replay_ms"].append(replay)
        self.lag["behind_bytes"].append(behind)
        self.latest = {"replica_replay_lag_ms": round(replay), "replica_behind_bytes": behind}

    def _probe_freshness_forever(self) -> None:
        while True:
            try:
                with (
                    psycopg.connect(self.primary, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as primary,
                    psycopg.connect(self.replica, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as replica,
                ):
                    newest: dict[int, int] = {}
                    while True:
                        self.probe_freshness(primary, replica, newest)
                        gevent.sleep(FRESHNESS_S)
            except psycopg.OperationalError as error:
                self._gone(error)
            gevent.sleep(FRESHNESS_S)

    def probe_freshness(self, primary: psycopg.Connection, replica: psycopg.Connection, newest: dict) -> None:
        """One round: what the primary shows now, then which pending rows the replica (and the primary) shows."""
        shown_at = time.monotonic()
        for key, event_id in primary.execute(_NEWEST_PER_KEY, [self.run_id]).fetchall():
            if event_id is not None and event_id > newest.get(key, -1):
                newest[key] = event_id
                self.pending.append((shown_at, key, event_id))
        if not self.pending:
            return
        primary.execute(_NEWEST_PER_KEY, [self.run_id]).fetchall()  # there every pending row is visible at once
        self.on_primary_ms.append((time.monotonic() - shown_at) * 1000)  # what the probe itself takes
        on_replica = dict(replica.execute(_NEWEST_PER_KEY, [self.run_id]).fetchall())
        seen_at = time.monotonic()
        waiting = []
        for shown, key, event_id in self.pending:
            if (on_replica.get(key) or -1) >= event_id:
                self.freshness_ms.append((seen_at - shown) * 1000)
            else:
                waiting.append((shown, key, event_id))
        self.pending = waiting

    def finish(self, timeout_s: float) -> None:
        """Stop sampling; wait at most `timeout_s` for the replica to replay the primary's current position."""
        for greenlet in self._greenlets:
            greenlet.kill()
        started = time.monotonic()
        behind: int | None = None
        try:
            with (
                psycopg.connect(self.primary, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as primary,
                psycopg.connect(self.replica, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as replica,
            ):
                target = lsn(primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
                newest: dict[int, int] = {}
                while True:
                    self.probe_freshness(primary, replica, newest)  # rows of the tail, seen as they arrive
                    replayed = lsn(replica.execute("SELECT pg_last_wal_replay_lsn()").fetchone()[0]) or 0
                    behind = max(target - replayed, 0)
                    if behind == 0 or time.monotonic() - started >= timeout_s:
                        break
                    gevent.sleep(FRESHNESS_S)
        except psycopg.OperationalError as error:
            self._gone(error)
        self.end = {
            "caught_up": behind == 0,
            "waited_s": round(time.monotonic() - started, 2),
            "behind_bytes": behind,
            "timeout_s": timeout_s,
        }

    def report(self) -> dict:
        """The summary's "replica" section."""
        lag = {name: percentiles(values) for name, values in self.lag.items()}
        return {
            "dsn": redact(self.replica),
            "how": self.how,
            "backup": self.backup,
            "hot_standby_feedback": self.hot_standby_feedback,
            "lag": {"source": self.lag_source, "sample_s": LAG_SAMPLE_S, **lag},
            "visible_freshness": {
                **{f"{name}_ms": value for name, value in percentiles(self.freshness_ms).items() if name != "count"},
                "samples": len(self.freshness_ms),
                "unseen_at_end": len(self.pending),
                "resolution_ms": FRESHNESS_S * 1000,
                "probe_on_primary_p50_ms": percentiles(self.on_primary_ms)["p50"],
                "method": "each writer key's newest span id, polled on the primary and then on the replica every "
                f"{FRESHNESS_S * 1000:g} ms: from the poll that showed it on the primary to the one that showed it "
                "on the replica (short by up to the poll interval)",
            },
            "went_away": self.went_away,
            "end": self.end,
        }


def render(section: dict) -> list[str]:
    """The summary's lines for the replica."""
    lag, fresh, end = section["lag"], section["visible_freshness"], section["end"]
    lines = [
        f"replica ({section['how']}, {section['dsn']}, hot_standby_feedback {section['hot_standby_feedback']}): "
        f"replay lag p50/p95/max {_ms(lag['replay_ms']['p50'])} / {_ms(lag['replay_ms']['p95'])} / "
        f"{_ms(lag['replay_ms']['max'])} ms, behind p95/max {_bytes(lag['behind_bytes']['p95'])} / "
        f"{_bytes(lag['behind_bytes']['max'])} ({lag['behind_bytes']['count']} samples, {lag['source']})",
        f"visible on the replica after commit p50/p95/p99 {_ms(fresh['p50_ms'])} / {_ms(fresh['p95_ms'])} / "
        f"{_ms(fresh['p99_ms'])} ms over {fresh['samples']:,} samples (resolution {fresh['resolution_ms']:g} ms; "
        f"the probe on the primary p50 {_ms(fresh['probe_on_primary_p50_ms'])} ms)",
    ]
    if backup := section["backup"]:
        lines.append(
            f"replica made for this run: pg_basebackup {backup['seconds']:.1f} s, {backup['bytes'] / 1e6:,.0f} MB"
        )
    if end is not None:
        lines.append(
            f"replica at the end: caught up in {end['waited_s']:.2f} s"
            if end["caught_up"]
            else f"replica at the end: NOT caught up after {end['waited_s']:.1f} s, "
            f"{_bytes(end['behind_bytes'])} behind"
        )
    if gone := section["went_away"]:
        lines.append(f"REPLICA WENT AWAY {gone['at_s']:.1f} s into the run: {gone['error']}")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value / 1e6:,.1f} MB" if value >= 1e6 else f"{value:,.0f} B"
