"""Key-affine policies: the same key goes to the same backend while the set allows it. *pure*

Owns `ConsistentHash` (a hash ring) and `IpHash` (a weighted slot table). Both hash with
xxHash (XXH3, 64 bits), never Python's `hash()`, whose salt differs between processes: every
proxy process and every restart must send a key to the same backend. Never decides what the key
is (client IP, header, cookie): the caller computes it because `needs_key` is True.

The hashing scheme is part of the on-the-wire behaviour: changing a seed, the number of points
or the tie order silently moves keys between backends on upgrade. Tests pin known mappings.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from xxhash import xxh3_64_intdigest

from portico.balancing.base import C, CandidateSetCache, Policy, Signature

__all__ = ["POINTS_PER_WEIGHT", "ConsistentHash", "IpHash"]

POINTS_PER_WEIGHT = 160  # virtual nodes per unit of weight, as in ketama


@dataclass(frozen=True, slots=True)
class _Ring:
    """Ring points sorted by hash, with the index of the candidate owning each point."""

    hashes: list[int]
    owners: list[int]


def _build_ring(signature: Signature) -> _Ring:
    # Point v of a backend is XXH3-64 of its name seeded with v: no string formatting, and no
    # collisions between "a" + "-11" and "a-1" + "1" as concatenated labels would have. Points
    # depend only on (name, v), so a backend's points are the same whoever else is in the set,
    # and a higher weight only adds points. Ties between equal hashes go to the lower name.
    points = sorted(
        (xxh3_64_intdigest(name.encode(), seed=v), name, index)
        for index, (name, weight) in enumerate(signature)
        for v in range(weight * POINTS_PER_WEIGHT)
    )
    return _Ring(hashes=[p[0] for p in points], owners=[p[2] for p in points])


class ConsistentHash(Policy):
    """Hash ring with virtual nodes (Karger et al., ketama): minimal disruption on change.

    Each backend owns `POINTS_PER_WEIGHT * weight` points on a 64-bit ring; a key belongs to the
    first point at or after its hash, wrapping around. Removing a backend moves only the keys
    it owned; adding one to n moves only the keys it takes, about 1/(n+1) of them. The price is
    unevenness: with 160 points per backend, shares vary by several percent (`IpHash` is exact
    but remaps nearly everything on any change).

    The ring is built once per candidate set, O(P log P) for P points in total, and cached; a
    pick is one XXH3 hash and one bisection, O(log P). Memory and rebuild time grow with the
    sum of the weights, so keep weights small (1-10, not 1-1000).
    """

    __slots__ = ("_cache",)
    needs_key = True

    def __init__(self) -> None:
        self._cache = CandidateSetCache(_build_ring)

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The candidate owning `key` on the ring, or None if there are none."""
        if not candidates:
            return None
        ring = self._cache.get(candidates)
        i = bisect_left(ring.hashes, xxh3_64_intdigest(key))
        if i == len(ring.hashes):
            i = 0
        return candidates[ring.owners[i]]


def _build_slots(signature: Signature) -> list[int]:
    # Laid out in name order, not the caller's order, so the mapping does not depend on how
    # the pool happens to order its healthy backends.
    order = sorted(range(len(signature)), key=lambda index: signature[index][0])
    return [index for index in order for _ in range(signature[index][1])]


class IpHash(Policy):
    """Map-based hashing, as HAProxy's default `balance source`: a weighted slot table.

    Each backend fills `weight` slots of a table; a key goes to slot XXH3-64(key) % len(table).
    Shares are exactly proportional to weight, up to the hash's uniformity, which a ring with
    virtual nodes cannot match.

    Trade-off: any change to the set or a weight changes the table length, and with it the
    slot of nearly every key, so most clients move to another backend when one server goes up
    or down (sessions pinned by it are lost). Choose `ConsistentHash` when stickiness across
    changes matters more than an exact split. O(1) per pick.
    """

    __slots__ = ("_cache",)
    needs_key = True
    fixed_key = "client_ip"  # `balance source`: the client address, whatever hash_key says
    fixed_key = "client_ip"  # `balance source`: the client address, whatever hash_key says

    def __init__(self) -> None:
        self._cache = CandidateSetCache(_build_slots)

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The candidate in the slot `key` hashes to, or None if there are none."""
        if not candidates:
            return None
        slots = self._cache.get(candidates)
        return candidates[slots[xxh3_64_intdigest(key) % len(slots)]]
