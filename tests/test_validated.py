"""Validated COPY: the row checks (pure Python), then the writer and a Locust run against a real PostgreSQL.

Nothing may be lost: every row handed to the writer ends up in its table or in the quarantine, with
a reason, exactly as it was received.
"""

import argparse

import psycopg
import pytest
from locust.event import Events

from telemetry.faults import KINDS, Faults, corrupt_row
from telemetry.generator import EngineerTelemetry, EventIds, TraceRows
from telemetry.layout import COLUMNS
from tests.conftest import load_summary, run_locust
from writers.checks import SUSPICIOUS_ROW_BYTES, Triage, check_row
from writers.validated import ValidatedCopyWriter


@pytest.fixture(scope="module")
def traces(pools):
    return list(EngineerTelemetry(pools, 5, traces=12, anchor_us=1_750_000_000_000_000).traces(EventIds(31)))


@pytest.fixture(scope="module")
def sample(traces):
    """One generated row per table (logs' attributes hold COPY-escaped backslashes: stack traces)."""
    return {table: getattr(traces[0], table)[1] for table in COLUMNS}


def _with(table: str, line: str, column: str, value: str) -> str:
    """`line` with one column's COPY text replaced."""
    values = line[:-1].split("\t")
    values[COLUMNS[table].index(column)] = value
    return "\t".join(values) + "\n"


# --- the checks, no database -------------------------------------------------------------------


def test_generated_rows_are_clean(traces):
    for table in COLUMNS:
        lines = [line for trace in traces for line in getattr(trace, table)]
        triage = Triage(table)
        triage.add(lines)
        assert triage.clean == [line.encode() for line in lines]
        assert not triage.suspicious and not triage.malformed


@pytest.mark.parametrize(
    ("table", "column", "value", "reason"),
    [
        ("logs", "attributes", '{"a":1,}', "attributes: invalid JSON at char 6 (trailing comma is not allowed)"),
        ("spans", "attributes", '["a"]', "attributes: JSON array, not an object"),
        ("metrics", "attributes", '{"a":"\\\\u0000"}', "attributes: JSON \\u0000 escape (jsonb cannot store NUL)"),
        ("logs", "body", "half\x00way", "NUL byte in column body"),
        ("logs", "service_name", "\\N", "service_name: NULL in a NOT NULL column"),
        ("spans", "start_time", "\\N", "start_time: NULL in a NOT NULL column"),
        ("logs", "event_id", "12a", "event_id: not a non-negative bigint: '12a'"),
        ("logs", "event_id", str(1 << 63), f"event_id: '{1 << 63}' out of range for bigint"),
        ("logs", "severity_number", "40000", "severity_number: '40000' out of range for smallint"),
        ("spans", "kind", "two", "kind: not a smallint: 'two'"),
        ("metrics", "value", "NaN", "value: not a finite number: 'NaN'"),
        ("metrics", "value", "1e400", "value: '1e400' out of range for double precision"),
        ("metrics", "time", "2025-01-01 10:00:00", "time: not a timestamp with time zone: '2025-01-01 10:00:00'"),
        ("spans", "end_time", "2025-13-01 10:00:00+00", "end_time: not a timestamp with time zone"),
        ("spans", "trace_id", "ABCDEF" * 5 + "AB", "trace_id: not 32 lowercase hex digits"),
        ("spans", "parent_span_id", "1234", "parent_span_id: not 16 lowercase hex digits: '1234'"),
        ("logs", "body", "a \\x41 escape", "body: unsupported COPY escape \\x"),
        ("logs", "body", "raw\rreturn", "body: raw newline or carriage return"),
        ("logs", "body", "lone \ud800 surrogate", "not valid UTF-8: lone surrogate at char"),
    ],
)
def test_malformed_rows_get_their_reason(sample, table, column, value, reason):
    problem = check_row(table, _with(table, sample[table], column, value))
    assert problem is not None and not problem.suspicious
    assert problem.reason.startswith(reason)


