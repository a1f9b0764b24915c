"""The one table of write strategies: per engineer class, what every part of firehose needs to know of it.

`STRATEGIES` is the only list of strategies: `locustfile.py` exports its user classes, the connection budget
counts their pools, the sweep runs its grid and the bench its strategies from it, the C-client references and
chaos look strategies up in it. Adding a strategy is a Writer in `writers/`, an Engineer in `users/`, one row
here (docs/extending.md). What a row says of its writer (services, pool) is read from the writer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from locust import User

from users import (
    BatchedEngineer,
    CopyEngineer,
    NaiveEngineer,
    PooledEngineer,
    StreamEngineer,
    ValidatedCopyEngineer,
    ValveEngineer,
)
from users.engineer import Engineer
from writers.base import Writer

ReferenceKind = Literal["naive", "batched", "pooled", "copy"]
"""What a strategy's statements reduce to, run by a C client (firehose.tools.references): pgbench's naive or
batched INSERTs (directly, or through pgBouncer: pooled), or `psql \\copy`."""


@dataclass(frozen=True)
class Strategy:
    """One write strategy: the engineer class that picks it, and what the tools measure it against."""

    user_class: type[Engineer]
    """The Locust user class (its `writer_class` is the strategy's writer)."""
    reference: ReferenceKind
    """The C-client reference its statements reduce to (the sweep's database ratio, the bench's reference)."""
    goal: float | None = None
    """Ours / reference the bench holds it to (issue 12); None: the bench's strategies part leaves it out."""
    bench_reference: type[Engineer] | None = None
    """In the bench, the strategy whose run of the same repetition is the reference instead of the C client."""
    scale_option: str | None = None
    """The option that sets its client connections on the sweep's connection-scale axis (None: not on it)."""

    @property
    def name(self) -> str:
        """The class name users pick on the command line and read in every report."""
        return self.user_class.__name__

    @property
    def writer(self) -> type[Writer]:
        return self.user_class.writer_class

    @property
    def services(self) -> tuple[str, ...]:
        """Services besides PostgreSQL its writer writes through (the run starts each once)."""
        return self.writer.services

    @property
    def connections(self) -> int:
        """Connections its writer opens per process by default (to PostgreSQL, or pgBouncer's clients); its C-client
        reference gets as many."""
        return self.writer.default_pool_size

    @property
    def own_reference(self) -> bool:
        """Whether the C client runs this strategy's own statements (the first row of its kind), rather than those
        it ends in (the stream and the validated COPY end in COPY)."""
        return next(row for row in all_strategies() if row.reference == self.reference) is self


STRATEGIES: list[Strategy] = [
    Strategy(NaiveEngineer, reference="naive", goal=0.80),
    Strategy(BatchedEngineer, reference="batched", goal=0.85, scale_option="--batched-pool-size"),
    Strategy(PooledEngineer, reference="pooled", goal=0.85, scale_option="--pooled-pool-size"),
    Strategy(CopyEngineer, reference="copy", goal=0.85),
    Strategy(StreamEngineer, reference="copy", goal=0.80, bench_reference=CopyEngineer),
    Strategy(ValidatedCopyEngineer, reference="copy"),
    Strategy(ValveEngineer, reference="copy", goal=0.90, bench_reference=CopyEngineer),
]
"""Every write strategy, the baseline (every ratio is taken against it) first, in the order reports list them."""


def all_strategies() -> list[Strategy]:
    """Every row of the table (read through this function, so a test that adds a row reaches every reader)."""
    return STRATEGIES


def baseline() -> Strategy:
    """The strategy every ratio is taken against (naive INSERTs, as in the reference benchmark)."""
    return STRATEGIES[0]


def strategy_named(name: str) -> Strategy:
    """The row of this engineer class name; an unknown name is a ValueError that lists the known ones."""
    for row in STRATEGIES:
        if row.name == name:
            return row
    raise ValueError(f"unknown strategies {name}: choose from {', '.join(sorted(row.name for row in STRATEGIES))}")


def strategy_of(user_class: type[User]) -> Strategy:
    """The row of this engineer class, or of the nearest class it derives from that has one (a test's engineer
    that fails on purpose writes as its base does); a class with a writer and no row is a LookupError."""
    rows = {row.user_class: row for row in STRATEGIES}
    for cls in user_class.__mro__:
        if cls in rows:
            return rows[cls]
    raise LookupError(f"{user_class.__name__} has no row in firehose.strategies.STRATEGIES (docs/extending.md)")


def user_classes() -> list[type[Engineer]]:
    """The engineer classes of every strategy, in the table's order (what `locustfile.py` exports)."""
    return [row.user_class for row in STRATEGIES]


def writer_classes(user_classes: list[type[User]]) -> list[type[Writer]]:
    """The write strategies of these user classes, each once."""
    found = {user.writer_class for user in user_classes if getattr(user, "writer_class", None) is not None}
    return sorted(found, key=lambda cls: cls.__name__)


def class_names(user_classes: list[type[User]]) -> dict[str, str]:
    """Writer class name -> the user class that writes through it (the name users pick and read)."""
    return {user.writer_class.__name__: user.__name__ for user in user_classes if hasattr(user, "writer_class")}


def available_strategies() -> dict[str, type[Engineer]]:
    """The engineer class of each strategy by name, in the table's order (the baseline first)."""
    return {row.name: row.user_class for row in STRATEGIES}


def resolve_strategies(names: list[str]) -> list[type[Engineer]]:
    """The engineer classes of these names; an unknown name is an error that lists the known ones."""
    known = available_strategies()
    if unknown := [name for name in names if name not in known]:
        raise ValueError(f"unknown strategies {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
    return [known[name] for name in names]
