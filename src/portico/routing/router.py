"""L7 routing: which route, and so which pool, one HTTP request takes. *pure*

This module owns `Route` (what the proxy needs once a route is chosen) and `Router`, compiled
once per config from a listener's routes and its default pool, which decides the route of each
request: the first route in file order whose conditions all hold, else the default route. It
never changes a request (`actions.py` does), never does I/O and keeps no per-request state.

How one request stays cheap with hundreds of routes: routes are filed by host (exact names in
a dict, ``*.suffix`` patterns by suffix, routes with no host condition apart), and within each
host bucket by path (`PathIndex`). A request gathers the few sorted candidate lists its host
and path lead to, and checks candidates from the lowest route number up; within a list it
stops at the first that matches or at a number not below the best match found so far in
another list. File order thus wins across buckets: an earlier catch-all path route beats a
later exact-host route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from portico.config.routes import RouteConfig, RouteTimeouts
from portico.http.headers import Header
from portico.routing.actions import RouteActions
from portico.routing.matchers import (
    CompiledMatch,
    Condition,
    PathIndex,
    RequestView,
    WantedHeaders,
    host_name,
)

__all__ = ["DEFAULT_ROUTE_NAME", "Route", "Router"]

DEFAULT_ROUTE_NAME: Final = "default"
# Host values seen -> the host buckets they lead to. Clients repeat a few Host values, so most
# requests skip lower-casing and the suffix walk. Emptied when full, so that made-up Host
# values can neither grow it without bound nor lock out the real ones.
_HOST_MEMO_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """The route a request took: where it goes and what is done on the way.

    `pool` is None for a route that answers itself (`actions.redirect` or `actions.respond`);
    `actions` is None for a route that only chooses a pool; `timeouts` is None, or the pool
    timeouts this route overrides (a None field keeps the pool's). `index` is the route's
    position in the listener's routes, -1 for the default route (`default` is True).
    """

    name: str
    pool: str | None
    actions: RouteActions | None
    timeouts: RouteTimeouts | None
    default: bool
    index: int


class Router:
    """The compiled routes of one listener; `match` chooses a request's route."""

    __slots__ = (
        "_any_host",
        "_by_host",
        "_checks",
        "_count",
        "_exact_hosts",
        "_host_memo",
        "_routes",
        "_wanted",
        "_wildcards",
        "default",
        "routes",
    )

    def __init__(self, routes: Sequence[RouteConfig], default_pool: str) -> None:
        """Use `Router.compile`."""
        compiled = [CompiledMatch.compile(route.match) for route in routes]
        self.routes: tuple[Route, ...] = tuple(
            Route(
                name=route.name if route.name is not None else f"routes[{i}]",
                pool=route.pool,
                actions=RouteActions.from_config(route),
                timeouts=route.timeouts
                if route.timeouts is not None and not route.timeouts.is_empty()
                else None,
                default=False,
                index=i,
            )
            for i, route in enumerate(routes)
        )
        self.default = Route(DEFAULT_ROUTE_NAME, default_pool, None, None, True, -1)
        # per-request lookups
        self._count = len(self.routes)
        self._routes = (*self.routes, self.default)  # number `_count` is the default
        self._checks: tuple[tuple[Condition, ...], ...] = tuple(m.checks for m in compiled)
        self._wanted = WantedHeaders.of(name for m in compiled for name in m.header_names)
        self._exact_hosts: dict[bytes, PathIndex] = {}
        self._wildcards: dict[bytes, PathIndex] = {}  # "*.a.com" filed under b"a.com"
        self._any_host: PathIndex | None = None
        for i, match in enumerate(compiled):
            if match.hosts is None:
                if self._any_host is None:
                    self._any_host = PathIndex()
                self._any_host.add(i, match)
                continue
            for host in match.hosts:
                if host.startswith(b"*."):
                    self._wildcards.setdefault(host[2:], PathIndex()).add(i, match)
                else:
                    self._exact_hosts.setdefault(host, PathIndex()).add(i, match)
        self._by_host = bool(self._exact_hosts or self._wildcards)
        self._host_memo: dict[bytes, tuple[PathIndex, ...]] = {}

    @classmethod
    def compile(cls, routes: Sequence[RouteConfig], default_pool: str) -> Router:
        """Build the router of a listener: its `routes` in order, then `default_pool`."""
        return cls(routes, default_pool)

    def match(
        self, method: bytes, path: bytes, host: bytes | None, headers: Sequence[Header]
    ) -> Route:
        """The first route whose conditions all hold for this request, else the default route.

        `path` is the request target as received (origin form, with its query, or ``*``);
        `host` the Host header value (any case, maybe with a port) or None; `headers` the
        request's fields, read only if a candidate route has a header or cookie condition.
        """
        if not self._count:
            return self.default
        query: bytes | None = None
        mark = path.find(b"?")
        if mark >= 0:
            query = path[mark + 1 :]
            path = path[:mark]

        lists: list[Sequence[int]] = []
        if host is not None and self._by_host:
            buckets = self._host_memo.get(host)
            if buckets is None:
                buckets = self._host_buckets(host)
            for bucket in buckets:
                bucket.collect(path, lists)
        if self._any_host is not None:
            self._any_host.collect(path, lists)

        # The lowest-numbered candidate whose checks hold. Each list is sorted, so a list is
        # left at its first match or at the first number not below the best so far.
        best = self._count
        checks = self._checks
        request: RequestView | None = None
        for candidates in lists:
            for i in candidates:
                if i >= best:
                    break
                conditions = checks[i]
                if not conditions:
                    best = i
                    break
                if request is None:
                    request = RequestView(method, path, query, headers, self._wanted)
                for condition in conditions:
                    if not condition(request):
                        break
                else:
                    best = i
                    break
        return self._routes[best]

    def _host_buckets(self, host: bytes) -> tuple[PathIndex, ...]:
        """The host buckets a Host value leads to: its exact name, then each ``*.suffix``
        pattern it falls under (one or more labels before the suffix)."""
        name = host_name(host)
        found: list[PathIndex] = []
        exact = self._exact_hosts.get(name)
        if exact is not None:
            found.append(exact)
        if self._wildcards:
            dot = name.find(b".")
            while dot >= 0:
                wildcard = self._wildcards.get(name[dot + 1 :])
                if wildcard is not None:
                    found.append(wildcard)
                dot = name.find(b".", dot + 1)
        buckets = tuple(found)
        memo = self._host_memo
        if len(memo) >= _HOST_MEMO_LIMIT:
            memo.clear()
        memo[host] = buckets
        return buckets
