"""The parts of a process's run (users.run.Part), in the order the summary shows them.

The lifecycle declares their options, each process's run starts those that start with it and reports them all
at its drain, and the summary merges and renders them: a new part is a `Part` subclass and its entry here.
"""

from __future__ import annotations

from firehose.run.probe import MigrationProbe
from users.analyst import QueryRunner
from users.pacing import Pacing
from users.population import Population
from users.run import Part

PARTS: tuple[type[Part], ...] = (Pacing, QueryRunner, MigrationProbe, Population)
