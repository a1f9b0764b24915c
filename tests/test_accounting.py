"""The summary's accounting of processes: survivors reconcile per writer key, a process with no final report is
named apart with what is known of it, and the verdict is INCOMPLETE, never OK (the JSON follows the schema); each
verdict has its exit code; a worker takes part in its own master's runs only.

The end-to-end cases (a worker killed -9, one past --drain-timeout) are in tests/test_worker_loss.py.
"""

import time

from firehose.run.exit_codes import ExitCode, describe, of_failures, of_verdict
from firehose.run.messages import RunStart
from firehose.run.process_run import another_runs
from firehose.run.summary import RunSummary
from telemetry.counts import GeneratedCounts
from tests.conftest import validate_summary
from writers.base import Tally


def _report(writer_key: int, received: int, acknowledged: int) -> dict:
    """A drained process's final report, its one writer having received and committed spans."""
    tally = Tally()
    tally.received["spans"] = received
    tally.acknowledge("spans", acknowledged, acknowledged * 100)
    return {
        "run_id": 1,
        "writer_key": writer_key,
        "process": f"firehose worker {writer_key}",
        "writing_since": time.time() - 10,
        "writers": {"CopyWriter": tally.as_dict()},
        "generated_counts": GeneratedCounts(()).as_dict(),
        "shared": {},
    }


def _dead(writer_key: int, received: int | None, state: str = "missing") -> dict:
    """What the master's ledger knows of a process with no final report (firehose.run.worker_ledger)."""
    return {
        "worker": f"firehose worker {writer_key}",
        "worker_index": writer_key,
        "writer_key": writer_key,
        "state": state,
        "reason": "missing: its heartbeats stopped (process killed or unreachable)",
        "last_report_at": time.time() - 3 if received is not None else None,
        "received": received,
        "acknowledged": 0 if received is not None else None,
    }


def _summary(reports: list[dict], unaccounted: list[dict], in_database: dict[int, int], **extra) -> RunSummary:
    now = time.time()
    return RunSummary(
        run_id=1,
        seed=1,
        database="host=127.0.0.1",
        started_at=now - 12,
        ended_at=now,
        reports=reports,
        in_database_by_key={key: {"spans": rows, "metrics": 0, "logs": 0} for key, rows in in_database.items()},
        unaccounted=unaccounted,
        **extra,
    )


def test_survivors_reconcile_and_a_dead_process_is_named_apart():
    summary = _summary([_report(1, 500, 500)], [_dead(2, 300), _dead(3, None)], {1: 500, 2: 120, 3: 40})
    figures = validate_summary(summary.as_dict())
    assert figures["run"]["verdict"] == "INCOMPLETE" and summary.verdict() == "INCOMPLETE"
    # The survivor's rows only: the dead ones' committed rows do not hide what died with them.
    assert figures["events"]["generated"] == figures["events"]["in_database"] == 500
    assert figures["events"]["lost"] == 0
    assert figures["processes"] == [
        {"process": "firehose worker 1", "writer_key": 1, "generated": 500, "acknowledged": 500, "in_database": 500,
         "lost": 0},
    ]  # fmt: skip
    dead, silent = figures["unaccounted"]
    assert dead["in_database"] == 120 and dead["lost_with_it_at_least"] == 180
    assert silent["in_database"] == 40 and silent["lost_with_it_at_least"] is None
    text = summary.render()
    assert "UNACCOUNTED firehose worker 2 (writer key 2): missing" in text
    assert "lost with it: at least 180" in text and "lost with it: unknown" in text
    assert text.endswith("[INCOMPLETE]") and "of the 1 process that reported" in text


def test_lost_with_it_is_a_lower_bound_never_negative():
    # Its rows committed after its last report: more in the database than it had reported received.
    summary = _summary([_report(1, 10, 10)], [_dead(2, 100)], {1: 10, 2: 130})
    (dead,) = validate_summary(summary.as_dict())["unaccounted"]
    assert dead["lost_with_it_at_least"] == 0


def test_a_live_worker_past_the_drain_timeout_has_unflushed_rows_not_lost_ones():
    summary = _summary([], [_dead(1, 100, state="live")], {1: 60})
    assert "unflushed when counted: at least 40" in summary.render()
    assert validate_summary(summary.as_dict())["generated_counts"]["traces"] == 0  # no process reported


def test_verdicts():
    assert _summary([_report(1, 10, 10)], [], {1: 10}).verdict() == "OK"
    assert _summary([_report(1, 10, 8)], [], {1: 8}).verdict() == "MISMATCH"
    assert _summary([_report(1, 10, 10)], [_dead(2, 5)], {1: 10, 2: 5}, stopped_by="boom").verdict() == "STOPPED"


def test_each_verdict_has_its_exit_code_and_failures_keep_theirs_apart():
    codes = {verdict: of_verdict(verdict) for verdict in ("OK", "MISMATCH", "INCOMPLETE", "STOPPED")}
    assert codes == {"OK": 0, "MISMATCH": 1, "INCOMPLETE": 3, "STOPPED": 4}
    assert len(set(ExitCode)) == len(ExitCode) and ExitCode.BAD_SETTING == 2
    # Locust's default --exit-code-on-error (1) would read as rows lost: failed requests get a code of their own.
    assert of_failures(1) == ExitCode.FAILURES and of_failures(0) == 0 and of_failures(7) == 7
    assert describe(3) == "3: INCOMPLETE" and describe(-9) == "-9"


def test_a_worker_takes_part_in_its_own_masters_runs_only():
    run = RunStart(run_id=7, seed=1, anchor_us=0, addresses={}, master="host-a pid 100")
    assert another_runs(run, None, None, 1) is None  # a worker started on its own: its first master
    assert another_runs(run, "host-a pid 100", None, 1) is None  # the same master's next run (web UI)
    other = another_runs(run, "host-b pid 200", None, 1)
    assert other == "it serves the master host-b pid 200, not host-a pid 100: start a worker for this run"
    assert another_runs(run, None, 100, 100) is None  # forked by --processes, its master alive
    orphan = another_runs(run, None, 100, 1)  # its master died: another run's master took the port
    assert orphan == "the master that started it (pid 100) is gone: it belongs to a run that ended"
