"""IP access lists and abuse bans as request filters.

Owns `ClientAddress` (the address a decision is about: the peer's, the PROXY header's, or the
right-most untrusted one of a trusted proxy's X-Forwarded-For / Forwarded chain), `AccessFilter`
(a route's list, or a listener's for clients behind trusted proxies: a denied request gets the
configured answer, 403 by default) and `BanFilter` (a listener's `bans:` rules: a banned key is
refused; requests, or responses of the rule's statuses, are counted per key, and a key over a
rule's count is banned). Listener-level lists for direct clients are applied at accept, by
`portico.listeners.acceptor`, before any byte is read; the decisions are `portico.security`'s.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from portico import tasks
from portico.http.keys import key_function
from portico.http.local import LocalResponse, local_response
from portico.security.access import (
    AccessList,
    AccessPolicy,
    forwarded_client,
    forwarded_for,
    x_forwarded_for,
)
from portico.security.bans import Ban, BanTable
from portico.state.store import StateStore, StoreUnavailable

if TYPE_CHECKING:
    from portico.config.access import BanRule
    from portico.filters.base import FilterRequest

__all__ = ["AccessFilter", "BanFilter", "ClientAddress", "WindowCounter"]

MAX_COUNTED_KEYS: Final = 100_000  # per rule and worker: the oldest windows go first


class ClientAddress:
    """The client's address for access decisions. `trusted`: the peers (after a PROXY header,
    its source) whose forwarding header names the client; None: the peer is the client."""

    __slots__ = ("header", "trusted")

    def __init__(self, trusted: AccessList | None, header: str = "x-forwarded-for") -> None:
        self.trusted = trusted
        self.header = header.encode()

    def __call__(self, exchange: FilterRequest) -> str:
        peer = exchange.client.client_ip
        trusted = self.trusted
        if trusted is None or trusted.match(peer) != "allow":
            return peer
        wanted = self.header
        values = [value for name, value in exchange.headers if name.lower() == wanted]
        if not values:
            return peer
        chain = x_forwarded_for(values) if wanted == b"x-forwarded-for" else forwarded_for(values)
        return forwarded_client(peer, chain, trusted)

    def is_trusted_peer(self, ip: str) -> bool:
        """Whether a connection from `ip` names its clients in a header (then the accept-time
        check must let it in: the decision waits for each request)."""
        return self.trusted is not None and self.trusted.match(ip) == "allow"


def _answer(status: int, body: str) -> LocalResponse:
    data = body.encode()
    return local_response(
        status,
        [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(data)),
            (b"Cache-Control", b"no-store"),
        ],
        data,
    )


class AccessFilter:
    """Refuses requests whose client address the policy denies, with `status` and `body`."""

    name = "access"  # the request phase's stage name
    asynchronous = False

    def __init__(
        self,
        policy: AccessPolicy,
        address: ClientAddress,
        status: int = 403,
        body: str = "403 Forbidden\n",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.address = address
        self.clock = clock
        self._answer = _answer(status, body)
        self.denied = 0

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        if self.policy.allows(self.address(exchange), self.clock()):
            return None
        self.denied += 1
        return self._answer

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        return self.on_request(exchange)


class WindowCounter:
    """Fixed-window hit counts per key, in memory (one worker): `hit` returns the count of the
    window `now` falls in. Bounded: past `max_keys`, the least recently hit keys are dropped."""

    def __init__(self, window: float, max_keys: int = MAX_COUNTED_KEYS) -> None:
        self.window = window
        self.max_keys = max_keys
        self._counts: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # key -> (slot, n)

    def hit(self, key: bytes, now: float) -> int:
        slot = int(now // self.window)
        counts = self._counts
        current = counts.get(key)
        count = current[1] + 1 if current is not None and current[0] == slot else 1
        counts[key] = (slot, count)
        counts.move_to_end(key)
        if len(counts) > self.max_keys:
            counts.popitem(last=False)
        return count


class _Rule:
    """One `bans:` rule compiled: its key function, which responses count, its counter."""

    __slots__ = ("config", "counter", "key_of", "name", "on_response")

    def __init__(self, config: BanRule, name: str) -> None:
        self.config = config
        self.name = name
        self.key_of = key_function(config.key)
        self.counter = WindowCounter(config.window)
        self.on_response = config.status is not None


class BanFilter:
    """A listener's abuse rules. `on_request` refuses a banned key and counts requests for
    rules without statuses; `on_done` counts finished exchanges for rules with statuses. A key
    whose count passes a rule's `count` within its window is banned for `duration`: in `bans`
    (this worker, at once) and through `announce` (the supervisor tells the others).

    Counting is in the shared store with `state.redis` (every worker and instance adds to one
    count per key); without it, per worker (`WindowCounter`): a client spread over N workers
    may then get up to N times the count before a ban, as with per-worker rate limits. The
    ban itself always holds in every worker (and, with Redis, every instance)."""

    name = "bans"  # the request phase's stage name
    asynchronous = False

    def __init__(
        self,
        listener: str,
        rules: Sequence[BanRule],
        bans: BanTable,
        address: ClientAddress,
        announce: Callable[[Ban], None],
        clock: Callable[[], float] = time.time,
        store: StateStore | None = None,
    ) -> None:
        self.listener = listener
        self.store = store  # shared counts (Redis); None: this worker's
        self.bans = bans
        self.address = address
        self.announce = announce
        self.clock = clock
        self.rules = tuple(
            _Rule(rule, rule.name if rule.name is not None else f"bans[{i}]")
            for i, rule in enumerate(rules)
        )
        self._request_rules = tuple(r for r in self.rules if not r.on_response)
        self._response_rules = tuple(r for r in self.rules if r.on_response)
        self._answers = {
            rule.config.answer: _answer(rule.config.answer, _reason(rule.config.answer))
            for rule in self.rules
        }
        self.refused = 0
        self.banned: dict[str, int] = {rule.name: 0 for rule in self.rules}

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        now = self.clock()
        ip = self.address(exchange)
        headers, target = exchange.headers, exchange.target
        for rule in self.rules:
            key = rule.key_of(headers, target, ip).decode("latin-1")
            if self.bans.is_banned(self.listener, key, now):
                self.refused += 1
                return self._answers[rule.config.answer]
        for rule in self._request_rules:
            self._count(rule, rule.key_of(headers, target, ip), now)
        return None

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        return self.on_request(exchange)

    def on_done(self, exchange: FilterRequest, status: int) -> None:
        """A request of this listener ended with `status` (0: the client left first)."""
        rules = self._response_rules
        if not rules or not status:
            return
        now = self.clock()
        ip = ""
        for rule in rules:
            if rule.config.counts(status):
                if not ip:
                    ip = self.address(exchange)
                key = rule.key_of(exchange.headers, exchange.target, ip)
                if self.bans.is_banned(self.listener, key.decode("latin-1"), now):
                    continue  # the ban's own answers count for nothing
                self._count(rule, key, now)

    def _count(self, rule: _Rule, key: bytes, now: float) -> None:
        if self.store is not None:
            tasks.spawn(self._count_shared(rule, key))
            return
        self._counted(rule, key, rule.counter.hit(key, now))

    async def _count_shared(self, rule: _Rule, key: bytes) -> None:
        """Count in the shared store (every worker and instance adds to one count); the
        store unavailable, this worker's own counter."""
        assert self.store is not None
        namespace = b"ban:%s:%s:" % (self.listener.encode(), rule.name.encode())
        try:
            count = await self.store.count(namespace + key, rule.config.window)
        except StoreUnavailable:
            count = rule.counter.hit(key, self.clock())
        self._counted(rule, key, count)

    def _counted(self, rule: _Rule, key: bytes, count: int) -> None:
        if count != rule.config.count + 1:
            return  # under the count, or already banned for this window
        now = self.clock()
        banned = key.decode("latin-1")
        if self.bans.is_banned(self.listener, banned, now):
            return  # banned meanwhile (another worker's ban, relayed): not a second ban
        ban = Ban(self.listener, banned, now + rule.config.duration, rule.name)
        if self.bans.add(ban):
            self.banned[rule.name] += 1
            self.announce(ban)


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}\n"
    except ValueError:
        return f"{status}\n"
