"""One pool's session persistence as a request's exchange uses it: which server a client's
cookie or stick-table key names, and what the response must carry so the client comes back.

Owns `Sticky` (a pool's persistence cookie: insert mode, or HAProxy's prefix mode on the
application's own cookie), `StickBinding` (a pool's stick table and how a request's key is
found) and `Persistence`, the small object the exchange calls at three points: before a server
is chosen (`stick_key`, `lookup`, `cookie_server`, `request_headers`), on the response head
(`response_headers`: the cookie; `to_learn`: what the stick table should learn) and in the
done phase, once the response went out whole (`learn`, in the background). Never picks a
server itself and never fails a request: the pool's `select` honours what is found while that
server is fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from portico import tasks
from portico.config.schema import StickyConfig
from portico.http.headers import Header
from portico.http.keys import key_function
from portico.persistence.cookie import (
    cookie_attributes,
    cookie_value,
    decode,
    encode,
    prefix_set_cookie,
    rewrite_cookie,
    server_token,
    server_tokens,
    set_cookie_value,
    unprefix,
)
from portico.persistence.stick import Named, StickTable

__all__ = ["Learning", "Persistence", "StickBinding", "Sticky"]


class Sticky:
    """A pool's cookie persistence settings, resolved once; the server tokens follow the
    pool's servers (they change when servers are added or removed at run time)."""

    def __init__(
        self,
        name: bytes,
        secret: bytes,
        attributes: bytes,
        max_age: int | None,
        prefix_mode: bool = False,
    ) -> None:
        self.name = name
        self.secret = secret
        self.attributes = attributes
        self.max_age = max_age
        # prefix mode (HAProxy's `cookie NAME prefix`): no cookie of our own; the server token
        # is put in front of the application's session cookie, and taken off before the server
        # sees it
        self.prefix_mode = prefix_mode
        self._tokens: dict[str, str] = {}
        self._for: tuple[Named, ...] | None = None

    @classmethod
    def from_config(cls, config: StickyConfig) -> Sticky:
        attributes = cookie_attributes(
            path=config.path,
            domain=config.domain,
            max_age=config.max_age,
            secure=config.secure,
            httponly=config.httponly,
            samesite=config.samesite,
        )
        secret = config.resolved_secret().encode()
        return cls(
            config.cookie.encode(),
            secret,
            attributes,
            config.max_age,
            prefix_mode=config.mode == "prefix",
        )

    def server_of(self, headers: Sequence[Header], backends: tuple[Named, ...]) -> str | None:
        """The server a valid persistence cookie names, or None (no cookie, tampered, expired,
        foreign, or naming a server no longer in the pool: the policy picks)."""
        for key, value in headers:
            if key.lower() == b"cookie":
                found = cookie_value(value, self.name)
                if found is not None:
                    tokens = self._tokens_for(backends)
                    if self.prefix_mode:
                        parts = unprefix(found)
                        return tokens.get(parts[0]) if parts is not None else None
                    return decode(found, self.secret, tokens, self.max_age, int(time.time()))
        return None

    def strip_prefix(self, headers: list[Header]) -> list[Header]:
        """Prefix mode: the request's headers with the application cookie's own value back."""
        out = []
        for key, value in headers:
            if key.lower() == b"cookie":
                found = cookie_value(value, self.name)
                parts = unprefix(found) if found is not None else None
                if parts is not None:
                    value = rewrite_cookie(value, self.name, parts[1])
            out.append((key, value))
        return out

    def prefix_response(self, headers: list[Header], server: str) -> list[Header]:
        """Prefix mode: the server token in front of the session cookie the application sets."""
        token = server_token(server, self.secret)
        out = []
        for key, value in headers:
            if key.lower() == b"set-cookie":
                value = prefix_set_cookie(value, self.name, token) or value
            out.append((key, value))
        return out

    def _tokens_for(self, backends: tuple[Named, ...]) -> dict[str, str]:
        if self._for is not backends:
            self._tokens = server_tokens((b.name for b in backends), self.secret)
            self._for = backends
        return self._tokens

    def set_cookie(self, server: str) -> Header:
        value = encode(server, self.secret, int(time.time())).encode()
        return (b"Set-Cookie", self.name + b"=" + value + self.attributes)