def test_row_layout_problems(sample):
    line = sample["logs"]
    assert check_row("logs", line[:-1]).reason == "row does not end with a newline"
    assert check_row("logs", line.replace("\t", "\t\t", 1)).reason == "expected 9 columns, got 10"
    assert check_row("logs", line.split("\t", 1)[1]).reason == "expected 9 columns, got 8"


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("name", "bell\x07", "name: unusual character U+0007"),
        ("service_name", "api\u202egateway", "service_name: unusual character U+202E"),
        ("status_message", "broken \ufffd decode", "status_message: unusual character U+FFFD"),
        ("name", "x" * SUSPICIOUS_ROW_BYTES, "row of "),
    ],
)
def test_suspicious_rows_pass_but_are_flagged(sample, column, value, reason):
    problem = check_row("spans", _with("spans", sample["spans"], column, value))
    assert problem is not None and problem.suspicious
    assert problem.reason.startswith(reason)


def test_nullable_columns_and_escapes_are_fine(sample):
    assert check_row("metrics", _with("metrics", sample["metrics"], "trace_id", "\\N")) is None
    assert check_row("spans", _with("spans", sample["spans"], "status_message", "\\N")) is None
    assert check_row("logs", _with("logs", sample["logs"], "body", "two\\nlines\\tand a \\\\ backslash")) is None
    assert check_row("spans", _with("spans", sample["spans"], "name", "café ☕")) is None


def test_triage_keeps_order_and_refuses_a_second_event_id(sample, traces):
    lines = traces[1].logs
    dup = _with("logs", lines[3], "event_id", lines[1].split("\t", 1)[0])
    odd = _with("logs", lines[4], "body", "bell\x07")
    bad = _with("logs", lines[5], "body", "lone \udc80 surrogate")
    triage = Triage("logs")
    triage.add([*lines[:3], dup])
    triage.add([odd, bad, *lines[6:]])  # slice by slice, as the writer feeds it
    assert triage.clean == [line.encode() for line in (*lines[:3], *lines[6:])]
    assert triage.suspicious == [(odd.encode(), "body: unusual character U+0007")]
    event_id = lines[1].split("\t", 1)[0]
    assert triage.malformed[0] == (dup.encode(), f"event_id {event_id} appears twice in the batch")
    assert triage.malformed[1][0] == bad.encode("utf-8", "surrogatepass")  # the bytes as received


# --- faults, no database -----------------------------------------------------------------------


def test_faults_are_deterministic_and_keep_every_row(traces):
    faults = Faults(0.3, seed=42)
    first = [faults.corrupt(trace) for trace in traces]
    replay, other = Faults(0.3, seed=42), Faults(0.3, seed=43)
    assert first == [replay.corrupt(trace) for trace in traces]
    assert first != [other.corrupt(trace) for trace in traces]
    for trace, corrupted in zip(traces, first, strict=True):
        assert [len(getattr(corrupted, t)) for t in COLUMNS] == [len(getattr(trace, t)) for t in COLUMNS]
    changed = sum(
        a != b
        for trace, c in zip(traces, first, strict=True)
        for t in COLUMNS
        for a, b in zip(getattr(trace, t), getattr(c, t), strict=True)
    )
    assert 0 < changed < sum(map(len, traces))
    assert Faults(0.0, seed=42).corrupt(traces[0]) is traces[0]


@pytest.mark.parametrize("kind", KINDS)
def test_each_fault_is_caught_where_it_should_be(sample, traces, kind):
    for table, line in sample.items():
        donor = getattr(traces[1], table)[0]
        problem = check_row(table, corrupt_row(table, line, kind, donor=donor))
        if kind == "duplicate_id":  # fine alone: refused by Triage within a batch, by the server across batches
            assert problem is None, (table, problem)
        else:
            assert problem is not None and not problem.suspicious, (table, kind)


