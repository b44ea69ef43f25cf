"""Stick tables: a client key (address, header, an application cookie's value) -> the server
that client sticks to, with a TTL refreshed on use and a bound on size, over a `StateStore`.

Owns `StickTable` (one pool's table: lookups, learning, counters, the fallback when the store
is unavailable) and `find_named` (the sticky server among a request's candidates, if it is
there). Whether a table is private to this worker or shared by every instance is the store's
business: `MemoryStore` or `RedisStore`.

Never picks a server by itself and never raises for a store that is down: a lookup that cannot
be answered is a miss (the balancing policy picks), and learning that cannot be stored is
forgotten (the next request tries again). Both are counted in `errors`; the store logs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from portico.state.store import StateStore, StoreUnavailable, check_table, ttl_ms

__all__ = ["StickTable", "find_named"]


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def find_named(candidates: Sequence[N], name: str | None) -> N | None:
    """The candidate called `name`, or None (no name, or that server is not a candidate now:
    down, draining, ejected, full, already tried, or removed from the pool). *pure*"""
    if name is None:
        return None
    for candidate in candidates:
        if candidate.name == name:
            return candidate
    return None


class StickTable:
    """One pool's stick table: key -> server name, kept `ttl` seconds after its last use, at
    most `size` entries (0: bounded only by the TTL and the store's own limits).

    Typical use per request, with the key from the request:
      sticky = await table.lookup(key)              # None: miss, or the store is down
      chosen = find_named(candidates, sticky) or policy.pick(...)
      if chosen.name != sticky:
          agreed = await table.learn(key, chosen.name, replacing=sticky)
          # agreed != chosen.name: another instance won the race; use it if it is a candidate
    """

    def __init__(self, store: StateStore, name: str, ttl: float, size: int = 0) -> None:
        ttl_ms(ttl)  # ValueError now, not on the first request
        if size < 0:
            raise ValueError(f"size must be >= 0 entries, not {size!r}")
        self.store = store
        self.name = check_table(name)
        self.ttl = ttl
        self.size = size
        # counters, for metrics and the admin API
        self.hits = 0
        self.misses = 0
        self.learned = 0
        self.conflicts = 0  # learn() found another server already stored (a race lost)
        self.errors = 0  # calls the store could not answer (a fallback was used)

    async def lookup(self, key: bytes) -> str | None:
        """The server `key` sticks to, refreshing the entry's TTL; None on a miss, for an empty
        key, or when the store is unavailable (counted in `errors`)."""
        if not key:
            return None
        try:
            server = await self.store.get_sticky(self.name, key, self.ttl)
        except StoreUnavailable:
            self.errors += 1
            return None
        if server is None:
            self.misses += 1
        else:
            self.hits += 1
        return server

    async def learn(self, key: bytes, server: str, *, replacing: str | None = None) -> str:
        """Record that `key` sticks to `server` unless another server is already recorded
        (other than `replacing`, the sticky server found unfit); return the server recorded
        now, which every worker and instance sharing the store agrees on. When the store is
        unavailable, `server` itself (nothing is recorded)."""
        if not key:
            return server
        try:
            stored = await self.store.set_sticky(
                self.name, key, server, self.ttl, replace=replacing, max_entries=self.size
            )
        except StoreUnavailable:
            self.errors += 1
            return server
        if stored == server:
            self.learned += 1
        else:
            self.conflicts += 1
        return stored
