"""The in-process state store: stick tables and rate-limit states in this worker's memory.

Owns `MemoryStore`, the default `StateStore` for one instance. Its state is private to the
process: with `workers > 1` each worker has its own stick tables and its own rate-limit counts
(a client spread over N workers may get up to N times the limit, and may land on a different
server per worker). Bounded: each table holds at most `max_entries` entries (least recently
used evicted first) and each (rate, burst) limiter at most `max_rate_keys` keys.

Never awaits anything (its coroutines finish without suspending), never raises
`StoreUnavailable` and never touches a socket; time comes from the injected clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from portico.state.gcra import Decision, RateLimiter
from portico.state.store import check_table, ttl_ms

__all__ = ["MemoryStore"]


class MemoryStore:
    """Stick tables and rate limits in memory, for one process.

    Each table is an `OrderedDict` in least-recently-used order (a read with a TTL, a touch or
    a write moves an entry to the end), so eviction is `popitem(last=False)`: O(1), and since a
    table's entries share one TTL, the least recently used entry is also the next to expire.
    Expired entries are dropped when they are looked at or reach the front.
    """

    name = "memory"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 100_000,
        max_rate_keys: int = 100_000,
    ) -> None:
        if max_entries < 1 or max_rate_keys < 1:
            raise ValueError("max_entries and max_rate_keys must be >= 1")
        self.clock = clock
        self.max_entries = max_entries  # per table, unless a call asks for fewer
        self.max_rate_keys = max_rate_keys  # per (rate, burst) limiter
        # state: table -> key -> (server, expires at on `clock`)
        self._tables: dict[str, OrderedDict[bytes, tuple[str, float]]] = {}
        self._limiters: dict[tuple[float, int], RateLimiter] = {}
        self._counts: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # key -> (window, n)
        # counters, for metrics
        self.evicted = 0  # live entries dropped because a table was full

    # -- stick tables ----------------------------------------------------------------------------

    async def get_sticky(self, table: str, key: bytes, ttl: float | None = None) -> str | None:
        entries = self._tables.get(table)
        if entries is None:
            return None
        entry = entries.get(key)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            del entries[key]
            return None
        if ttl is not None:
            entries[key] = (entry[0], now + ttl_ms(ttl) / 1000)
            entries.move_to_end(key)
        return entry[0]

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
        expires = ttl_ms(ttl) / 1000
        entries = self._tables.get(table)
        if entries is None:
            entries = self._tables[check_table(table)] = OrderedDict()
        now = self.clock()
        entry = entries.get(key)
        if entry is not None and entry[1] > now and entry[0] != value and entry[0] != replace:
            return entry[0]  # someone else's live entry: NX keeps it
        entries[key] = (value, now + expires)
        entries.move_to_end(key)
        limit = min(max_entries, self.max_entries) if max_entries > 0 else self.max_entries
        while len(entries) > limit:
            _, (_, expires_at) = entries.popitem(last=False)
            if expires_at > now:
                self.evicted += 1
        return value

    async def touch_sticky(self, table: str, key: bytes, ttl: float) -> bool:
        return await self.get_sticky(table, key, ttl) is not None

    # -- rate limits ------------------------------------------------------------------------------

    async def rate_limit(
        self,
        key: bytes,
        rate: float,
        burst: int,
        now_ms: int | None = None,
        cost: int = 1,
    ) -> Decision:
        limiter = self._limiters.get((rate, burst))
        if limiter is None:
            limiter = RateLimiter(rate, burst, self.max_rate_keys)  # validates rate and burst
            self._limiters[(rate, burst)] = limiter
        now = now_ms / 1000 if now_ms is not None else self.clock()
        return limiter.check(key, now, cost)

    async def count(self, key: bytes, window: float) -> int:
        slot = int(self.clock() // window)
        counts = self._counts
        current = counts.get(key)
        value = current[1] + 1 if current is not None and current[0] == slot else 1
        counts[key] = (slot, value)
        counts.move_to_end(key)
        if len(counts) > self.max_rate_keys:
            counts.popitem(last=False)
        return value

    async def close(self) -> None:
        self._counts.clear()
        self._tables.clear()
        self._limiters.clear()

    def __len__(self) -> int:
        """Stick-table entries held, expired ones not yet dropped included."""
        return sum(len(entries) for entries in self._tables.values())