class StickBinding:
    """A pool's stick table and how a request's key is found (set by the worker, which owns
    the store)."""

    def __init__(self, table: StickTable, key: str, learn_from_response: bool) -> None:
        self.table = table
        self.key_of = key_function(key)
        kind, _, name = key.partition(":")
        self.client_ip_only = kind == "client_ip"
        # a cookie key can be learnt from the server's Set-Cookie (its session starts there)
        self.cookie = name.encode() if kind == "cookie" and learn_from_response else None

    def key(self, headers: Sequence[Header], path: bytes, client_ip: str) -> bytes | None:
        """The request's key; None when it has no header or cookie of that name (no fallback
        to the client address here: a session that has not started yet is not sticky)."""
        key = self.key_of(headers, path, client_ip)
        if not self.client_ip_only and key == client_ip.encode():
            return None
        return key


class Persistence:
    """A pool's session persistence: its cookie, its stick table, or both. Built once per pool;
    the per-request values (the key, the server found) stay with the exchange."""

    __slots__ = ("cookie", "stick")

    def __init__(self, cookie: Sticky | None, stick: StickBinding | None) -> None:
        self.cookie = cookie
        self.stick = stick

    # -- before a server is chosen -------------------------------------------------------------

    def stick_key(self, headers: Sequence[Header], path: bytes, client_ip: str) -> bytes | None:
        """The request's stick-table key; None without a table or without a key."""
        stick = self.stick
        return stick.key(headers, path, client_ip) if stick is not None else None

    async def lookup(self, key: bytes) -> str | None:
        """The server the stick table holds for `key` (bounded by the store's timeout; None
        on a miss or when the store is down: the policy picks)."""
        stick = self.stick
        return await stick.table.lookup(key) if stick is not None else None

    def cookie_server(self, headers: Sequence[Header], backends: tuple[Named, ...]) -> str | None:
        """The server the persistence cookie names, or None."""
        cookie = self.cookie
        return cookie.server_of(headers, backends) if cookie is not None else None

    def request_headers(self, headers: list[Header]) -> list[Header]:
        """The headers to forward: in prefix mode, the application cookie without our token;
        else `headers` itself."""
        cookie = self.cookie
        if cookie is None or not cookie.prefix_mode:
            return headers
        return cookie.strip_prefix(headers)

    # -- on the response head ------------------------------------------------------------------

    def response_headers(
        self,
        headers: list[Header],
        server: str,
        sticky_server: str | None,
        stick_key: bytes | None,
        stick_server: str | None = None,
        *,
        learn: bool = True,
    ) -> list[Header]:
        """The response's headers with what keeps the client on `server` (the one that
        answered): a new cookie when the request's (`sticky_server`) named another or none, the
        token in front of the application's cookie in prefix mode. With `learn`, learns what
        `to_learn` finds at once (the exchange learns in its done phase instead)."""
        if learn and self.stick is not None:
            held = stick_server if self.cookie is not None else stick_server or sticky_server
            pending = self.to_learn(headers, server, held, stick_key)
            if pending is not None:
                self.learn(pending)
        cookie = self.cookie
        if cookie is not None:
            if cookie.prefix_mode:
                return cookie.prefix_response(headers, server)
            if sticky_server != server:
                # a new client, or its server is gone: it sticks to this one from now on
                return [*headers, cookie.set_cookie(server)]
        return headers

    # -- the done phase ---------------------------------------------------------------------

    def to_learn(
        self,
        headers: list[Header],
        server: str,
        stick_server: str | None,
        stick_key: bytes | None,
    ) -> Learning | None:
        """What the stick table should learn from a response of `server` (its head's
        `headers`): `stick_key` -> `server` when the table did not already say so
        (`stick_server`: what it held), or the session a server's Set-Cookie starts; None:
        nothing (no table, no key, or nothing new)."""
        stick = self.stick
        if stick is None:
            return None
        key = stick_key
        if stick.cookie is not None:
            for name, value in headers:
                if name.lower() == b"set-cookie":
                    learnt = set_cookie_value(value, stick.cookie)
                    if learnt:
                        key = learnt
        if not key:
            return None
        if key != stick_key:  # a session the server starts now
            return Learning(key, server, None)
        if stick_server != server:  # unknown so far, or its server is gone
            return Learning(key, server, stick_server)
        return None

    def learn(self, pending: Learning) -> None:
        """Write `pending` to the stick table in the background (bounded by the store's
        timeout; a store that is down loses it: the policy picks next time)."""
        stick = self.stick
        if stick is None:
            return
        tasks.spawn(stick.table.learn(pending.key, pending.server, replacing=pending.replacing))


@dataclass(frozen=True, slots=True)
class Learning:
    """A stick-table entry to write once the response is complete: `key` -> `server`,
    unless the table holds another server than `replacing` (compare-and-set)."""

    key: bytes
    server: str
    replacing: str | None
