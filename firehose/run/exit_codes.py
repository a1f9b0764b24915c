"""What a run's exit code says, for a user's CI: one table, here and in docs/running.md ("Exit codes").

Every way a run ends sets one of these (a feature that adds a way to end adds its code here and to that table).
A run that wrote a summary exits with its verdict's code (`of_verdict`), whatever Locust counted as failed
requests: a round trip a lost connection broke and a retry repeated is not a failure of the run.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    """Every event acknowledged is in the database once (retried round trips included: they are not failures)."""
    LOST_OR_DUPLICATED = 1
    """Rows lost or stored twice: the reconciliation failed."""
    BAD_SETTING = 2
    """A setting refused before anything started (one line naming the option; nothing recorded, nothing left), or a
    worker refused (it cannot reach the run's addresses, or it belongs to another run)."""
    INCOMPLETE = 3
    """A process of the run sent no final report (e.g. a worker killed): its rows cannot be reconciled."""
    STOPPED = 4
    """Stopped by a guard or an error of the setup (disk budget or floor, outage deadline, a revoked privilege)."""
    FAILURES = 5
    """The rows reconciled, but requests failed for another reason than a lost connection (an analyst's query, rows
    the server refused) or a user's code raised: Locust's Failures and Exceptions tabs. Locust's own rule, with its
    default code 1 moved here (1 says rows were lost); `--exit-code-on-error N` (N other than 1) still wins."""
    REPLICA_LOST = 6
    """The rows reconciled, but the analysts' replica (--replica, or an --analyst-dsn standby) went away during the run:
    its queries failed from then on (counted in the summary), and what it served was no longer the run's data."""
    CHECKS_FAILED = 7
    """The rows reconciled, but a `--check` or the `--baseline` comparison failed (firehose.run.kept): each check's
    line says which, with its figure."""


_OF_VERDICT = {
    "OK": ExitCode.OK,
    "MISMATCH": ExitCode.LOST_OR_DUPLICATED,
    "INCOMPLETE": ExitCode.INCOMPLETE,
    "STOPPED": ExitCode.STOPPED,
}


def of_verdict(verdict: str) -> ExitCode:
    """The exit code of a summary's verdict (firehose.run.summary.RunSummary.verdict)."""
    return _OF_VERDICT[verdict]


def of_failures(exit_code_on_error: int) -> int:
    """The exit code of a reconciled run with failed requests or exceptions: FAILURES, or the user's
    `--exit-code-on-error` when it is not Locust's default (1)."""
    return ExitCode.FAILURES if exit_code_on_error == 1 else exit_code_on_error


def describe(code: int) -> str:
    """`code` as a tool reports a run's exit: "3: INCOMPLETE"; a code not in the table (Locust's own, a signal's)
    as it is."""
    try:
        return f"{code}: {ExitCode(code).name}"
    except ValueError:
        return str(code)
