"""Least-connections: the backend with the fewest outstanding requests per unit of weight. *pure*

Owns `LeastConn`. Reads `in_flight` and `weight` only; never counts requests itself (the pool
does, on the live backend state) and never reads the clock or a random source.
"""

from __future__ import annotations

from collections.abc import Sequence

from portico.balancing.base import C, Policy

__all__ = ["LeastConn"]


class LeastConn(Policy):
    """Lowest `in_flight / weight` wins; ties rotate among the tied candidates.

    The scan starts just after the previous winner, and only a strictly lower load displaces
    the current best, so among tied candidates the next one after the last winner wins: with
    every backend idle this is plain round robin instead of always the first backend (which is
    what `min()` would do, and what makes least-connections bursty at low load).

    Loads are compared by cross-multiplying (a.in_flight * b.weight < b.in_flight * a.weight),
    exact in integers. An idle candidate cannot be beaten, so the scan stops at the first one.
    O(n) per pick, O(1) when an idle backend follows the last winner.
    """

    __slots__ = ("_next",)
    needs_key = False

    def __init__(self) -> None:
        self._next = 0  # where the next scan starts: just after the last winner

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The least-loaded candidate relative to weight, or None if there are none."""
        n = len(candidates)
        if n == 0:
            return None
        start = self._next
        if start >= n:
            start = 0
        best_i = start
        best = candidates[start]
        best_load, best_weight = best.in_flight, best.weight
        if best_load:
            i = start
            for _ in range(n - 1):
                i += 1
                if i == n:
                    i = 0
                c = candidates[i]
                load = c.in_flight
                if load * best_weight < best_load * c.weight:
                    best_i, best, best_load, best_weight = i, c, load, c.weight
                    if not load:
                        break
        self._next = best_i + 1
        return best
