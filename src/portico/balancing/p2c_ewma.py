"""Latency-aware balancing: a peak-EWMA estimator and power-of-two-choices over it. *pure*

Owns `PeakEwma` (the per-backend response-time estimate, fed by whoever times responses) and
`P2CEwma` (the policy). Never reads the clock: `now` is an argument, in seconds on any monotonic
scale. Never uses the global `random` module: `P2CEwma` draws from the `random.Random` it is
given. The policy never updates estimates; it reads `Candidate.latency`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from portico.balancing.base import C, Candidate, Policy

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["UNSAMPLED_PENALTY", "P2CEwma", "PeakEwma", "cost"]

# Cost of a backend that has requests outstanding but has never answered one (latency 0.0).
# Without it such a backend would cost 0 and win every pair until its first response came back:
# a new backend that hangs would swallow a share of all traffic. Finagle uses the same guard.
UNSAMPLED_PENALTY = 1e6  # seconds-equivalent; far above any real latency


class PeakEwma:
    """Peak-sensitive, exponentially weighted moving average of response time (Finagle, Linkerd).

    A sample above the stored estimate replaces it at once, so a backend that slows down is
    avoided from its first slow response. A lower sample is blended in with weight
    1 - exp(-dt / tau), dt being the time since the previous sample: the estimate comes back
    down with time constant `tau` seconds rather than on one lucky fast response.

    `value(now)` also decays the estimate towards zero while no samples arrive (as if idle time
    were observed as zero latency), so a backend avoided for being slow is eventually tried
    again instead of being starved of the very samples that would clear it. Reading does not
    change the state, so the result does not depend on how often it is read.
    """

    __slots__ = ("_estimate", "_stamp", "tau")

    def __init__(self, tau: float = 10.0) -> None:
        if not tau > 0:
            raise ValueError(f"tau must be > 0 seconds, got {tau!r}")
        self.tau = tau
        self._estimate = 0.0  # seconds, as of `_stamp`; 0.0 = no sample yet
        self._stamp = 0.0

    def observe(self, rtt: float, now: float) -> None:
        """Fold in one response time `rtt` (seconds) measured at `now`."""
        if rtt > self._estimate:
            self._estimate = rtt
        else:
            w = math.exp(-max(now - self._stamp, 0.0) / self.tau)
            self._estimate = self._estimate * w + rtt * (1.0 - w)
        self._stamp = now

    def value(self, now: float) -> float:
        """The estimate at `now` in seconds; 0.0 before the first sample."""
        return self._estimate * math.exp(-max(now - self._stamp, 0.0) / self.tau)


class P2CEwma(Policy):
    """Power of two choices: draw two distinct candidates at random, send to the cheaper.

    cost = latency * (in_flight + 1) / weight: expected wait if queued behind the outstanding
    requests, scaled down for bigger backends. On equal cost (typically two backends with no
    sample yet) the one with less `in_flight / weight` wins. A backend with requests
    outstanding but no sample yet costs `UNSAMPLED_PENALTY`.

    Two random choices avoid both the herd behaviour of always taking the global minimum (every
    proxy piling onto the same momentarily fast backend) and the load blindness of pure random;
    the single most expensive backend is never picked, since its pair is always another
    candidate. O(1) per pick.
    """

    __slots__ = ("_rng",)
    needs_key = False
    needs_latency = True

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    @classmethod
    def create(cls, options: BaseModel | None, rng: random.Random) -> P2CEwma:
        return cls(rng)

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """The cheaper of two distinct random candidates, the only one, or None if none."""
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        draw = self._rng.random
        i = int(draw() * n)
        j = int(draw() * (n - 1))
        if j >= i:
            j += 1  # uniform over the other n - 1 candidates: never i itself
        a, b = candidates[i], candidates[j]
        cost_a, cost_b = _cost(a), _cost(b)
        if cost_a != cost_b:
            return a if cost_a < cost_b else b
        return b if b.in_flight * a.weight < a.in_flight * b.weight else a


def _cost(c: Candidate) -> float:
    latency, in_flight = c.latency, c.in_flight
    if latency == 0.0 and in_flight:
        return (UNSAMPLED_PENALTY + in_flight) / c.weight
    return latency * (in_flight + 1) / c.weight


def cost(candidate: Candidate) -> float:
    """What `P2CEwma` compares between its two draws (lower wins), for `portico explain`."""
    return _cost(candidate)
