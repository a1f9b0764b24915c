"""A loaded dataset for read measurements: N engineers' telemetry over a history, recorded so it is reused.

Loading the reference's 500 users takes a minute or more; `firehose_datasets` (created here, one row per dataset
name) records what was loaded (users, history, seed, newest data's time, row counts), so a later run finds the
same shape already there and skips the load. Row counts are checked too: a sweep that emptied the tables
invalidates the record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from locust.event import Events

from firehose.run.records import open_run, register_writer_key
from telemetry.generator import TRACES_PER_ENGINEER, EngineerTelemetry, EventIds, TraceRows, engineer_seed
from telemetry.layout import TABLES
from telemetry.pools import CATALOGUE_SEED, Pools
from writers.copy import CopyWriter

DATASETS_TABLE = """
CREATE TABLE IF NOT EXISTS firehose_datasets (
    name        text PRIMARY KEY,
    users       integer NOT NULL,
    history_s   bigint  NOT NULL,
    seed        bigint  NOT NULL,
    anchor_us   bigint  NOT NULL,
    writer_key  bigint  NOT NULL,
    spans       bigint  NOT NULL,
    metrics     bigint  NOT NULL,
    logs        bigint  NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Dataset:
    """What was loaded: its shape, the newest data's time (the queries' window end) and the rows per table."""

    users: int
    history_s: int
    seed: int
    anchor_us: int
    writer_key: int
    spans: int
    metrics: int
    logs: int

    def same_shape(self, users: int, history_s: int, seed: int) -> bool:
        return (self.users, self.history_s, self.seed) == (users, history_s, seed)

    @property
    def rows(self) -> int:
        return self.spans + self.metrics + self.logs


def recorded(conn: psycopg.Connection, name: str) -> Dataset | None:
    """The dataset recorded under `name`, if the tables still hold exactly its rows."""
    conn.execute(DATASETS_TABLE)
    row = conn.execute(
        "SELECT users, history_s, seed, anchor_us, writer_key, spans, metrics, logs FROM firehose_datasets"
        " WHERE name = %s",
        [name],
    ).fetchone()
    if row is None:
        return None
    dataset = Dataset(*row)
    counts = tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)
    return dataset if counts == (dataset.spans, dataset.metrics, dataset.logs) else None


def load(conninfo: str, name: str, users: int, history_s: int, seed: int, anchor_us: int) -> Dataset:
    """Empty the telemetry tables, load `users` engineers' telemetry with COPY, and record it under `name`."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(DATASETS_TABLE)
        conn.execute("DELETE FROM firehose_datasets")  # whatever was recorded describes tables about to be emptied
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    ids, pools = own_ids(conninfo, seed, name), Pools.cached(CATALOGUE_SEED)
    counts = dict.fromkeys(TABLES, 0)
    writer = CopyWriter(conninfo, Events())
    for ordinal in range(1, users + 1):
        telemetry = EngineerTelemetry(pools, engineer_seed(seed, 0, ordinal), anchor_us=anchor_us, window_s=history_s)
        for rows in telemetry.traces(ids):
            writer.write(rows)
            for table in TABLES:
                counts[table] += len(getattr(rows, table))
    writer.close()
    dataset = Dataset(users, history_s, seed, anchor_us, ids.writer_key, **counts)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        fields = asdict(dataset)
        conn.execute(
            f"INSERT INTO firehose_datasets (name, {', '.join(fields)})"
            f" VALUES (%(name)s, {', '.join(f'%({field})s' for field in fields)})",
            {"name": name, **fields},
        )
    return dataset


def own_ids(conninfo: str, seed: int, label: str) -> EventIds:
    """Event ids of a run of its own (a writer key of its own): loaded rows never share ids with a Locust run's."""
    return EventIds(register_writer_key(conninfo, open_run(conninfo, seed, label)))


def sample(seed: int, anchor_us: int, history_s: int, rows: int, ids: EventIds) -> list[TraceRows]:
    """At least `rows` rows of fresh telemetry (whole traces), numbered from `ids`."""
    pools = Pools.cached(CATALOGUE_SEED)
    traces: list[TraceRows] = []
    total, ordinal = 0, 0
    while total < rows:
        ordinal += 1
        telemetry = EngineerTelemetry(
            pools, engineer_seed(seed, 1, ordinal), anchor_us=anchor_us, traces=TRACES_PER_ENGINEER, window_s=history_s
        )
        for trace in telemetry.traces(ids):
            traces.append(trace)
            total += len(trace)
            if total >= rows:
                break
    return traces
