"""The live state of one server as one worker sees it.

Owns: in-flight count, latency estimate, the idle keep-alive connections to the server. The
balancing policies read it through `portico.balancing.Candidate`; only the proxy changes it.
Never opens sockets itself (the proxy does, and hands idle connections back here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from portico.balancing import PeakEwma

if TYPE_CHECKING:
    from portico.upstreams.connections import UpstreamConnection


class BackendState:
    """One server of one pool: identity (fixed) and live counters (changed per request)."""

    __slots__ = (
        "_clock",
        "_ewma",
        "active_up",
        "admin_state",
        "ejected",
        "fail_streak",
        "failures",
        "host",
        "idle",
        "in_flight",
        "max_idle",
        "name",
        "port",
        "requests",
        "tracks_latency",
        "up_since",
        "weight",
    )

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        weight: int,
        *,
        max_idle: int,
        clock: Callable[[], float],
    ) -> None:
        # identity
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
        # live counters
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        # health: up by the control plane's active checks, not ejected by this worker's
        # outlier detection; `up_since` is set while slow start ramps the server back up
        self.active_up = True
        self.admin_state = "ready"  # the admin API's: ready | drain | maint
        self.ejected = False
        self.fail_streak = 0
        self.up_since: float | None = None
        self._ewma = PeakEwma()
        self._clock = clock
        self.tracks_latency = False  # set when the pool's policy reads `latency`
        # idle keep-alive connections, most recently used last (LIFO keeps few connections warm)
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle

    @property
    def latency(self) -> float:
        return self._ewma.value(self._clock())

    def observe_latency(self, seconds: float) -> None:
        self._ewma.observe(seconds, self._clock())

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection still open, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.is_reusable():
                return conn
        return None

    def put_idle(self, conn: UpstreamConnection, now: float) -> bool:
        """Keep `conn` for reuse; False (and the caller closes it) when the pool is full."""
        if len(self.idle) >= self.max_idle:
            return False
        conn.idle_since = now
        self.idle.append(conn)
        return True

    def close_idle(self, older_than: float) -> None:
        """Close idle connections unused since before `older_than` (a loop time)."""
        keep = []
        for conn in self.idle:
            if conn.idle_since < older_than or not conn.is_reusable():
                conn.close()
            else:
                keep.append(conn)
        self.idle[:] = keep

    def __repr__(self) -> str:
        return f"BackendState({self.name!r}, in_flight={self.in_flight})"
