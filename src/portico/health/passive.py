"""Passive health checking: outlier ejection from the outcomes of real requests. *pure*

Owns `OutlierDetector`, one per pool: consecutive failures per server, which servers are
ejected and until when, and each server's ejection-time multiplier. Never decides what counts
as a failure (the caller maps connect errors, timeouts and 5xx to `failed`), never routes and
never schedules anything: ejections end lazily, by comparing deadlines with the `now` the
caller passes, and `next_change` tells the caller when to look again. Never reads the clock:
`now` is in seconds on any monotonic scale and, per detector, never goes backwards.

Follows Envoy's consecutive-5xx outlier detection, minus its interval timer, jitter and
success-rate detectors.
"""

from __future__ import annotations

import heapq
import math

__all__ = ["OutlierDetector"]


class _Server:
    """What the detector remembers about one server that has failed at least once."""

    __slots__ = ("back_at", "failures", "multiplier", "total", "until")

    def __init__(self) -> None:
        # Consecutive failed requests since the last success or detection; stays 0 while
        # ejected (outcomes are ignored then), so a server comes back with a clean count.
        self.failures = 0
        self.until: float | None = None  # end of the current ejection; None = not ejected
        # Ejection-time multiplier as of `back_at` (when the last ejection ended). Decays by
        # one per base_ejection_time spent not ejected; computed when next needed.
        self.multiplier = 0
        self.back_at = 0.0
        self.total = 0  # ejections ever, for metrics


class OutlierDetector:
    """Ejects a server from its pool after `consecutive_failures` failed requests in a row.

    An ejection lasts `base_ejection_time` times the server's multiplier, which grows by one
    per ejection and shrinks by one per `base_ejection_time` the server then stays in, capped
    at `max_ejection_time`: a server that keeps failing is kept out longer each time, while
    one that recovered for good is forgiven gradually (Envoy's backoff). When an ejection
    ends the server is back with a clean failure count: no probe is needed, real traffic is
    the probe.

    At most `max_ejection_percent` of the pool is ejected at once (Envoy's rule, checked as
    100 * (ejected + 1) <= percent * pool_size): outlier detection is for a few bad servers,
    and when most of a pool fails the problem is elsewhere (a bad deploy, an overloaded
    database), and ejecting them all would turn degraded service into none. With the strict
    cap a pool too small for one server's share (one server at 50%) never ejects.

    Outcomes reported for a server while it is ejected (requests that were already in
    flight) are ignored: its count starts over when it comes back anyway.
    """

    __slots__ = (
        "_deadlines",
        "_max_multiplier",
        "_servers",
        "base_ejection_time",
        "consecutive_failures",
        "max_ejection_percent",
        "max_ejection_time",
        "overflows",
    )

    def __init__(
        self,
        consecutive_failures: int,
        base_ejection_time: float,
        max_ejection_time: float,
        max_ejection_percent: int,
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures!r}")
        if not (base_ejection_time > 0 and math.isfinite(base_ejection_time)):
            raise ValueError(f"base_ejection_time must be > 0 seconds, got {base_ejection_time!r}")
        if not max_ejection_time >= base_ejection_time:  # also rejects NaN
            raise ValueError(
                f"max_ejection_time ({max_ejection_time!r}) must not be shorter than "
                f"base_ejection_time ({base_ejection_time!r})"
            )
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError(f"max_ejection_percent must be 0..100, got {max_ejection_percent!r}")
        self.consecutive_failures = consecutive_failures
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_percent = max_ejection_percent
        # The smallest multiplier that already reaches max_ejection_time: growing it further
        # would change no ejection but would make a recovered server wait longer to be
        # forgiven (Envoy caps its backoff counter for the same reason).
        self._max_multiplier = max(1, math.ceil(max_ejection_time / base_ejection_time))

        # per-server state: only servers that have failed at least once
        self._servers: dict[str, _Server] = {}
        # (until, server) for each server ejected now: a min-heap, so the next ejection to end
        # is found in O(1) and its length is the number ejected.
        self._deadlines: list[tuple[float, str]] = []
        self.overflows = 0  # detections not acted on because of max_ejection_percent (metrics)

    def observe(self, server: str, failed: bool, now: float, pool_size: int) -> bool:
        """Record one request's outcome on `server`; True when this outcome ejected it.

        `pool_size` is the number of servers in the pool now, ejected ones included; it bounds
        how many may be ejected at once. O(1) (plus O(log k) per ejection starting or ending,
        k being the number ejected); allocates only when a server first fails or is ejected.
        """
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._end_ejections(now)
        state = self._servers.get(server)
        if state is None:
            if not failed:
                return False  # the common case: a server that never failed stays untracked
            state = self._servers[server] = _Server()
        elif state.until is not None:
            return False  # a request that was in flight when the server was ejected
        if not failed:
            state.failures = 0
            return False
        state.failures += 1
        if state.failures < self.consecutive_failures:
            return False
        # As Envoy, a detection uses up the run of failures whether or not the cap lets it
        # eject: a server denied ejection gets another chance after another full run.
        state.failures = 0
        if 100 * (len(deadlines) + 1) > self.max_ejection_percent * pool_size:
            self.overflows += 1
            return False
        self._eject(server, state, now)
        return True

    def is_ejected(self, server: str, now: float) -> bool:
        """True while `server` is ejected: the pool must not give it requests."""
        state = self._servers.get(server)
        return state is not None and state.until is not None and now < state.until

    def ejected(self, now: float) -> set[str]:
        """The servers ejected at `now` (a new set, which the caller may keep)."""
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._end_ejections(now)
        return {server for _, server in deadlines}

    def next_change(self, now: float) -> float | None:
        """When the earliest current ejection ends, or None when nothing is ejected.

        The caller refreshes its set of available servers at that time (or at the first
        request after it) instead of polling; new ejections it learns from `observe`.
        """
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._end_ejections(now)
        return deadlines[0][0] if deadlines else None

    def ejections(self, server: str) -> int:
        """How many times `server` has been ejected since it was first seen (for metrics)."""
        state = self._servers.get(server)
        return state.total if state is not None else 0

    def forget(self, server: str) -> None:
        """Drop everything about `server` (removed from the pool); unknown names are ignored.

        If it was ejected, its slot under max_ejection_percent is freed at once. O(k).
        """
        state = self._servers.pop(server, None)
        if state is not None and state.until is not None:
            self._deadlines.remove((state.until, server))
            heapq.heapify(self._deadlines)

    # -- internals ------------------------------------------------------------------------------

    def _eject(self, server: str, state: _Server, now: float) -> None:
        multiplier = state.multiplier
        if multiplier:
            # Lazy decay: one step per whole base_ejection_time since the last ejection ended.
            spent = int((now - state.back_at) // self.base_ejection_time)
            multiplier = max(0, multiplier - spent)
        multiplier = min(multiplier + 1, self._max_multiplier)
        until = now + min(self.base_ejection_time * multiplier, self.max_ejection_time)
        state.multiplier = multiplier
        state.until = until
        state.total += 1
        heapq.heappush(self._deadlines, (until, server))

    def _end_ejections(self, now: float) -> None:
        """Bring back every server whose ejection ended at or before `now`."""
        deadlines = self._deadlines
        servers = self._servers
        while deadlines and deadlines[0][0] <= now:
            until, server = heapq.heappop(deadlines)
            state = servers[server]
            state.until = None  # its failure count is 0: the detection used it up
            # Decay counts from when the ejection ended, not from when we noticed.
            state.back_at = until