def test_duplicates_take_the_engineers_first_event_id(traces):
    faults = Faults(1.0, seed=1)
    corrupted = [faults.corrupt(trace) for trace in traces[:3]]
    first_id = _event_id(traces[0].logs[0])
    for original, broken in zip(traces[:3], corrupted, strict=True):
        for before, after in zip(original.logs, broken.logs, strict=True):
            assert _event_id(after) in (_event_id(before), first_id)
    assert sum(_event_id(line) == first_id for trace in corrupted[1:] for line in trace.logs) > 0


def test_malformed_share_option_is_a_share():
    parser = argparse.ArgumentParser()
    ValidatedCopyWriter.add_arguments(parser)
    assert parser.parse_args(["--malformed-share", "0.01"]).malformed_share == 0.01
    with pytest.raises(SystemExit):
        parser.parse_args(["--malformed-share", "2"])


# --- the writer against PostgreSQL -------------------------------------------------------------


def _writer(dsn, **options):
    events = Events()
    requests = []
    events.request.add_listener(lambda **kw: requests.append(kw))
    return ValidatedCopyWriter(dsn, events, run_id=7, **options), requests


def _quarantine(dsn) -> dict[bytes, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT row_data, reason, run_id FROM quarantine").fetchall()
    assert {run_id for _, _, run_id in rows} <= {7}
    return {bytes(data): reason for data, reason, _ in rows}


def _stored(dsn, table) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {event_id for (event_id,) in conn.execute(f"SELECT event_id FROM {table}")}


def _event_id(line: str) -> int:
    return int(line.split("\t", 1)[0])


@pytest.mark.slow
def test_malformed_rows_are_quarantined_and_no_good_row_is_lost(dsn, traces):
    writer, requests = _writer(dsn, batch_size=10_000, pool_size=2)
    committed = traces[0]
    writer.write(committed)
    writer.flush()  # committed: a later row reusing one of these event_ids, only the server can refuse

    second = TraceRows(spans=list(traces[1].spans), metrics=traces[1].metrics, logs=list(traces[1].logs))
    logs, spans = second.logs, second.spans
    broken = [  # (table, index, broken row, what its quarantine reason must start with)
        ("logs", 0, corrupt_row("logs", logs[0], "bad_json"), "attributes: invalid JSON at char"),
        ("logs", 1, corrupt_row("logs", logs[1], "nul_byte"), "NUL byte in column body"),
        ("logs", 2, corrupt_row("logs", logs[2], "null_required"), "service_name: NULL in a NOT NULL column"),
        (
            "logs", 3, corrupt_row("logs", logs[3], "duplicate_id", donor=committed.logs[0]),
            f'duplicate key value violates unique constraint "logs_pkey" '
            f"(Key (event_id)=({_event_id(committed.logs[0])}) already exists.) [SQLSTATE 23505]",
        ),
        ("logs", 4, corrupt_row("logs", logs[4], "impossible_date"), "time: '"),
        (
            "spans", 1, corrupt_row("spans", spans[1], "duplicate_id", donor=spans[0]),
            f"event_id {_event_id(spans[0])} appears twice in the batch",
        ),
        (  # suspicious, so sent by INSERT, where ON CONFLICT finds its event_id already stored
            "spans", 2, _with("spans", committed.spans[2], "name", "bell\x07"),
            f"event_id {_event_id(committed.spans[2])} already stored (ON CONFLICT DO NOTHING)",
        ),
    ]  # fmt: skip
    for table, index, row, _reason in broken:
        getattr(second, table)[index] = row
    spans[3] = suspicious = _with("spans", spans[3], "status_message", "odd \u202e text")  # valid: by INSERT
    writer.write(second)
    for trace in traces[2:]:
        writer.write(trace)
    writer.close()

    quarantined = _quarantine(dsn)
    assert len(quarantined) == len(broken) == sum(writer.tally.quarantined.values())
    for _table, _index, row, reason in broken:
        assert quarantined[row.encode()].startswith(reason)  # keyed by row_data: the bytes as received
    assert quarantined[broken[4][2].encode()].endswith("is not a real date")

    broken_rows = {row for _table, _index, row, _reason in broken}
    for table in COLUMNS:
        good = [line for trace in (committed, second, *traces[2:]) for line in getattr(trace, table)]
        good = [line for line in good if line not in broken_rows]
        assert _stored(dsn, table) == {_event_id(line) for line in good}, table  # no good row lost
        assert writer.tally.acknowledged[table] == len(good)
        assert writer.tally.received[table] == writer.tally.acknowledged[table] + writer.tally.quarantined[table]
    with psycopg.connect(dsn) as conn:  # the INSERT path stores what COPY would have
        stored = conn.execute("SELECT status_message FROM spans WHERE event_id = %s", [_event_id(suspicious)])
        assert stored.fetchone() == ("odd \u202e text",)
    assert not writer.tally.failed

    failures = [r for r in requests if r["exception"] is not None]
    assert {(r["request_type"], r["name"]) for r in failures} == {("COPY", "logs"), ("INSERT", "spans")}
    assert {type(r["exception"]).__name__ for r in failures} == {"UniqueViolation", "AlreadyStored"}
    successes = {(r["request_type"], r["name"]) for r in requests if r["exception"] is None}
    assert {("COPY", "spans"), ("COPY", "logs"), ("INSERT", "spans"), ("INSERT", "quarantine")} <= successes


@pytest.mark.slow
def test_a_refusal_that_names_no_line_is_bisected(dsn, traces):
    """A deferred constraint fails at COMMIT, naming no COPY line: the batch is halved until the culprits are alone."""
    poison = """
    CREATE FUNCTION firehose_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.body LIKE 'poison%' THEN
            RAISE EXCEPTION 'poisoned log %', NEW.event_id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER firehose_test_poison AFTER INSERT ON logs
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION firehose_test_poison();
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(poison)
    try:
        lines = [line for trace in traces[:4] for line in trace.logs]
        for index in (5, 17):
            lines[index] = _with("logs", lines[index], "body", f"poison {index}")
        writer, requests = _writer(dsn, batch_size=10_000, pool_size=1)
        writer.write(TraceRows(logs=lines))
        writer.close()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER firehose_test_poison ON logs; DROP FUNCTION firehose_test_poison()")

    quarantined = _quarantine(dsn)
    assert set(quarantined) == {lines[5].encode(), lines[17].encode()}
    for index in (5, 17):
        assert quarantined[lines[index].encode()] == f"poisoned log {_event_id(lines[index])} [SQLSTATE 23514]"
    assert _stored(dsn, "logs") == {_event_id(line) for i, line in enumerate(lines) if i not in (5, 17)}
    assert writer.tally.acknowledged["logs"] == len(lines) - 2 and writer.tally.quarantined["logs"] == 2
    assert sum(r["exception"] is not None for r in requests) > 2  # halving took several refused COPYs


# --- a real Locust run ------------------------------------------------------------------------


@pytest.mark.slow
def test_headless_run_with_malformed_rows_reconciles(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "ValidatedCopyEngineer", "-u", "4", "-r", "4", "-t", "15s", "--traces-per-engineer", "15",
        "--malformed-share", "0.01", "--seed", "11", "--pg-dsn", dsn, "--summary-json", str(path),
        "--exit-code-on-error", "0",  # refused COPY attempts are Locust failures, expected here
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(path)
    events = summary["events"]
    assert events["lost"] == 0 and events["failed"] == 0 and events["duplicates"] == 0
    assert events["quarantined"] > 0
    assert events["in_database"] + events["quarantined"] == events["generated"] > 4 * 15 * 10
    with psycopg.connect(dsn) as conn:
        kept = conn.execute("SELECT count(*) FROM quarantine WHERE run_id = %s", [summary["run"]["run_id"]])
        assert kept.fetchone()[0] == events["quarantined"]
    assert "quarantined = " in result.stdout and "[OK]" in result.stdout
