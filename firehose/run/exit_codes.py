"""What a run's exit code says, for a user's CI: one table, here and in docs/running.md ("Exit codes").

Every way a run ends sets one of these (a feature that adds a way to end adds its code here and to that table).
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    """Every event acknowledged is in the database once (retried round trips included: they are not failures)."""
    LOST_OR_DUPLICATED = 1
    """Rows lost or stored twice: the reconciliation failed."""
    BAD_SETTING = 2
    """A setting refused before anything started (one line naming the option; nothing recorded, nothing left)."""
    INCOMPLETE = 3
    """A process of the run sent no final report (e.g. a worker killed): its rows cannot be reconciled."""
    STOPPED = 4
    """Stopped by a guard or an error of the setup (disk budget or floor, outage deadline, a revoked privilege)."""
