"""Engineers of a population as identities derived from an index: no object per engineer.

A population of N engineers (`--population`) is spoken for by a few gateways (users.population). Each event belongs
to one engineer: its end-user id is the engineer's index; its team, project, cost centre and sessions come from the
pools' profiles, picked by a hash of (seed, index). So 10 million engineers cost no more memory than 1,000: an
identity is composed when a trace needs it and dropped with the trace.
"""

from __future__ import annotations

from telemetry.pools import EngineerProfile, Pools

_MIX = 0x9E3779B97F4A7C15
"""splitmix64's increment (2**64 / golden ratio): spreads consecutive indices over the profiles."""
_MASK = (1 << 64) - 1
_SHARED_MEMBERS = '"team":'
"""Where a profile's members stop naming its own person (enduser.id, enduser.email) and start its team's."""


def mix(seed: int, index: int) -> int:
    """splitmix64's finaliser of (seed, index): a well-spread 64-bit hash, the same in every process."""
    z = (seed * _MIX + index * _MIX + _MIX) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class Identities:
    """The identity of engineer `index` of a population, from the pools (built once per process)."""

    def __init__(self, pools: Pools, seed: int) -> None:
        self.seed = seed
        self._profiles = pools.profiles
        self._team_members = tuple(
            profile.members[profile.members.index(_SHARED_MEMBERS) :] for profile in pools.profiles
        )

    def profile(self, index: int) -> EngineerProfile:
        """Engineer `index`: end-user id `engineer-<index>`; team, project and cost centre of one pooled profile and
        the sessions of another, both picked by a hash of (seed, index)."""
        hashed = mix(self.seed, index)
        count = len(self._profiles)
        team = hashed % count
        sessions = (hashed >> 32) % count
        members = '"enduser.id":"engineer-%d",%s' % (index, self._team_members[team])
        return EngineerProfile(members, self._profiles[sessions].sessions, self._profiles[team].team)
