"""Servers found in DNS: one task per `dns:`/`srv:` entry, in the supervisor.

Owns the schedule (look up again when the answer's TTL runs out, bounded by
`resolver.min_ttl`/`max_ttl`), the last good set of each entry (kept when a lookup fails or
names nothing: logged, counted), and the changes handed to the supervisor (`Sink`): servers to
add (with slow start, except the set Portico starts with), to drain and then remove, and to
re-weight. Runs once per instance, like the active health checks: N workers never mean N times
the DNS traffic. Never touches a worker or a pool itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from portico import tasks
from portico.config.schema import Config, DiscoveryConfig
from portico.discovery.plan import Changes, Found, LookupFailed, changes, next_lookup

if TYPE_CHECKING:
    from portico.discovery.lookup import Lookup

__all__ = ["Discovery", "Found", "Key", "Sink"]

log = logging.getLogger("portico.discovery")

Key = tuple[str, str]  # (pool, entry key: "dns app.internal:8080" or "srv _http._tcp.x")


class Sink(Protocol):
    """The supervisor, as discovery sees it."""

    def discovered(self, pool: str, change: Changes, *, initial: bool) -> None: ...


class Discovery:
    """Looks up every discovery entry of `config` and reports what changes to `sink`.

    `known`: the last good sets from the discovery this one replaces (a reload), so servers
    of unchanged entries stay while the new workers start, with no gap and no slow start.
    """

    def __init__(
        self, config: Config, sink: Sink, known: Mapping[Key, tuple[Found, ...]] | None = None
    ) -> None:
        self.sink = sink
        self.settings = config.resolver
        self.entries: dict[Key, DiscoveryConfig] = {
            (pool, entry.key): entry
            for pool, pool_config in config.pools.items()
            for entry in pool_config.discover
        }
        self.lookup: Lookup | None = None
        if self.entries:  # dnspython is imported only by configs that name servers in DNS
            from portico.discovery.lookup import Lookup

            self.lookup = Lookup(config.resolver)
        self.known: dict[Key, tuple[Found, ...]] = {
            key: found for key, found in (known or {}).items() if key in self.entries
        }
        self.failures: dict[Key, int] = dict.fromkeys(self.entries, 0)
        self.lookups: dict[Key, int] = dict.fromkeys(self.entries, 0)
        self.last_error: dict[Key, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ttl: dict[Key, float | None] = {}

    def carried(self) -> dict[Key, tuple[Found, ...]]:
        """The sets kept from before a reload (given to the new workers at once)."""
        return dict(self.known)

    async def first(self) -> None:
        """Look up every entry not known yet, once, in parallel (at start, before workers
        start: they begin with these servers). Bounded by the resolver's timeout."""
        pending = [key for key in self.entries if key not in self.known]
        ttls = await asyncio.gather(*(self._once(key, initial=True) for key in pending))
        self._ttl.update(zip(pending, ttls, strict=True))

    def start(self) -> None:
        for key in self.entries:
            self._tasks.append(tasks.spawn(self._run(key)))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _once(self, key: Key, *, initial: bool) -> float | None:
        """One lookup of `key`; its TTL, or None if it failed (the last good set stays)."""
        assert self.lookup is not None
        entry = self.entries[key]
        self.lookups[key] += 1
        try:
            found, ttl = await self.lookup.lookup(entry)
        except LookupFailed as exc:
            self.failures[key] += 1
            had = len(self.known.get(key, ()))
            if self.last_error.get(key) != str(exc):  # one line per new cause
                log.warning(
                    "pool %s: %s failed (%s); keeping the last good set (%d server(s))",
                    key[0],
                    entry.key,
                    exc,
                    had,
                )
            self.last_error[key] = str(exc)
            return None
        if key in self.last_error:
            log.info("pool %s: %s resolves again", key[0], entry.key)
            del self.last_error[key]
        before = self.known.get(key, ())
        change = changes(before, found)
        self.known[key] = tuple(found)
        if change:
            log.info(
                "pool %s: %s: +%s -%s%s",
                key[0],
                entry.key,
                ",".join(s.name for s in change.added) or "0",
                ",".join(change.removed) or "0",
                f" reweighted {','.join(s.name for s in change.reweighted)}"
                if change.reweighted
                else "",
            )
            self.sink.discovered(key[0], change, initial=initial)
        return ttl

    async def _run(self, key: Key) -> None:
        settings = self.settings
        ttl = self._ttl.get(key)  # from `first`; None: failed, or carried over a reload
        first = key not in self.known and key not in self._ttl  # new in a reload: look now
        while True:
            if not first:
                await asyncio.sleep(next_lookup(ttl, settings.min_ttl, settings.max_ttl))
            first = False
            try:
                ttl = await self._once(key, initial=False)
            except Exception:  # a bug must not end discovery for good
                log.exception("pool %s: %s: lookup crashed", key[0], key[1])
                ttl = None
