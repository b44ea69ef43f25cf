"""What the proxy is given: one listener's settings, and what one worker's connections share.

Owns `HttpListenerSettings` (a listener's rules, resolved from the config once per config
version), `Http2Settings`, and `ProxyContext`: the narrow part of a worker that client
connections and exchanges use (the loop, the counters, the pools by name, the open connections
and the per-client connection counts). The worker builds one and hands it to every connection;
nothing here imports the worker, so the proxy and the listeners sit below it (lower layers
never import upper ones: see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from portico.http.headers import Header
from portico.observe.stats import WorkerStats
from portico.upstreams.pool import Pool

if TYPE_CHECKING:
    from portico.cache.runtime import RouteCache
    from portico.filters.base import FilterRequest, RequestFilter
    from portico.filters.plugin import ResponseHooks, RouteFilters
    from portico.observe.access_log import AccessLogWriter
    from portico.pipeline import DoneStage, ResponseStage
    from portico.proxy.debug_header import DebugHeader
    from portico.routing import Router
    from portico.routing.stages import RouteActionStage
    from portico.static.site import StaticSite

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDING_MEMOS: Final = 1024  # client addresses whose forwarding headers a worker keeps at most


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """HTTP/2 on a listener: offered by ALPN on TLS, by prior knowledge (h2c) on plain TCP."""

    max_concurrent_streams: int = 100
    initial_window_size: int = 256 * 1024  # per stream: request body bytes a client may send ahead
    connection_window_size: int = 16 * 1024 * 1024  # all streams of a connection together
    only: bool = False  # no HTTP/1.x: every connection is HTTP/2 (a bad preface gets a GOAWAY)


@dataclass(frozen=True, slots=True)
class HttpListenerSettings:
    """One listener's rules, resolved from the config once per config version."""

    name: str
    pool: Pool
    max_request_line: int
    max_header_size: int
    max_headers: int
    max_body_size: int  # 0 = unlimited
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    send_timeout: float
    x_forwarded: bool
    forwarded: bool
    proto: bytes = b"http"
    filters: tuple[RequestFilter, ...] = ()  # run in order on each request head
    tunnel_timeout: float = 3600.0  # an upgraded connection idle both ways this long ends
    router: Router | None = None  # None: every request goes to `pool`
    # by route index (the last: the default route's, always None): the route's request actions
    # as a stage; None when no route has any (the usual case: one attribute check)
    route_stages: tuple[RouteActionStage | None, ...] | None = None
    response_headers: tuple[Header, ...] = ()  # added to every response (HSTS)
    client_subject: bool = False  # mTLS: pass the verified client certificate's subject
    access_log: AccessLogWriter | None = None
    debug_header: DebugHeader | None = None  # None: off (the default)
    proxy_trusted: tuple[Network, ...] | None = None  # PROXY headers accepted from these peers
    max_conns_per_client: int = 0  # 0 = no limit
    http2: Http2Settings | None = None  # None: HTTP/1.x only
    # plugin filters' other hooks; None (the usual case) costs a request one attribute check
    response_hooks: ResponseHooks | None = None  # the listener's, on every server response
    route_filters: RouteFilters | None = None  # by route index: request filters and hooks
    # by route index (the last: the default route's, always None); None: no route caches
    route_caches: tuple[RouteCache | None, ...] | None = None
    # the response-head phase's stages after users' hooks (every response head, Portico's own
    # answers too) and the done phase's; empty (the usual case) costs a tuple check
    response_stages: tuple[ResponseStage, ...] = ()
    # by route index (the last: the default route's): those of `response_stages` that act on
    # the route's responses (compression only where the route or the listener compresses: a
    # stage that does nothing still costs a local answer its ResponseEdit and head copies);
    # None: all of them on every route
    route_response_stages: tuple[tuple[ResponseStage, ...], ...] | None = None
    done_stages: tuple[DoneStage, ...] = ()
    # by route index: the route's `static:` site, if any; None when no route has one
    static_sites: tuple[StaticSite | None, ...] | None = None
    # answered before its body was all in: at most this much of the rest is read and thrown
    # away, for at most this long (NGINX's lingering_time), to keep the connection or close it
    # without a reset
    max_discard_size: int = 16 * 1024 * 1024
    linger_timeout: float = 30.0
    # `limits.response_buffer`: the most response bytes held for a client that does not read
    # (upstreams.connections.client_read_size)
    response_buffer: int = 64 * 1024
    # told the status of every request that ends (abuse bans count responses); () costs nothing
    done_hooks: tuple[Callable[[FilterRequest, int], None], ...] = ()


class Connection(Protocol):
    """A client connection as the worker sees it when it stops."""

    def drain(self) -> None: ...
    def abort(self) -> None: ...


class ProxyContext:
    """What one worker's client connections and exchanges share, and nothing more of the
    worker: its loop, its counters, its pools by name, and the bookkeeping of open connections
    (per client address for `max_conns_per_client`; all of them for draining)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stats: WorkerStats, pools: dict[str, Pool]
    ) -> None:
        self.loop = loop
        # the loop's clock, bound once: `loop.time()` looks the method up on every call
        self.clock: Callable[[], float] = loop.time
        self.stats = stats
        self.pools = pools
        # open connections
        self.connections: set[Connection] = set()
        self.client_connections: dict[str, int] = {}  # open connections per client address
        self.all_closed = asyncio.Event()  # set while no client connection is open
        # per client address: (the listener's settings, Host, the forwarding fields built for
        # them, serialized) of its last request. Shared by that client's connections, not kept
        # by each (idle connections would hold them)
        self.forwarding_memos: dict[str, tuple[object, bytes | None, bytes]] = {}
        # the HTTP/1 parser callbacks of this loop's connections (`listeners.http.ParserHooks`,
        # set by the first connection), read here on each read rather than kept by each one
        self.parser_hooks: object = None

    def admit(self, client_ip: str, limit: int) -> bool:
        """`max_conns_per_client`: count one more connection from `client_ip`, or refuse it
        (False) when it already has `limit` open in this worker."""
        counts = self.client_connections
        open_now = counts.get(client_ip, 0)
        if open_now >= limit:
            return False
        counts[client_ip] = open_now + 1
        return True

    def release(self, client_ip: str) -> None:
        """A connection counted by `admit` closed."""
        counts = self.client_connections
        left = counts[client_ip] - 1
        if left:
            counts[client_ip] = left
        else:
            del counts[client_ip]

    def remember(self, conn: Connection) -> None:
        """A client connection opened."""
        connections = self.connections
        if not connections:
            self.all_closed.clear()  # (an interpreted asyncio.Event method: only when it was set)
        connections.add(conn)

    def forget(self, conn: Connection) -> None:
        """A client connection closed."""
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()
