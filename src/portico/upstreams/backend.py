"""The live state of one server as one worker sees it.

Owns: in-flight count, latency estimate, the idle keep-alive connections to the server, and the
log lines about failed connects to it (one per cause, then at most one per
`CONNECT_REPORT_INTERVAL`, so a dead server cannot flood the log). The balancing policies read
it through `portico.balancing.Candidate`; only the proxy changes it. Never opens sockets itself
(the proxy does, and hands idle connections back here).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from portico.balancing import PeakEwma

if TYPE_CHECKING:
    from portico.upstreams.connections import UpstreamConnection

log = logging.getLogger("portico.upstream")

CONNECT_REPORT_INTERVAL: Final = 30.0  # seconds between two log lines of the same failure


class BackendState:
    """One server of one pool: identity (fixed) and live counters (changed per request)."""

    __slots__ = (
        "_clock",
        "_ewma",
        "_reported_at",
        "_unreported",
        "active_up",
        "admin_state",
        "connect_cause",
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
        # failed connects: the cause last logged (None: connecting works), when, and how many
        # failures happened since
        self.connect_cause: str | None = None
        self._reported_at = 0.0
        self._unreported = 0

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

    def close_idle(self, older_than: float, rest_before: float = 0.0) -> None:
        """Close idle connections unused since before `older_than` (a loop time); those kept
        and unused since before `rest_before` give up their parser (`UpstreamConnection.rest`)."""
        keep = []
        for conn in self.idle:
            if conn.idle_since < older_than or not conn.is_reusable():
                conn.close()
            else:
                if conn.idle_since < rest_before:
                    conn.rest()
                keep.append(conn)
        self.idle[:] = keep

    def connect_failed(self, cause: str, now: float) -> int:
        """Count a failed connect (`cause` in words, `now` a monotonic time). Returns how
        many failures to log now, this one and those held back since the last line; 0 while
        the same cause was logged less than CONNECT_REPORT_INTERVAL ago."""
        self._unreported += 1
        if cause != self.connect_cause or now - self._reported_at >= CONNECT_REPORT_INTERVAL:
            self.connect_cause = cause
            self._reported_at = now
            count = self._unreported
            self._unreported = 0
            return count
        return 0

    def connect_succeeded(self) -> bool:
        """A connect worked: True when failures had been logged (a line says it recovered)."""
        failing = self.connect_cause is not None
        self.connect_cause = None
        self._unreported = 0
        return failing

    def __repr__(self) -> str:
        return f"BackendState({self.name!r}, in_flight={self.in_flight})"


def connect_error(exc: BaseException, host: str, timeout: float) -> str:
    """Why a connect to `host` failed, in a few words (`timeout`: the one that ran out)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        return f"no connection within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def report_connect_failure(
    pool: str, backend: BackendState, exc: BaseException, timeout: float, now: float
) -> None:
    """Log a failed connect to `backend` of `pool`, as `BackendState.connect_failed` allows:
    without it a name that does not resolve shows only as 502s to clients."""
    cause = connect_error(exc, backend.host, timeout)
    count = backend.connect_failed(cause, now)
    if count:
        held = f" ({count - 1} more since the last report)" if count > 1 else ""
        log.warning(
            "server %s of pool %s (%s): cannot connect: %s%s",
            backend.name,
            pool,
            _address(backend),
            cause,
            held,
        )


def report_connected(pool: str, backend: BackendState) -> None:
    """A connect to `backend` worked: if failures had been logged, say that it recovered."""
    if backend.connect_succeeded():
        log.warning(
            "server %s of pool %s (%s): connected again", backend.name, pool, _address(backend)
        )


def _address(backend: BackendState) -> str:
    host = backend.host
    return f"[{host}]:{backend.port}" if ":" in host else f"{host}:{backend.port}"
