"""GCRA rate-limit arithmetic over one key, and a per-worker table of keys. *pure*

Owns `Gcra` (the Generic Cell Rate Algorithm over one key's state, a single float),
`Decision` (what one check concluded) and `RateLimiter` (a bounded in-memory table of per-key
states for one worker process). Never reads the clock: `now` is an argument, in seconds on any
monotonic scale (the event loop's `loop.time()`), so every decision is reproducible with a fake
clock. Never awaits, never touches sockets or a shared store.

It sits with the stores because the state is shared by design: the memory store keeps a
`RateLimiter` per worker, and the Redis store runs the same `Gcra.decide` arithmetic atomically
next to the shared state (a Lua script), which is why the state is one float. The rate-limit
filter (`portico.filters.ratelimit`) builds on this module, never the other way round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter

__all__ = ["Decision", "Gcra", "RateLimiter"]

# How early a request may arrive and still count as on time, as a fraction of the emission
# interval, capped at 1 ms for slow rates. TAT is a running float sum and `now + retry_after`
# is rounded, so an exact comparison would refuse a client that is on time to within a few
# ulps. The slack is a one-off credit (a client can never be more than `slack` ahead of the
# schedule in total), so it never raises the sustained rate; it only blurs the boundary by
# a thousandth of a request.
_SLACK_FRACTION = 1e-3
_MAX_SLACK = 1e-3  # seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """What one rate-limit check concluded, and what to store and tell the client.

    `allowed`: whether the request may proceed. `new_tat`: the state to store for the key
    (equal to the state passed in when denied: a denied request consumes nothing).
    `retry_after`: seconds until a request of the same cost would be allowed; 0.0 when
    allowed. `remaining`: how many more cost-1 requests would be allowed right now, after
    this one (RateLimit-Remaining). `reset_after`: seconds until the key is back to a full
    burst, i.e. until its state is equivalent to a fresh key (RateLimit-Reset, and the TTL to
    give the state in a shared store).
    """

    allowed: bool
    new_tat: float
    retry_after: float
    remaining: int
    reset_after: float


class Gcra:
    """The Generic Cell Rate Algorithm (ITU-T I.371 virtual scheduling) over one key.

    Parameters: a sustained `rate` in requests per second, and a `burst`, the number of
    requests an idle client may make at once. From them:

    - emission interval T = 1 / rate (`interval`): the steady-state spacing of requests;
    - tolerance tau = T * (burst - 1) (`tolerance`): how far ahead of the schedule a client
      may run, the ITU's cell delay variation tolerance for a maximum burst of `burst`;
    - `window` = tau + T = T * burst: how long an empty bucket takes to refill completely.

    The state is the theoretical arrival time TAT: when the key's schedule would next be
    idle. A request of cost n arriving at `now` is n requests back to back; it conforms when
    max(TAT, now) + n*T - now <= tau + T, and then TAT becomes max(TAT, now) + n*T. So an idle
    client (no TAT, or TAT <= now) gets exactly `burst` requests at one instant and then one
    every T; a TAT in the past is indistinguishable from no TAT. Compared with a token bucket
    this keeps one number per key, not two, with no refill step: the same arithmetic runs in
    a Redis script with one GET and one SET (with TTL `reset_after`).

    Precondition on the clock: arithmetic is in float seconds, and each request's TAT may
    carry half an ulp of `now` in rounding error (1e-9 s for a monotonic clock after months
    of uptime, 1e-7 s for Unix time). `decide` forgives `slack` (T/1000, at most 1 ms), which
    absorbs that for burst * rate up to about 1e6 on a monotonic clock; beyond, the last
    request of a full burst may be refused, never an extra one allowed.
    """

    __slots__ = ("_limit", "burst", "interval", "rate", "slack", "tolerance", "window")

    def __init__(self, rate: float, burst: int) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be finite and > 0 requests per second, not {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be a whole number of requests >= 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate  # T
        self.tolerance = self.interval * (burst - 1)  # tau
        self.window = self.interval * burst  # tau + T
        self.slack = min(self.interval * _SLACK_FRACTION, _MAX_SLACK)
        self._limit = self.window + self.slack  # the most a TAT may lead `now` by, slack included

    def decide(self, tat: float | None, now: float, cost: int = 1) -> Decision:
        """Whether a request of `cost` (0..burst) arriving at `now` conforms, given state `tat`.

        `tat` is the key's stored state, None for a key never seen (or forgotten). Store
        `new_tat` when `allowed`; when denied it is `tat` itself. Cost 0 is a query: always
        allowed when the state is consistent, and it consumes nothing. Raises ValueError for
        a cost above `burst`, which could never be allowed.
        """
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost must be from 0 to the burst ({self.burst}), not {cost!r}")
        start = tat if tat is not None and tat > now else now
        new_tat = start + cost * self.interval
        lead = new_tat - now
        if lead <= self._limit:
            return Decision(True, new_tat, 0.0, self._remaining(lead), lead)
        # Denied. Since cost <= burst, only a TAT still in the future gets here: start is tat.
        lead = start - now
        return Decision(False, start, new_tat - now - self.window, self._remaining(lead), lead)

    def _remaining(self, lead: float) -> int:
        # Cost-1 requests that fit between the state's lead over now and the limit. The slack
        # (a thousandth of a request) keeps float noise from rounding a whole one away.
        return min(max(int((self._limit - lead) * self.rate), 0), self.burst)


class RateLimiter:
    """Per-key GCRA for one worker: the key -> TAT table in memory, with bounded size.

    `check` looks a key up, decides, and stores the new TAT only when allowed. The table is
    a dict; a key whose TAT is <= now is equivalent to an unknown key, so forgetting it loses
    nothing.

    Bounded memory, amortised: when an insertion takes the table past its sweep mark, one
    sweep rebuilds it without the expired keys (which also gives back the memory a dict keeps
    after deletions). If more than `max_keys` keys are still live, it keeps the `max_keys`
    with the latest TATs and forgets the rest: a key whose TAT is nearest to `now` has the
    least backlog to forgive, so the error is the smallest possible and always lenient (a
    forgotten client gets a fresh burst, never a wrong denial); a flood of new keys evicts its
    own oldest keys before a heavy client's. `evicted` counts those forgiven keys: non-zero
    means `max_keys` is too small for the traffic. The next sweep waits until at least
    max_keys/2 more keys are added, so a sweep (O(n log n) at worst) costs O(log n) per
    insertion amortised, and between calls the table never holds more than 1.5 * max_keys keys.
    """

    __slots__ = ("_sweep_at", "_tats", "evicted", "gcra", "max_keys", "sweeps")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a whole number >= 1, not {max_keys!r}")
        self.gcra = Gcra(rate, burst)
        self.max_keys = max_keys
        # table state
        self._tats: dict[bytes, float] = {}
        self._sweep_at = max_keys  # sweep once the table holds more keys than this
        # counters, for metrics and the admin API
        self.sweeps = 0
        self.evicted = 0  # live keys forgotten because the table was full

    def __len__(self) -> int:
        """Keys currently tracked, expired ones not yet swept included."""
        return len(self._tats)

    def check(self, key: bytes, now: float, cost: int = 1) -> Decision:
        """Decide a request of `cost` by `key` at `now`, recording it when allowed."""
        tats = self._tats
        decision = self.gcra.decide(tats.get(key), now, cost)
        if decision.allowed:
            tats[key] = decision.new_tat
            if len(tats) > self._sweep_at:
                self._sweep(now)
        return decision

    def _sweep(self, now: float) -> None:
        live = {key: tat for key, tat in self._tats.items() if tat > now}
        excess = len(live) - self.max_keys
        if excess > 0:
            # Keep the latest TATs; a stable sort evicts the older-inserted of equal ones.
            kept = sorted(live.items(), key=itemgetter(1))[excess:]
            live = dict(kept)
            self.evicted += excess
        self._tats = live
        self._sweep_at = max(self.max_keys, len(live) + max(1, self.max_keys // 2))
        self.sweeps += 1
