"""What every state store promises: the `StateStore` protocol, `StoreUnavailable`, and the
argument checks both implementations share.

Owns the contract for state that must outlive one worker or be shared between Portico
instances: stick-table entries (a key -> a server name, with a TTL) and rate-limit states
(one GCRA float per key, decided atomically next to the state). `MemoryStore`
(`state/memory.py`) keeps them in the process; `RedisStore` (`state/redis_store.py`) keeps
them in Redis so that several workers and several instances agree.

Never stores anything itself and never touches a socket. Every call of a store is bounded by
that store's own timeout; a store that cannot answer in time raises `StoreUnavailable` and the
caller falls back (the balancing policy for stickiness, a local limiter for rate limits). A
caller must never wrap a store call in `asyncio.timeout`/`wait_for`: cancelling an in-flight
Redis command can leave its connection one reply behind, so that a later command reads another
request's answer (redis-py #2624). The stores bound the wait without cancelling anything.
"""

from __future__ import annotations

import math
from typing import Protocol

from portico.state.gcra import Decision

__all__ = ["Decision", "StateStore", "StoreUnavailable", "check_table", "ttl_ms"]


class StoreUnavailable(Exception):
    """The store could not answer within its timeout (down, unreachable, slow, out of memory).

    Callers catch this one exception to fall back; its message says what failed, for logs.
    Raised promptly: never later than the store's timeout (plus scheduling noise) after the call.
    """


class StateStore(Protocol):
    """Shared state for stickiness and rate limits; every method answers within the store's
    timeout or raises `StoreUnavailable`.

    Keys are bytes (what `portico.http.keys` extracts from a request); server names and table
    names are text. A table name groups one stick table's entries (use the pool's name); it
    must not contain ``{`` or ``}`` (the Redis store uses it as a cluster hash tag).
    """

    name: str  # "memory" | "redis": for logs, metrics and the admin API

    async def get_sticky(self, table: str, key: bytes, ttl: float | None = None) -> str | None:
        """The server stored for `key` in `table`, or None when there is none (or it expired).

        With `ttl` (seconds), a hit's time to live is reset to `ttl` in the same step (expire
        on idle, HAProxy's stick-table `expire`), so one round trip both reads and refreshes.
        """
        ...

    async def set_sticky(
        self,
        table: str,
        key: bytes,
        value: str,
        ttl: float,
        *,
        replace: str | None = None,
        max_entries: int = 0,
    ) -> str:
        """Store `value` for `key` unless another value is already there; return the value now
        stored, which is the existing one when another worker or instance got there first.

        SET NX semantics, atomically: of two instances learning different servers for the
        same key, the first writer wins and both then use its answer. With `replace`, an
        existing entry equal to `replace` is overwritten too (compare-and-set): that is how a
        sticky server that went down is replaced, and if two instances replace it at once
        they still end up agreeing. Storing the value already there refreshes its TTL.
        `max_entries` (> 0) bounds the table: the entries closest to expiry are evicted first.
        """
        ...

    async def touch_sticky(self, table: str, key: bytes, ttl: float) -> bool:
        """Reset the time to live of `key` to `ttl` seconds; False when there is no entry."""
        ...

    async def rate_limit(
        self,
        key: bytes,
        rate: float,
        burst: int,
        now_ms: int | None = None,
        cost: int = 1,
    ) -> Decision:
        """Decide one request of `cost` for `key` with GCRA (`portico.state.gcra.Gcra`)
        at `rate` requests per second and `burst`, recording it when allowed, atomically.

        `now_ms` is the time in milliseconds on the caller's clock; without it the store uses
        its own clock (the Redis server's `TIME`, so instances need no clock agreement). Use
        one or the other for a key, never both. The key is the whole identity of the limit:
        callers namespace it (``b"listener-name:" + client_ip``). Raises ValueError for an
        invalid rate, burst or cost, like `Gcra`.
        """
        ...

    async def count(self, key: bytes, window: float) -> int:
        """Count one hit of `key` in the current fixed window of `window` seconds, and return
        the window's count so far (1 for the first hit), atomically: abuse-ban rules count
        here, so that every worker and instance sharing the store adds to one count."""
        ...

    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


def ttl_ms(ttl: float) -> int:
    """A TTL in seconds as whole milliseconds, rounded up (never 0: that would mean "no TTL"
    to some stores, and "expire at once" to others). Raises ValueError unless finite and > 0."""
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a finite number of seconds > 0, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def check_table(table: str) -> str:
    """`table` itself, once checked: non-empty and free of the hash-tag braces."""
    if not table or "{" in table or "}" in table:
        raise ValueError(f"a table name must be non-empty and have no braces, not {table!r}")
    return table
