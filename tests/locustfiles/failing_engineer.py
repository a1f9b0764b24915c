"""Our locustfile plus an engineer whose telemetry raises on its third trace: what an engineer error does to a run."""

from locust import events

from firehose.run import lifecycle
from telemetry.generator import TraceRows
from users import CopyEngineer


class FailingEngineer(CopyEngineer):
    """A CopyEngineer whose third trace raises: the error is Locust's to report, the run must still end."""

    traces_handed = 0

    def outgoing(self, rows: TraceRows) -> TraceRows:
        self.traces_handed += 1
        if self.traces_handed == 3:
            raise ValueError("this engineer's third trace cannot be composed")
        return rows


lifecycle.register(events, user_classes=[CopyEngineer, FailingEngineer])
