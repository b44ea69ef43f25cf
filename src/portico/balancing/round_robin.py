"""Load-independent policies: plain rotation, smooth weighted rotation, weighted random. *pure*

Owns `RoundRobin`, `SmoothWeightedRoundRobin` and `Random`. They look only at names and weights,
never at in-flight counts or latency, and never read the clock or the global `random` module:
`Random` draws from the `random.Random` it is given.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

from portico.balancing.base import C, CandidateSetCache, Policy, Signature

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Random", "RoundRobin", "SmoothWeightedRoundRobin"]


class RoundRobin(Policy):
    """Each candidate in turn, ignoring weights.

    The cursor is an index, so when the set shrinks below it the rotation restarts at the first
    candidate rather than failing; a changed set costs at most one uneven turn.
    """

    __slots__ = ("_next",)
    needs_key = False

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The candidate after the one picked last time, or None if there are none."""
        n = len(candidates)
        if n == 0:
            return None
        i = self._next
        if i >= n:
            i = 0
        self._next = i + 1
        return candidates[i]


@dataclass(slots=True)
class _SmoothState:
    """Per-candidate current weights for one candidate set, index-aligned with it."""

    names: tuple[str, ...]
    weights: list[int]
    current: list[int]
    total: int


class SmoothWeightedRoundRobin(Policy):
    """NGINX's smooth weighted round robin: proportional to weight, interleaved, no bursts.

    Each pick adds every candidate's weight to its current weight, picks the largest current
    weight (the first one on a tie) and subtracts the total weight from the winner. Weights
    5/1/1 for a, b, c give exactly a a b a c a a per cycle, where plain weighted rotation would
    send five requests in a row to a.

    When the set changes, surviving candidates keep their current weight (as NGINX does when
    it skips a peer that is down) and newcomers start at 0, so one backend flapping does not
    reset everyone else's position in the cycle. O(n) per pick, like NGINX.
    """

    __slots__ = ("_cache", "_state")
    needs_key = False

    def __init__(self) -> None:
        self._state: _SmoothState | None = None
        self._cache = CandidateSetCache(self._rebuild)

    def _rebuild(self, signature: Signature) -> _SmoothState:
        carried: dict[str, int] = {}
        if self._state is not None:
            carried = dict(zip(self._state.names, self._state.current, strict=True))
        names = tuple(name for name, _ in signature)
        weights = [weight for _, weight in signature]
        state = _SmoothState(
            names=names,
            weights=weights,
            current=[carried.get(name, 0) for name in names],
            total=sum(weights),
        )
        self._state = state
        return state

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The candidate whose turn it is by weight, or None if there are none."""
        if not candidates:
            return None
        state = self._cache.get(candidates)
        current = state.current
        best = 0
        best_value = current[0] = current[0] + state.weights[0]
        for i in range(1, len(current)):
            value = current[i] = current[i] + state.weights[i]
            if value > best_value:
                best, best_value = i, value
        current[best] -= state.total
        return candidates[best]


@dataclass(frozen=True, slots=True)
class _CumulativeWeights:
    """Running totals of the weights, for an inverse-CDF draw by bisection."""

    cumulative: list[int]
    total: int
    uniform: bool  # all weights equal: skip the bisection


def _cumulative(signature: Signature) -> _CumulativeWeights:
    weights = [weight for _, weight in signature]
    return _CumulativeWeights(
        cumulative=list(accumulate(weights)),
        total=sum(weights),
        uniform=len(set(weights)) <= 1,
    )


class Random(Policy):
    """A random candidate, in proportion to weight, drawn from the given `random.Random`.

    Stateless between requests, so independent proxies need no coordination; the price is
    short-term unevenness that rotation would not have. Equal weights take a uniform fast path;
    otherwise one `random()` draw is bisected into the cached cumulative weights, O(log n).
    """

    __slots__ = ("_cache", "_rng")
    needs_key = False

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._cache = CandidateSetCache(_cumulative)

    @classmethod
    def create(cls, options: BaseModel | None, rng: random.Random) -> Random:
        return cls(rng)

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """A weighted-random candidate, or None if there are none."""
        n = len(candidates)
        if n == 0:
            return None
        weights = self._cache.get(candidates)
        if weights.uniform:
            return candidates[int(self._rng.random() * n)]
        # hi=n-1 guards the (float-rounding) case random() * total == total, as random.choices.
        x = self._rng.random() * weights.total
        return candidates[bisect_right(weights.cumulative, x, 0, n - 1)]
