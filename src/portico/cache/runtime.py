"""The cache as an exchange meets it: look a request up, forward it, store the answer.

Owns `Cache` (one worker's memory tier, its counters and the requests in flight per key),
`RouteCache` (a route's rules over that tier) and `CacheExchange`, the cache's side of one
request: `lookup` answers from the store, says to wait for a collapsed request in flight, or
lets the request go to the origin (as it is, or made conditional to validate a stored
response); `on_response` decides on the origin's head (store it, refresh a stored response
with a 304, serve a stored one when the origin failed); `feed`/`end`/`abort` tee the body
into the store as it streams to the client, committing only a complete body. The decisions
are `portico.cache.policy`'s; this module keeps time (`clock`), state and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import Enum
from typing import Final

from portico.cache.directives import (
    CacheControl,
    field_values,
    first_value,
    list_tokens,
    parse_cache_control,
)
from portico.cache.disk import DiskEntry, DiskStore, DiskWriter
from portico.cache.key import KeyRule, effective_uri
from portico.cache.policy import (
    SAFE_METHODS,
    Reuse,
    StoredHead,
    current_age,
    freshens,
    freshness_lifetime,
    invalidated_uris,
    may_serve_stale_on_error,
    may_store,
    reuse,
    stored_fields,
    updated_by_304,
    validation_headers,
    varies_match,
)
from portico.cache.serve import answer, request_fields
from portico.cache.status import cache_status
from portico.cache.store import Entry, MemoryStore
from portico.http.headers import Header
from portico.http.local import LocalResponse, local_response

__all__ = ["Cache", "CacheCounters", "CacheExchange", "CacheRules", "RouteCache"]

_ONLY_IF_CACHED: Final = local_response(
    504,
    [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Cache-Control", b"no-store")],
    b"504 Gateway Timeout: not in cache (only-if-cached)\n",
)
# Request fields that make an answer this request's own (not shared by plain hits).
_PER_REQUEST: Final = frozenset({b"range", b"if-none-match", b"if-modified-since"})
# Status codes on which a stale response may stand in for the origin's answer (RFC 5861 §4:
# "an error", read as the server errors a gateway sees).
_ERRORS: Final = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class CacheRules:
    """A route's cache settings (config `routes[].cache`)."""

    key: KeyRule = field(default_factory=KeyRule)
    heuristic_fraction: float = 0.1  # RFC 9111 §4.2.2's "typical" 10%
    heuristic_max: float = 86400.0
    max_entry: int = 8 * 1024 * 1024
    collapse: bool = True
    collapse_timeout: float = 5.0
    max_waiters: int = 1024
    cache_status: bool = True
    stale_if_unreachable: float = 0.0  # seconds of staleness served while the origin is down


@dataclass(slots=True)
class CacheCounters:
    """One route's cache counters in one worker."""

    hits: int = 0
    misses: int = 0
    stale: int = 0  # stale responses served (max-stale, stale-while-revalidate, stale-if-error)
    revalidations: int = 0  # conditional requests sent to validate a stored response
    stored: int = 0  # responses stored


