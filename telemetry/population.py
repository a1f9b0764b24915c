"""Engineers of a population as identities derived from an index: no object per engineer.

A population of N engineers (`--population`) is spoken for by a few gateways (users.population). Each event belongs
to one engineer: its end-user id is the engineer's index; its team, project, cost centre and sessions come from the
pools' profiles, picked by a hash of (seed, index). So 10 million engineers cost no more memory than 1,000: an
identity is composed when a trace needs it, into the generator's own fields.
"""

from __future__ import annotations

from telemetry.generator import EngineerTelemetry
from telemetry.pools import Pools

_GOLDEN = 0x9E3779B97F4A7C15
"""2**64 / golden ratio (Fibonacci hashing): consecutive indices land far apart."""
_MASK = (1 << 64) - 1
_SHARED_MEMBERS = '"team":'
"""Where a profile's members stop naming its own person (enduser.id, enduser.email) and start its team's."""


def mix(seed: int, index: int) -> int:
    """A well-spread 64-bit hash of (seed, index), the same in every process: Fibonacci hashing, then an xorshift
    so the low bits depend on the high ones (one multiplication: it runs once per trace)."""
    z = ((index + seed) * _GOLDEN) & _MASK
    return z ^ (z >> 29)


class Identities:
    """The identity of engineer `index` of a population, from the pools (built once per process)."""

    def __init__(self, pools: Pools, seed: int) -> None:
        self.seed = seed & _MASK
        self._count = len(pools.profiles)
        self._team_members = tuple(
            profile.members[profile.members.index(_SHARED_MEMBERS) :] for profile in pools.profiles
        )
        self._teams = tuple(profile.team for profile in pools.profiles)
        self._sessions = tuple(profile.sessions for profile in pools.profiles)

    def speak_as(self, telemetry: EngineerTelemetry, index: int) -> None:
        """Make `telemetry` compose its next trace as engineer `index`: end-user id `engineer-<index>`; team,
        project and cost centre of one pooled profile and the sessions of another, both picked by a hash of
        (seed, index)."""
        hashed = mix(self.seed, index)
        team = hashed % self._count
        telemetry.speak_as(
            '"enduser.id":"engineer-%d",%s' % (index, self._team_members[team]),
            self._sessions[(hashed >> 32) % self._count],
            self._teams[team],
        )