class _Flight:
    """A request gone to the origin for one key; others for that key wait for its end."""

    __slots__ = ("done", "started", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.waiters = 0
        self.started = started  # the cache's clock


Found = Entry | DiskEntry  # a stored response, in memory or on disk


class Cache:
    """One worker's cache: the memory tier (and the disk tier, shared with the other workers),
    counters per route, the requests in flight."""

    def __init__(
        self,
        max_bytes: int,
        max_entry: int,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop | None = None,
        disk: DiskStore | None = None,
    ) -> None:
        self.store = MemoryStore(max_bytes, max_entry)
        self.disk = disk
        self.clock = clock
        self._loop = loop
        self.counters: dict[tuple[str, str], CacheCounters] = {}  # by (listener, route)
        self.key_rules: set[KeyRule] = set()  # the routes' (a purge by URL applies each)
        self.flights: dict[bytes, _Flight] = {}
        self.refreshing: set[bytes] = set()  # keys with a background refresh under way
        self.pending = 0  # body bytes being teed into memory now, all requests together
        # told each URI an unsafe request invalidated here (the worker tells the others)
        self.on_invalidate: Callable[[bytes], None] | None = None

    def route(self, name: tuple[str, str], rules: CacheRules) -> RouteCache:
        """The cache of route `name` (listener, route)."""
        counters = self.counters.setdefault(name, CacheCounters())
        self.key_rules.add(rules.key)
        return RouteCache(self, name, rules, counters)

    def flight(self, key: bytes) -> _Flight:
        """A request for `key` goes to the origin; the others wait for it (see `land`)."""
        loop = self._loop or asyncio.get_running_loop()
        old = self.flights.get(key)
        if old is not None and not old.done.done():
            old.done.set_result(None)  # overdue: its waiters look again now
        made = self.flights[key] = _Flight(loop, self.clock())
        return made

    def land(self, key: bytes, flight: _Flight | None) -> None:
        """The request in flight for `key` ended (stored or not): its waiters look again."""
        if flight is not None and self.flights.get(key) is flight:
            del self.flights[key]
        if flight is not None and not flight.done.done():
            flight.done.set_result(None)

    def purge_uri(self, uri: bytes) -> int:
        """Drop what is stored for `uri` (absolute), under every route's key rules."""
        return sum(self.remove_uri(rule.uri(uri)) for rule in self.key_rules)

    def remove_uri(self, uri: bytes) -> int:
        """Drop every key of `uri` in both tiers."""
        removed = self.store.remove_uri(uri)
        if self.disk is not None:
            removed += self.disk.remove_uri(uri)
        return removed

    def remove(self, entry: Found) -> None:
        """Drop one stored response (it can no longer be used), from both tiers."""
        if isinstance(entry, Entry):
            self.store.remove(entry)
        if self.disk is not None:
            self.disk.remove(entry.uri, entry.key, entry.head)

    def refreshed(self, entry: Found, head: StoredHead) -> None:
        """A 304 updated `entry` (in memory; on disk, the file is written anew)."""
        if isinstance(entry, Entry):
            self.store.refreshed(entry, head)
        elif self.disk is not None:
            self.disk.refresh(entry, head)
            entry.head = head

    def purge_tag(self, tag: bytes) -> int:
        removed = self.store.remove_tag(tag)
        if self.disk is not None:
            removed += self.disk.remove_tag(tag)
        return removed


@dataclass(slots=True)
class RouteCache:
    """A route's view of the worker's cache."""

    cache: Cache
    name: tuple[str, str]
    rules: CacheRules
    counters: CacheCounters = field(default_factory=CacheCounters)

    def exchange(
        self,
        method: bytes,
        scheme: str,
        host: bytes | None,
        key_target: bytes,
        target: bytes,
        headers: list[Header],
    ) -> CacheExchange:
        """The cache's side of a request for `key_target` (as the client sent it) that goes to
        the origin as `target` (after the route's rewrites)."""
        uri = self.rules.key.uri(effective_uri(scheme, host, key_target))
        return CacheExchange(self, method, uri, target, headers)


class Step(Enum):
    """What `CacheExchange.lookup` tells the exchange to do."""

    ANSWER = 1  # send `response`
    FORWARD = 2  # go to the origin (made conditional by `CacheExchange.conditional`)
    WAIT = 3  # await `wait` (a collapsed request in flight), then call lookup again


def _tags(headers: Sequence[Header]) -> frozenset[bytes]:
    """The origin's purge tags: Cache-Tag (comma-separated) and Surrogate-Key (spaces)."""
    tags: set[bytes] = set()
    for value in field_values(headers, b"cache-tag"):
        tags.update(t.strip() for t in value.split(b",") if t.strip())
    for value in field_values(headers, b"surrogate-key"):
        tags.update(value.split())
    return frozenset(tags)


class CacheExchange:
    """The cache's side of one request (see the module docstring)."""

    __slots__ = (
        "_body",
        "_body_size",
        "_collapsed",
        "_disk_writer",
        "_fields",
        "_flight",
        "_fwd",
        "_held",
        "_length",
        "_request_cc",
        "_request_time",
        "_route",
        "_stale",
        "_status",
        "_stored_head",
        "_validating",
        "background",
        "headers",
        "key",
        "method",
        "response",
        "spawn_refresh",
        "target",
        "uri",
        "wait",
    )

    def __init__(
        self, route: RouteCache, method: bytes, uri: bytes, target: bytes, headers: list[Header]
    ) -> None:
        self._route = route
        self.method = method
        self.target = target  # as sent to the origin
        self.headers = headers
        self._fields = fields = request_fields(headers)  # the ones the cache reads
        self.uri = uri  # the effective request URI, less the ignored query parameters
        self.key = route.rules.key.key(uri, headers)
        self._request_cc: CacheControl = parse_cache_control(fields.get(b"cache-control", ()))
        self.response: LocalResponse | None = None
        self.wait: asyncio.Future[None] | None = None
        self.background = False  # a stale-while-revalidate refresh: no client waits on it
        # how such a refresh is sent (set by the proxy, which owns the pools); None: never
        self.spawn_refresh: Callable[[CacheExchange], None] | None = None
        self._validating: Found | None = None  # the stored response being validated
        self._stale: Found | None = None  # the stored response the origin is asked about
        self._flight: _Flight | None = None
        self._collapsed = False  # waited once already: never waits twice
        self._fwd = "uri-miss"
        self._request_time = 0.0
        self._stored_head: StoredHead | None = None  # the head being stored (a tee is open)
        self._body: list[bytes] | None = None  # None: not kept in memory
        self._body_size = 0
        self._held = 0  # bytes of it held in memory (counted in the cache's `pending`)
        self._disk_writer: DiskWriter | None = None
        self._length: int | None = None
        self._status = 0

    # -- the request ------------------------------------------------------------------------

    def lookup(self) -> Step:
        """Answer from the store, wait for the same key's request in flight, or forward."""
        route = self._route
        cache = route.cache
        now = cache.clock()
        self._request_time = now
        method = self.method
        if method not in (b"GET", b"HEAD"):
            self._fwd = "method"  # RFC 9211 §2.2: the method's semantics require forwarding
            return Step.FORWARD  # unsafe ones invalidate on their answer (on_response)
        request_cc = self._request_cc
        entry = self._find()
        if entry is not None:
            rules = route.rules
            head = entry.head
            lifetime = freshness_lifetime(head, rules.heuristic_fraction, rules.heuristic_max)
            pragma = self._fields.get(b"pragma")
            pragma_no_cache = pragma is not None and b"no-cache" in list_tokens(pragma)
            decision = reuse(head, request_cc, now, lifetime, pragma_no_cache)
            try:
                if decision is Reuse.FRESH:
                    self.response = self._serve(entry, now, lifetime, None)
                    route.counters.hits += 1
                    return Step.ANSWER
                if decision is Reuse.STALE_OK or decision is Reuse.STALE_REVALIDATE:
                    self.response = self._serve(entry, now, lifetime, "stale")
                    route.counters.hits += 1
                    route.counters.stale += 1
                    if decision is Reuse.STALE_REVALIDATE:
                        self._refresh_in_background(entry)
                    return Step.ANSWER
            except OSError:  # its file went away (evicted, purged) since it was found
                return self._go(True)
            if request_cc.only_if_cached:
                self.response = _ONLY_IF_CACHED
                return Step.ANSWER
            self._fwd = "request" if request_cc.no_cache else "stale"
            self._stale = entry
            if head.etag is not None or head.last_modified is not None:
                self._validating = entry
        elif request_cc.only_if_cached:
            self.response = _ONLY_IF_CACHED  # RFC 9111 §5.2.1.7
            return Step.ANSWER
        return self._go(entry is None)

    def _go(self, miss: bool) -> Step:
        """Forward, or wait behind the request already in flight for this key."""
        route = self._route
        cache = route.cache
        rules = route.rules
        if rules.collapse and not self._collapsed and not self.background:
            flight = cache.flights.get(self.key)
            if flight is None or cache.clock() - flight.started > rules.collapse_timeout:
                # none in flight, or one overdue (its waiters gave up on it already): this one
                # goes, and the next ones wait for it
                self._flight = cache.flight(self.key)
            elif flight.waiters < rules.max_waiters:
                flight.waiters += 1
                self._collapsed = True
                self.wait = flight.done
                return Step.WAIT
        if miss:
            route.counters.misses += 1
        if self._validating is not None:
            route.counters.revalidations += 1
        return Step.FORWARD

    async def waited(self) -> Step:
        """Wait (bounded) for the request in flight, then look again."""
        wait = self.wait
        assert wait is not None
        self.wait = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(wait), self._route.rules.collapse_timeout)
        self._validating = None
        self._stale = None
        return self.lookup()

    def conditional(self, headers: list[Header]) -> list[Header] | None:
        """The request fields `headers` made conditional on the stored response being
        validated (RFC 9111 §4.3.1); None when the request goes as it is."""
        entry = self._validating
        return None if entry is None else validation_headers(headers, entry.head)

    def _find(self) -> Found | None:
        """The stored variant this request selects (RFC 9111 §4.1), or None: in memory, else
        on disk (brought into memory when it fits there)."""
        cache = self._route.cache
        variants = cache.store.variants(self.key)
        for entry in variants:
            if varies_match(entry.head, self.headers):
                return entry
        if variants:
            self._fwd = "vary-miss"
        disk = cache.disk
        if disk is None:
            return None
        found = disk.lookup(self.uri, self.key, self.headers)
        if found is None:
            return None
        if not varies_match(found.head, self.headers):
            self._fwd = "vary-miss"
            return None
        if cache.store.fits(found.body.length):
            try:
                body = found.body.read()
            except OSError:
                return None
            if len(body) == found.body.length:
                entry = Entry(found.key, found.uri, found.head, body, found.tags)
                if cache.store.put(entry):
                    return entry
        return found

    def _serve(
        self,
        entry: Found,
        now: float,
        lifetime: float,
        detail: str | None,
        *,
        forwarded: bool = False,
        fwd_status: int | None = None,
    ) -> LocalResponse:
        """The stored `entry` as the answer; `forwarded` when the origin was asked first (a
        304 validated it, or it stands in for an error): RFC 9211 then says fwd, not hit."""
        age = current_age(entry.head, now)
        plain = (
            not forwarded
            and not self._collapsed
            and isinstance(entry, Entry)
            and not (self._fields.keys() & _PER_REQUEST)
        )
        if plain:
            # the same answer for every plain hit within one second of age: built (and
            # serialised by the edge) once per second, not once per request
            assert isinstance(entry, Entry)
            memo = entry.memo
            if memo is not None and memo[0] == int(age) and memo[1] == detail:
                return memo[2]
        member = None
        if self._route.rules.cache_status:
            member = cache_status(
                hit=not forwarded,
                fwd=self._fwd if forwarded else None,
                fwd_status=fwd_status,
                collapsed=self._collapsed and not forwarded,
                ttl=lifetime - age,
                key=self.uri,
                detail=detail,
            )
        served = answer(entry.head, entry.body, self.method, self._fields, age, member)
        if plain:
            assert isinstance(entry, Entry)
            entry.memo = (int(age), detail, served)
        return served

    def _refresh_in_background(self, entry: Found) -> None:
        """RFC 5861 §3: one refresh per key at a time, sent by the proxy's refresher."""
        cache = self._route.cache
        if self.spawn_refresh is None or self.key in cache.refreshing:
            return
        refresh = CacheExchange(self._route, b"GET", self.uri, self.target, self.headers)
        refresh.background = True
        refresh._request_time = cache.clock()
        head = entry.head
        if head.field(b"etag") is not None or head.field(b"last-modified") is not None:
            refresh._validating = entry
        refresh._fwd = "stale"
        cache.refreshing.add(self.key)
        self._route.counters.revalidations += 1
        self.spawn_refresh(refresh)

    # -- the response -----------------------------------------------------------------------

    def on_response(
        self, status: int, headers: list[Header], length: int | None
    ) -> tuple[list[Header], LocalResponse | None]:
        """The origin's head: the fields to send on, and an answer that replaces the origin's
        (a stored response refreshed by a 304, or one standing in for an error). Opens the tee
        when the response will be stored (`feed`, `end`)."""
        route = self._route
        cache = route.cache
        now = cache.clock()
        method = self.method
        if method not in SAFE_METHODS:
            # RFC 9111 §4.4
            for uri in invalidated_uris(method, status, self.uri, headers):
                filtered = route.rules.key.uri(uri)
                cache.remove_uri(filtered)
                if cache.on_invalidate is not None:
                    cache.on_invalidate(filtered)
            return self._with_status(headers, status, False), None
        entry = self._validating
        rules = route.rules
        if entry is not None and status == 304:
            head = updated_by_304(entry.head, headers, self._request_time, now)
            self._land()
            if head is None:  # another representation: the stored one cannot be used
                cache.remove(entry)
                return self._with_status(headers, status, False), None
            cache.refreshed(entry, head)
            if self.background:
                return headers, None
            lifetime = freshness_lifetime(head, rules.heuristic_fraction, rules.heuristic_max)
            try:
                served = self._serve(entry, now, lifetime, None, forwarded=True, fwd_status=304)
            except OSError:  # its file went away meanwhile: the 304 is all there is
                return self._with_status(headers, status, False), None
            return headers, served
        stale = self._stale
        if stale is not None and status in _ERRORS:
            entry = stale
            lifetime = freshness_lifetime(entry.head, rules.heuristic_fraction, rules.heuristic_max)
            if not self.background and may_serve_stale_on_error(
                entry.head, self._request_cc, now, lifetime
            ):
                with contextlib.suppress(OSError):  # else: its file went away, the error stands
                    served = self._serve(
                        entry, now, lifetime, "stale-if-error", forwarded=True, fwd_status=status
                    )
                    self._land()
                    route.counters.stale += 1
                    return headers, served
        authorized = b"authorization" in self._fields
        storable = (
            method == b"GET"
            and may_store(method, status, headers, self._request_cc, authorized)
            and (length is None or length <= self._max_entry())
            # a Range request's 206 is not kept (only whole responses are); its 200 may be
            and (status == 200 or b"range" not in self._fields)
        )
        if entry is not None and status == 200 and method == b"HEAD":
            # §4.3.5: a HEAD's 200 freshens the stored GET when it describes the same
            # representation, else that one is no longer to be used
            body = entry.body
            size = len(body) if isinstance(body, bytes) else body.length
            if freshens(entry.head, size, headers):
                refreshed = updated_by_304(entry.head, headers, self._request_time, now)
                if refreshed is not None:
                    cache.refreshed(entry, refreshed)
            else:
                cache.remove(entry)
        elif entry is not None and status != 304 and method == b"GET":
            # §4.3.3: a full response replaces the stored one (stored again below if it may be)
            cache.remove(entry)
        if storable:
            self._drop_held()  # a response before this one (another server's) is forgotten
            self._body_size = 0
            fields = stored_fields(headers)
            if first_value(fields, b"date") is None:
                # RFC 9110 §6.6.1: a cache records when a response without Date came
                fields = (*fields, (b"Date", formatdate(now, usegmt=True).encode("ascii")))
            self._stored_head = StoredHead.make(
                status, fields, self._request_time, now, self.headers
            )
            self._status = status
            self._length = length
            self._body = [] if length is None or cache.store.fits(length) else None
            disk = cache.disk
            if disk is not None and (length is None or length <= disk.max_entry):
                self._disk_writer = disk.writer()
        else:
            self._land()
        return self._with_status(headers, status, storable), None

    def _with_status(self, headers: list[Header], status: int, stored: bool) -> list[Header]:
        if not self._route.rules.cache_status or self.background:
            return headers
        fwd_status = status if self._validating is not None else None
        member = cache_status(hit=False, fwd=self._fwd, fwd_status=fwd_status, stored=stored)
        return [*headers, (b"Cache-Status", member)]

    def _max_entry(self) -> int:
        """The largest body stored: the route's limit, within the tiers' own."""
        cache = self._route.cache
        tier = (
            cache.store.max_entry
            if cache.disk is None
            else max(cache.store.max_entry, cache.disk.max_entry)
        )
        return min(self._route.rules.max_entry, tier)

    def on_failed(self, unreachable: bool = True) -> LocalResponse | None:
        """No response came from the origin (`unreachable`: it could not be reached, or its
        connection broke or timed out): a stale stored response may answer (RFC 5861 §4's
        stale-if-error; and, when unreachable, within the route's `stale_if_unreachable` as
        RFC 9111 §4.2.4 lets a disconnected cache), else the proxy's error stands."""
        entry = self._stale
        self.abort()
        if entry is None or self.background:
            return None
        rules = self._route.rules
        now = self._route.cache.clock()
        lifetime = freshness_lifetime(entry.head, rules.heuristic_fraction, rules.heuristic_max)
        window = rules.stale_if_unreachable if unreachable else 0.0
        if may_serve_stale_on_error(entry.head, self._request_cc, now, lifetime, window):
            try:
                detail = "origin-unreachable" if unreachable else "stale-if-error"
                served = self._serve(entry, now, lifetime, detail, forwarded=True)
            except OSError:
                return None
            self._route.counters.stale += 1
            return served
        return None

    # -- the body (a tee) -------------------------------------------------------------------

    @property
    def storing(self) -> bool:
        return self._stored_head is not None

    def feed(self, data: bytes | memoryview) -> None:
        if self._stored_head is None:
            return
        self._body_size += len(data)
        if self._body_size > self._max_entry():
            self.abort()  # too large to keep: the client still gets all of it
            return
        body = self._body
        if body is not None:
            cache = self._route.cache
            size = len(data)
            # bodies being teed into memory are bounded all together by the tier's size
            if cache.store.fits(self._body_size) and cache.pending + size <= cache.store.max_bytes:
                body.append(bytes(data))
                cache.pending += size
                self._held += size
            else:
                self._drop_held()  # on disk only, if at all
        writer = self._disk_writer
        if writer is not None and not writer.write(data):
            self._disk_writer = None
        if self._body is None and self._disk_writer is None:
            self.abort()

    def end(self) -> None:
        """The whole body went through: store it (when its length is the one announced)."""
        head = self._stored_head
        writer, self._disk_writer = self._disk_writer, None
        if head is not None:
            self._stored_head = None
            body = self._body
            self._drop_held()
            whole = self._length is None or self._length == self._body_size
            stored = False
            tags = _tags(head.headers)
            if whole and body is not None:
                entry = Entry(self.key, self.uri, head, b"".join(body), tags)
                stored = self._route.cache.store.put(entry)
            if writer is not None:
                if whole:
                    stored = writer.commit(self.key, self.uri, head, tags) or stored
                else:
                    writer.abort()
            if stored:
                self._route.counters.stored += 1
        elif writer is not None:
            writer.abort()
        self._land()

    def _drop_held(self) -> None:
        """The body teed into memory is let go (stored, dropped, or too much at once)."""
        self._body = None
        self._route.cache.pending -= self._held
        self._held = 0

    def abort(self) -> None:
        """The response ended incomplete (or is not kept): nothing is stored."""
        self._stored_head = None
        self._drop_held()
        writer, self._disk_writer = self._disk_writer, None
        if writer is not None:
            writer.abort()
        self._land()

    def _land(self) -> None:
        cache = self._route.cache
        if self.background:
            cache.refreshing.discard(self.key)
        flight, self._flight = self._flight, None
        cache.land(self.key, flight)
