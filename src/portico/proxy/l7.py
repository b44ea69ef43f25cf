"""One HTTP request's way through the proxy: pick a server, send, relay the answer back.

Owns the protocol-neutral exchange, the same for HTTP/1.x and HTTP/2 clients: the request
phases (filters, routing, backend selection through the pool's policy), reusing or opening a
server connection, retrying elsewhere when that is safe, streaming the request body up and the
response back with back-pressure both ways, the response's end-to-end header step (route and
listener edits, session persistence), and which answer Portico gives itself (a
`LocalResponse`: 502/503/504, a filter's or a route's). The response goes out through a
`ResponseFramer` (`portico.proxy.framing`: HTTP/1.x bytes or HTTP/2 frames), the connection's
lifecycle through `ClientSide`. Never frames or writes a response itself, never parses bytes
(the listener and the upstream connection do) and never decides limits on what clients may
send (the listener does).

Safety rules for retries: a request is tried again on another server only when no byte of a
response came back and the request can be replayed whole: after a failed connect, or after a
reused keep-alive connection died under an idempotent request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Final

from portico import tasks
from portico.cache.runtime import CacheExchange, Step
from portico.http.errors import client_error, upstream_error
from portico.http.headers import (
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    Header,
    RequestHead,
    ResponseHead,
    forwarding_headers,
    serialize_fields,
)
from portico.http.local import BodySource, LocalResponse, local_response, reason_phrase
from portico.native import trait
from portico.observe.request_id import request_id
from portico.observe.stats import NO_ROUTE
from portico.outbox import OUTBOX
from portico.pipeline import (
    TURN_BUDGET,
    Outcome,
    ResponseEdit,
    TransformChain,
    TransformFailed,
)
from portico.plugins.guard import PluginError
from portico.proxy import proxy_protocol
from portico.proxy.cache_refresh import refresh as refresh_stale
from portico.proxy.context import FORWARDING_MEMOS
from portico.proxy.framing import BODY_NONE, BODY_UNKNOWN, ResponseFramer
from portico.proxy.l4 import Relay
from portico.proxy.local_body import stream_local, transform_executor
from portico.routing import Route, Router
from portico.routing.actions import RouteActions, apply_response_headers
from portico.upstreams.backend import report_connect_failure, report_connected
from portico.upstreams.connections import (
    ResponseSink,
    SendRoom,
    UpstreamConnection,
    client_read_size,
    send_room,
)
from portico.upstreams.pool import FULL, Pool
from portico.upstreams.splice import available as splice_available

if TYPE_CHECKING:
    from portico.filters.base import RequestFilter
    from portico.filters.plugin import RouteChain
    from portico.persistence.session import Learning, Persistence
    from portico.pipeline import ResponseStage
    from portico.proxy.context import HttpListenerSettings, ProxyContext
    from portico.upstreams.backend import BackendState

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# request body bytes kept for a retry; beyond, the body streams once
REPLAY_LIMIT: Final = 64 * 1024
# How long bytes a transform holds back (a compressor's pending block) may wait for more of the
# body before they are flushed to the client. Not after every read: a flush (zlib's
# Z_SYNC_FLUSH) ends a block, costing CPU and ratio, and a body read in a few reads (or, when
# the loop is busy, in a few turns) paid it each time; NGINX does not flush before its buffers
# fill. Streaming responses (event streams) are flushed per write by their compressor.
TRANSFORM_FLUSH_DELAY: Final = 0.1
_CHUNK_END: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
# called as a C static, not looked up as `time` then `.monotonic` (twice a request)
_monotonic: Final = time.monotonic

# mTLS: the verified client certificate's subject
CLIENT_SUBJECT: Final = b"X-Client-Cert-Subject"
CLIENT_SUBJECT_LOWER: Final = CLIENT_SUBJECT.lower()

# Why an exchange asks its client connection to stop reading (one bit each).
BLOCK_QUEUED: Final = 1  # a pipelined request waits for the one before it
# the server is not taking the request body as fast as the client sends it
BLOCK_UPSTREAM: Final = 2
# body bytes are buffered while the server connection is being set up
BLOCK_PENDING: Final = 4
BLOCK_DONE: Final = 8  # nothing more will be read on this connection
# A Content-Length body at least this big, with nothing to see it (no transform, no cache
# store), for a plain HTTP/1.x client, is spliced to the client's socket by the kernel once its
# first bytes are written and at least this much is still to come (issue #18: the two copies
# of every byte were most of a 1 MiB response's cost); smaller rests are copied (setting a
# splice up costs ~10 system calls)
SPLICE_MIN: Final = 128 * 1024
SPLICING: Final = splice_available()


@trait
class ClientSide:
    """What an exchange needs of the client it answers, besides its `ResponseFramer`: an
    HTTP/1.x connection (`portico.listeners.http.ClientConnection`) or one HTTP/2 stream
    (`portico.listeners.h2.H2Stream`). A trait, not a Protocol: compiled, the exchange reads
    these attributes and calls these methods natively (through a Protocol each was a look-up
    by name: ~10 a request). Every method is overridden."""

    __slots__ = ()

    write_paused: bool
    # the client's own connection: body writes reach its socket directly (false for an HTTP/2
    # stream, which shares one), so big reads may fill its kernel send queue (`SendRoom`)
    direct_writes: bool
    draining: bool  # (next to the other flags: compiled, flags apart take 8 bytes each)
    settings: HttpListenerSettings
    context: ProxyContext
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    client_ip: str
    client_subject: str | None
    early: bytes

    def block_reading(self, reason: int) -> None:
        raise NotImplementedError

    def unblock_reading(self, reason: int) -> None:
        raise NotImplementedError

    def exchange_done(self, exchange: Exchange, keep_alive: bool, linger: bool = False) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def hand_over(self) -> asyncio.Transport:
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        raise NotImplementedError


class Exchange(ResponseSink):
    """A request from one client and the response to it (the `ResponseSink` of its server
    connection). The same for every client protocol: `out` frames what it decides."""

    __slots__ = (
        "_backend",
        "_backend_name",
        "_cache",
        "_cache_answer",
        "_client",
        "_connect_time",
        "_context",
        "_continued",
        "_dequeued",
        "_error",
        "_fell_back",
        "_flush_due",
        "_head_len",
        "_learning",
        "_loop",
        "_observed",
        "_offload_end",
        "_offload_trailers",
        "_offloaded",
        "_original_target",
        "_out",
        "_pending",
        "_pending_size",
        "_pipe",
        "_pool",
        "_pool_chosen",
        "_queue_timer",
        "_read_limit",
        "_replayable",
        "_request_id",
        "_response_edits",
        "_response_started",
        "_response_time",
        "_reused",
        "_room",
        "_room_looked",
        "_sent",
        "_sent_at",
        "_settings",
        "_splice_to",
        "_stale_retried",
        "_started",
        "_stick_key",
        "_stick_looked",
        "_stick_server",
        "_sticky_server",
        "_timeouts",
        "_tried",
        "_upstream",
        "_upstream_head",
        "_waiter",
        "finished",
        "head",
        "headers",
        "keep_alive",
        "method",
        "received",
        "request_complete",
        "route",
        "status",
        "target",
        "version",
    )

    def __init__(
        self,
        client: ClientSide,
        out: ResponseFramer,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[Header],
        head: RequestHead,
        keep_alive: bool,
    ) -> None:
        # the request, as parsed
        self._client = client
        # the client's listener settings, loop and context, read natively from here on: through
        # the `ClientSide` protocol each read was a generic attribute look-up (~20 a request)
        settings = self._settings = client.settings
        self._loop = client.loop
        self._context = client.context
        self._read_limit: int = settings.response_buffer  # read once, not per read
        # the client socket's send queue (fd, SO_SNDBUF), looked up at the first body read
        self._room: SendRoom | None = None
        self._room_looked = not client.direct_writes
        self._out = out
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # as received, for hash keys and (later) routing
        self.head = head  # sorted for forwarding
        self.keep_alive = keep_alive
        self.received = 0
        self.request_complete = head.kind is NO_BODY
        # the request body while no server connection is attached, kept for a replay
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._replayable = True
        # the upstream side
        self._backend: BackendState | None = None
        self._upstream: UpstreamConnection | None = None
        self._upstream_head: bytes | None = None
        self._tried: Sequence[BackendState] = ()  # a list once one has failed
        self._reused = False
        self._stale_retried = False
        self._pool = self._settings.pool
        self._pool_chosen = False  # a filter chose the pool (`use_pool`)
        self._dequeued = False
        self._fell_back = False
        self._observed = False
        self._queue_timer: asyncio.TimerHandle | None = None
        # what the access log reports (kept cheap: counted always, formatted only if logged)
        # durations are measured with time.monotonic(), not loop.time(): uvloop's clock moves
        # in whole milliseconds, which put most sub-millisecond requests at 0
        self._started = _monotonic()
        self._sent = 0  # response body bytes written to the client
        self._head_len = 0
        self._backend_name: str | None = None
        self._connect_time: float | None = None
        self._response_time: float | None = None
        self._original_target = target
        self._request_id: bytes | None = None
        self._sticky_server: str | None = None  # the server a persistence cookie named
        self._stick_key: bytes | None = None  # the request's stick-table key
        self._stick_looked = False
        self._stick_server: str | None = None  # the server the stick table held for the key
        self._learning: Learning | None = None  # for the stick table, once the response is out
        self._response_edits: RouteActions | None = None
        self._timeouts: tuple[float, float, float] | None = None  # a route's, over the pool's
        self.route: Route | None = None
        self._sent_at = 0.0
        # the response side
        self._response_started = False  # a byte of it went to the client
        self._continued = False  # a 100 Continue went to the client
        self._pipe: TransformChain | None = None  # the body transforms of the response
        # the client's transport, while the rest of the response body may be spliced to its
        # socket in the kernel (`_try_splice`)
        self._splice_to: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None  # a local body waits for writability
        self._error: str | None = None  # why the response was cut (the done phase's)
        self._flush_due = False  # a flush of the transforms is scheduled (TRANSFORM_FLUSH_DELAY)
        # body pieces waiting behind a piece being transformed in a worker thread (None: no
        # thread at work); the server's end (or trailers) that came meanwhile, kept for after
        self._offloaded: list[bytes] | None = None
        self._offload_trailers: list[Header] | None = None
        self._offload_end = False
        self.status = 0
        self.finished = False
        # the route's cache: this request's side of it (None: the route caches nothing)
        self._cache: CacheExchange | None = None
        self._cache_answer: LocalResponse | None = None  # sent when the 304 behind it ends

    @property
    def client(self) -> ClientSide:
        return self._client

    # -- request phases ----------------------------------------------------------------------

    def begin(self, first_filter: int = 0) -> None:
        """The request head is in: run the listener's request filters, route, run the route's
        filters, then go upstream."""
        settings = self._settings
        filters = settings.filters
        if filters:
            for index in range(first_filter, len(filters)):
                request_filter = filters[index]
                if request_filter.asynchronous:
                    tasks.spawn(self._await_filter(request_filter, index, False))
                    return
                answer = request_filter.on_request(self)
                if answer is not None:
                    self._filtered(answer)
                    return
        if settings.access_log is not None:
            self._request_id, passed = request_id(self.headers)
            if not passed:  # an invalid one of the client's is replaced, never forwarded
                self.head.headers = [
                    h for h in self.head.headers if h[0].lower() != b"x-request-id"
                ]
        router = settings.router
        if router is not None:
            pool = self._route(router)
            if pool is None:
                return  # answered by the route itself
            if not self._pool_chosen:  # a listener filter's choice stands over the route's
                self._pool = pool
            route_filters = settings.route_filters
            if route_filters is not None:
                chain = route_filters[self.route.index] if self.route is not None else None
                if chain is not None and chain.request:
                    self._route_filters(chain.request, 0)
                    return
        self._go()

    def _route_filters(self, filters: tuple[RequestFilter, ...], first: int) -> None:
        """The chosen route's own filters (users' plugins), from `first` on; then upstream."""
        for index in range(first, len(filters)):
            request_filter = filters[index]
            if request_filter.asynchronous:
                tasks.spawn(self._await_filter(request_filter, index, True))
                return
            answer = request_filter.on_request(self)
            if answer is not None:
                self._filtered(answer)
                return
        self._go()

    def _go(self) -> None:
        """Filters and routing are done: ask the route's cache, else count the request against
        its pool and send it."""
        caches = self._settings.route_caches
        if (
            caches is not None
            and self._cache is None
            and self.route is not None
            and self.head.upgrade is None  # a WebSocket handshake is never cached
        ):
            route_cache = caches[self.route.index]
            if route_cache is not None:
                self._cache = route_cache.exchange(
                    self.method,
                    self._settings.proto.decode("ascii"),
                    self.head.host,
                    self._original_target,
                    self.target,
                    self.headers,
                )
                self._cache.spawn_refresh = self._spawn_refresh
                if self._cache_step(self._cache.lookup()):
                    return
        self._forward()

    def _cache_step(self, step: Step) -> bool:
        """Act on the cache's lookup: True when the request is answered or waits."""
        cache = self._cache
        assert cache is not None
        if step is Step.ANSWER:
            assert cache.response is not None
            self._respond_locally(self._cached_answer(cache.response))
            return True
        if step is Step.WAIT:
            tasks.spawn(self._cache_wait(cache))
            return True
        conditional = cache.conditional(self.head.headers)
        if conditional is not None:
            self.head.headers = conditional
        return False

    def _spawn_refresh(self, refresh: CacheExchange) -> None:
        """A stale-while-revalidate refresh, sent to this request's pool in the background."""
        tasks.spawn(refresh_stale(refresh, self._pool, self.head.host, self._loop))

    async def _cache_wait(self, cache: CacheExchange) -> None:
        """A request for the same key is at the origin: wait for it (bounded), look again."""
        step = await cache.waited()
        if self.finished:
            cache.abort()
            return
        if not self._cache_step(step):
            self._forward()

    def _cached_answer(self, answer: LocalResponse) -> LocalResponse:
        """A stored response with the route's and listener's response header edits."""
        edits = self._response_edits
        extra = self._settings.response_headers
        if edits is None and not extra:
            return answer
        fields = list(answer.headers)
        if edits is not None:
            fields = apply_response_headers(fields, edits)
        source = answer.source  # a body streamed from the disk tier
        body: bytes | BodySource = answer.body if source is None else source
        return local_response(answer.status, [*fields, *extra], body)

    def _forward(self) -> None:
        """Count the request against its pool, then send it."""
        budget = self._pool.budget
        if budget is not None:
            budget.record_request(self._context.clock())
        self.start()

    async def _await_filter(self, request_filter: RequestFilter, index: int, routed: bool) -> None:
        """A filter that waits on I/O (a shared store, a plugin's ``async def`` hook): its
        answer arrives within its own bounded time; meanwhile the request's body waits in the
        bounded replay buffer. Then the chain goes on after it (`routed`: the route's)."""
        answer = await request_filter.check(self)
        if self.finished:
            return
        if answer is not None:
            self._filtered(answer)
        elif not routed:
            self.begin(index + 1)
        else:
            chain = self._settings.route_filters
            assert chain is not None
            assert self.route is not None
            route_chain = chain[self.route.index]
            assert route_chain is not None
            self._route_filters(route_chain.request, index + 1)

    @property
    def pool_name(self) -> str:
        """The pool this request goes to, as things stand (for filters)."""
        return self._pool.name

    def use_pool(self, name: str) -> None:
        """A filter's choice: this request goes to pool `name` (KeyError when there is none),
        whatever the route says."""
        self._pool = self._context.pools[name]
        self._pool_chosen = True

    def _filtered(self, answer: LocalResponse) -> None:
        if answer.status == 429:  # the rate limiter's (or a plugin's) Too Many Requests
            self._context.stats.ratelimited(self._settings.name)
        self._respond_locally(answer)

    def _route(self, router: Router) -> Pool | None:
        """Match the request to a route and apply its request actions; None when the route
        answered itself (a redirect, a fixed response, a static file)."""
        head = self.head
        route = self.route = router.match(self.method, self.target, head.host, self.headers)
        stages = self._settings.route_stages
        if stages is not None:
            stage = stages[route.index]
            if stage is not None:  # the route's actions ("route_actions", a named stage)
                answer = stage.on_request(self)
                if answer is not None:
                    self._respond_locally(answer)
                    return None
                self._response_edits = stage.response_actions
        sites = self._settings.static_sites
        if sites is not None:
            site = sites[route.index] if route.index >= 0 else None
            if site is not None:
                answer = site.local_answer(self.method, self.target, self.headers)
                if answer is not None:
                    self._respond_locally(answer)
                    return None
                # try_files: fallback, and no such file: the route's pool answers
        assert route.pool is not None
        pool = self._context.pools[route.pool]
        timeouts = route.timeouts
        if timeouts is not None:
            settings = pool.settings
            self._timeouts = (
                timeouts.connect or settings.connect_timeout,
                timeouts.read or settings.read_timeout,
                timeouts.write or settings.write_timeout,
            )
        return pool

    def start(self) -> None:
        """Pick a backend and send the request to it (now if a pooled connection is free)."""
        client = self._client
        pool = self._pool
        now = self._context.clock()
        persistence = pool.persistence
        if persistence is not None and not self._tried:
            if persistence.stick is not None and not self._stick_looked:
                self._stick_looked = True
                key = persistence.stick_key(self.headers, self.target, client.client_ip)
                self._stick_key = key
                if key is not None:
                    tasks.spawn(self._stick_lookup(persistence, key))
                    return
            if persistence.cookie is not None:
                # the cookie's server, never over the stick table's (a client without the
                # cookie still has its session's server)
                self._sticky_server = persistence.cookie_server(self.headers, pool.backends)
                if self._upstream_head is None:
                    self.head.headers = persistence.request_headers(self.head.headers)
        if pool.queue and not self._dequeued:
            backend: BackendState | str | None = FULL  # wait behind those already waiting
        else:
            try:
                backend = pool.select(
                    self.headers,
                    self.target,
                    client.client_ip,
                    self._tried,
                    now,
                    self._sticky_server or self._stick_server,
                )
            except PluginError:  # a user's policy raised (and was logged)
                self._respond_error(500)
                return
        if self._dequeued:
            self._dequeued = False
        if backend is None:
            fallback = pool.fallback
            if fallback is not None and not self._tried and not self._fell_back:
                self._fell_back = True
                self._pool = self._context.pools[fallback]
                self.start()
                return
            self._respond_error(502 if self._tried else 503)
            return
        if backend is FULL:
            if pool.enqueue(self):
                self._queue_timer = self._loop.call_later(pool.queue_timeout, self._queue_expired)
            else:
                self._respond_error(503)
            return
        if TYPE_CHECKING:
            assert not isinstance(backend, str)
        self._backend = backend
        self._backend_name = backend.name
        backend.in_flight += 1
        backend.requests += 1
        conn = backend.take_idle()
        if conn is not None:
            self._reused = True
            self._attach(conn, now)
        else:
            self._reused = False
            tasks.spawn(self._connect(backend))

    async def _stick_lookup(self, persistence: Persistence, key: bytes) -> None:
        """Ask the stick table (bounded by the store's timeout; a store that is down answers
        None and the policy picks), then go on choosing a server."""
        self._stick_server = await persistence.lookup(key)
        if not self.finished:
            self.start()

    def dequeued(self) -> None:
        """A server slot freed while this request waited in the pool's queue."""
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        if not self.finished:
            self._dequeued = True
            self.start()

    def _queue_expired(self) -> None:
        self._queue_timer = None
        self._pool.leave_queue(self)
        if not self.finished:
            self._respond_error(503)

    async def _connect(self, backend: BackendState) -> None:
        settings = self._pool.settings
        loop = self._loop
        timeouts = self._timeouts
        connect_timeout = settings.connect_timeout if timeouts is None else timeouts[0]
        connect_started = time.monotonic()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(
                        backend,
                        settings.read_timeout,
                        settings.write_timeout,
                        settings.hide_headers,
                    ),
                    backend.host,
                    backend.port,
                )
        except (OSError, TimeoutError) as exc:
            report_connect_failure(self._pool.name, backend, exc, connect_timeout, loop.time())
            if self._backend is backend and not self.finished:
                self._release_backend(failed=True)
                self._tried = [*self._tried, backend]
                timed_out = isinstance(exc, TimeoutError)
                self._retry_or_fail(504 if timed_out else 502, counts=True)
            return
        self._connect_time = time.monotonic() - connect_started
        if backend.connect_cause is not None:
            report_connected(self._pool.name, backend)
        version = self._pool.send_proxy
        if version is not None and conn.transport is not None:
            # the header names one client, so this connection serves only this request
            transport = self._client.transport
            assert transport is not None
            peer = transport.get_extra_info("peername") or (self._client.client_ip, 0)
            own = transport.get_extra_info("sockname")
            destination = (own[0], own[1]) if own else None
            conn.transport.write(
                proxy_protocol.encode(version, (self._client.client_ip, peer[1]), destination)
            )
            conn.private = True
        if self.finished or self._backend is not backend:
            # the client left while we connected: keep the connection for someone else
            if not backend.put_idle(conn, loop.time()):
                conn.close()
            return
        self._attach(conn, loop.time())

    def _attach(self, conn: UpstreamConnection, now: float) -> None:
        """Send the request on `conn` (`now`: the loop's time)."""
        self._upstream = conn
        head = self._upstream_head
        if head is None:
            head = self._upstream_head = self._build_upstream_head(conn)
        self._sent_at = now
        if self._timeouts is not None:
            conn.set_timeouts(self._timeouts[1], self._timeouts[2])
        conn.send(self, self.method, head, self.request_complete, self.head.upgrade is not None)
        pending = self._pending
        if pending:
            conn.writelines(self._framed(pending))
        if self.request_complete and self.head.kind is CHUNKED_BODY:
            conn.write(_CHUNK_END)
        client = self._client
        if client.write_paused:
            conn.pause_reading()
        if pending and self._pending_size > REPLAY_LIMIT:
            client.unblock_reading(BLOCK_PENDING)

    def _build_upstream_head(self, conn: UpstreamConnection) -> bytes:
        """The request head re-serialised for the server: never the client's raw bytes
        (through `conn`'s memo of the last head it was sent: equal inputs, the same bytes)."""
        client = self._client
        settings = self._settings
        head = self.head
        out = head.headers
        # the forwarding fields, serialized once per client address (then one part of the
        # head's join, not four per field)
        block = b""
        if settings.x_forwarded or settings.forwarded:
            if head.x_forwarded_for or head.forwarded:
                block = serialize_fields(self._forwarding(head))
            else:
                # the usual case: the same block as this client's last request (the memo is
                # per client address and worker, not per connection: idle memory)
                memos = self._context.forwarding_memos
                ip = client.client_ip
                memo = memos.get(ip)
                if memo is not None and memo[0] is settings and memo[1] == head.host:
                    block = memo[2]
                else:
                    block = serialize_fields(self._forwarding(head))
                    if len(memos) >= FORWARDING_MEMOS:
                        memos.clear()  # bounded; refilled by the clients still sending
                    memos[ip] = (settings, head.host, block)
        if head.host is None:
            # an HTTP/1.0 client may omit Host; the HTTP/1.1 request we send may not
            backend = self._backend
            if backend is not None:
                host = f"[{backend.host}]" if ":" in backend.host else backend.host
                out = [(b"Host", f"{host}:{backend.port}".encode()), *out]
        # after the forwarding fields: the framing, Upgrade, the request ID, the certificate
        tail: list[Header] | None = None
        if head.kind is LENGTH_BODY:
            tail = [(b"Content-Length", b"%d" % head.length)]
        elif head.kind is CHUNKED_BODY:
            tail = [(b"Transfer-Encoding", head.te)]
        if head.upgrade is not None:
            tail = [*(tail or ()), (b"Connection", b"Upgrade"), (b"Upgrade", head.upgrade)]
        if self._request_id is not None:
            tail = [*(tail or ()), (b"X-Request-Id", self._request_id)]
        if settings.client_subject:
            # never the client's own claim: only what the TLS handshake verified
            out = [h for h in out if h[0].lower() != CLIENT_SUBJECT_LOWER]
            if client.client_subject is not None:
                tail = [*(tail or ()), (CLIENT_SUBJECT, client.client_subject.encode())]
        raw = head.raw
        if raw and self.target is self._original_target and out == head.raw_fields:
            # the client's request line and fields were what serializing them makes, and they
            # go on as they were split (compared by value): those bytes, after one check of
            # each field (`split_request_headers`), where serializing cost four parts a field
            return conn.sent.splice(raw, block, tail)
        return conn.sent.serialize(self.method, self.target, out, block, tail)

    def _forwarding(self, head: RequestHead) -> list[Header]:
        client = self._client
        settings = self._settings
        return forwarding_headers(
            client.client_ip,
            settings.proto,
            head.host,
            x_forwarded_for=head.x_forwarded_for if settings.x_forwarded else None,
            forwarded=head.forwarded if settings.forwarded else None,
        )

    def _framed(self, chunks: list[bytes]) -> list[bytes | memoryview]:
        if self.head.kind is not CHUNKED_BODY:
            return list(chunks)
        out: list[bytes | memoryview] = []
        for chunk in chunks:
            out += (b"%x\r\n" % len(chunk), chunk, _CRLF)
        return out

    # -- request body, from the client ---------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        upstream = self._upstream
        if upstream is not None:
            if self._replayable:
                # stream from now on: the body can no longer be replayed
                self._replayable = False
                self._pending = None
            if self.head.kind is CHUNKED_BODY:
                upstream.writelines([b"%x\r\n" % len(chunk), chunk, _CRLF])
            else:
                upstream.write(chunk)
        elif not self.finished:
            pending = self._pending
            if pending is None:
                self._pending = [chunk]
            else:
                pending.append(chunk)
            self._pending_size += len(chunk)
            if self._pending_size > REPLAY_LIMIT:
                self._client.block_reading(BLOCK_PENDING)

    def request_end(self) -> None:
        self.request_complete = True
        upstream = self._upstream
        if upstream is not None:
            if self.head.kind is CHUNKED_BODY:
                upstream.write(_CHUNK_END)
            upstream.request_sent()

    def refuse(self, status: int) -> None:
        """The request turned out bad while being forwarded (body too large, malformed, slow)."""
        if self._response_started:
            self._abort()
            return
        if self._cache is not None:
            self._cache.abort()
        self._drop_upstream()
        self._release_backend(failed=None)
        self._answer(client_error(status), False, linger=True)

    # -- response, from the server (ResponseSink) ----------------------------------------------

    def on_interim(self, status: int, head: ResponseHead) -> None:
        if self._out.send_interim(status, head.reason, head.headers) and status == 100:
            self._continued = True

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        cache = self._cache
        if cache is not None:
            kind = head.kind
            length = head.length if kind is LENGTH_BODY else 0 if kind is NO_BODY else None
            head.headers, replacement = cache.on_response(status, head.headers, length)
            if replacement is not None:
                self.status = status
                if kind is NO_BODY:  # a 304 refreshed the stored response: sent at its end
                    self._cache_answer = self._cached_answer(replacement)
                    return
                self._drop_upstream()  # an error the stored response stands in for
                self._release_backend(failed=status >= 500)
                self._respond_locally(self._cached_answer(replacement))
                return
        try:
            out = self._response_headers(status, head)
        except PluginError:
            self._response_refused()
            return
        if self.finished:
            return  # a stage replaced the response (answered already)
        reason = head.reason
        if self.status != status:  # a stage changed it
            status = self.status
            reason = reason_phrase(status)
        kind = head.kind
        coding = None
        if kind is LENGTH_BODY:
            length = head.length
        elif kind is NO_BODY:
            length = BODY_NONE
            if head.declared_length is not None and status >= 200 and status != 204:
                out.append((b"Content-Length", head.declared_length))  # HEAD, 304: the GET's
        else:
            length = BODY_UNKNOWN
            if kind is CHUNKED_BODY:
                coding = head.te
        if self._pipe is not None:
            if length == BODY_NONE or (coding is not None and coding.lower() != b"chunked"):
                self._pipe.abort()  # no body to transform (or one transfer-coded beyond us)
                self._pipe = None
            else:
                length = BODY_UNKNOWN  # transformed: re-framed, whatever its length was
                coding = None
                out = [h for h in out if h[0].lower() != b"content-length"]
        keep = self._may_keep()
        framer = self._out
        self._head_len = framer.send_response_head(
            status, reason, out, length, coding, keep, head.memo
        )
        if not framer.keep:
            self.keep_alive = False
        if length >= SPLICE_MIN and SPLICING and self._pipe is None and self._client.direct_writes:
            cache = self._cache
            if cache is None or not cache.storing:
                self._splice_to = framer.raw_transport()  # None: TLS (or HTTP/2)

    def _route_chain(self) -> RouteChain | None:
        """The chosen route's own filters and stages, or None (no route, or none there)."""
        route_filters = self._settings.route_filters
        if route_filters is None or self.route is None:
            return None
        return route_filters[self.route.index]

    def _response_stages(self, edit: ResponseEdit, chain: RouteChain | None, server: bool) -> None:
        """The response-head phase's stages on `edit`: the route's, then the listener's (users'
        `on_response` hooks first in each: on a server's response, or on a local one for those
        that asked). Stops at a `replace`.
        Raises PluginError when a user's hook raised (logged)."""
        settings = self._settings
        if chain is not None:
            route_hooks = chain.response
            if route_hooks is not None and (server or route_hooks.local):
                route_hooks.run(self, edit)
            for stage in chain.response_stages:
                if edit.replacement is not None:
                    return
                stage.on_response_head(self, edit)
        if edit.replacement is not None:
            return
        hooks = settings.response_hooks
        if hooks is not None and (server or hooks.local):
            hooks.run(self, edit)
        for stage in self._listener_stages():
            if edit.replacement is not None:
                return
            stage.on_response_head(self, edit)

    def _listener_stages(self) -> tuple[ResponseStage, ...]:
        """The listener's response-head stages that act on this exchange's route."""
        settings = self._settings
        by_route = settings.route_response_stages
        route = self.route
        if by_route is None or route is None:
            return settings.response_stages
        return by_route[route.index]

    def _response_headers(self, status: int, head: ResponseHead) -> list[Header]:
        """What every response gets whatever the client speaks: observations of the server,
        the route's and listener's header edits, the response-head stages (which may change
        the status, attach body transforms or replace the answer: then `finished` is set),
        persistence cookies. Returns the end-to-end fields to send; framing is the
        caller's."""
        client = self._client
        backend = self._backend
        if self._settings.access_log is not None:
            self._response_time = self._loop.time() - self._sent_at
        if backend is not None:
            if backend.tracks_latency:
                backend.observe_latency(self._loop.time() - self._sent_at)
            pool = self._pool
            if status >= 500 and pool.on_5xx and pool.outliers is not None:
                pool.observe(backend, True, self._loop.time())
                self._observed = True
        self.status = status
        out = head.headers
        if self._response_edits is not None:
            out = apply_response_headers(out, self._response_edits)
        settings = self._settings
        if settings.response_headers:
            out = [*out, *settings.response_headers]
        chain = self._route_chain()
        if chain is not None or settings.response_hooks is not None or self._listener_stages():
            kind = head.kind
            edit = ResponseEdit(
                status,
                head.reason,
                out,
                head.length if kind is LENGTH_BODY else None,
                self,
                has_body=kind is not NO_BODY and self.method != b"HEAD",
            )
            self._response_stages(edit, chain, True)  # PluginError: see on_response_head
            replacement = edit.replacement
            if replacement is not None:
                for transform in edit.transforms:
                    transform.abort()
                self._replaced(replacement)
                return out
            if edit.transforms:
                self._pipe = TransformChain(edit.transforms)
            self.status = status = edit.status
            out = edit.headers
        debug = settings.debug_header
        if debug is not None and debug.trusts(client.client_ip):
            attempt = len(self._tried) + 1
            field = debug.field(settings.name, self.route, self._pool, self._backend_name, attempt)
            out = [*out, field]
        persistence = self._pool.persistence
        name = self._backend_name
        if persistence is not None and name is not None:
            if persistence.stick is not None:
                self._learning = persistence.to_learn(
                    out, name, self._stick_server, self._stick_key
                )
            out = persistence.response_headers(
                out, name, self._sticky_server, self._stick_key, self._stick_server, learn=False
            )
        return out

    def _replaced(self, answer: LocalResponse) -> None:
        """A response-head stage answers instead of the server: its body is not read (the
        server connection is closed), and `answer` goes out as it is."""
        self._drop_upstream()
        self._release_backend(failed=None)
        keep = self._may_keep()
        if not keep:
            self.keep_alive = False
        self._answer(answer, keep)

    def _response_refused(self) -> None:
        """A plugin's response hook raised (logged): nothing of the server's response has
        reached the client, which gets a 500 instead; the server connection is dropped."""
        self._drop_upstream()
        self._release_backend(failed=None)
        self._respond_error(500)

    def on_response_body(self, data: bytes | memoryview) -> None:
        cache = self._cache
        if cache is not None and cache.storing:
            cache.feed(data)
        pipe = self._pipe
        if pipe is not None:
            self._transformed_body(pipe, data)
            return
        self._out.send_body(data)
        self._sent += len(data)
        self._response_started = True
        if self._splice_to is not None:
            self._try_splice(self._splice_to, False)

    def on_response_waiting(self) -> None:
        if self._splice_to is not None:
            self._try_splice(self._splice_to, True)

    def _try_splice(self, transport: asyncio.Transport, head_only: bool) -> None:
        """Splice the rest of the body to the client's socket (`splice_body`: no copy of it
        goes through the worker) once what was written to the client is in its socket, and
        the whole request was sent; else try again after the next read. A rest too small to
        pay for setting it up is copied. `head_only`: none of the body was read yet (the
        server sent its head alone), and the staged head goes out first, alone."""
        upstream = self._upstream
        if upstream is None or not self.request_complete:
            return
        if upstream.body_left() < SPLICE_MIN:
            self._splice_to = None
            return
        if head_only:
            self._out.send_body(b"")  # the staged head
            self._response_started = True
        OUTBOX.flush_to(transport)
        if transport.get_write_buffer_size():
            return  # the client is behind: the copying path's bound holds until it catches up
        self._splice_to = None
        upstream.splice_body(transport, self._read_limit, self._settings.send_timeout)

    def on_response_spliced(self, size: int) -> None:
        self._sent += size
        self._out.sent_raw(size)

    def on_client_failed(self) -> None:
        # as when its transport fails on the copying path: the connection's loss ends this
        # exchange ("client gone") and drops the server connection, mid-body
        self._client.abort()

    def _transformed_body(self, pipe: TransformChain, data: bytes | memoryview) -> None:
        """A body piece through the response's transforms. Held-back bytes are flushed
        TRANSFORM_FLUSH_DELAY after the read that brought them (a slow server's response is
        not stalled; a streaming one's compressor flushes every write itself).
        Through threaded transforms (compression), a large piece goes to a worker thread;
        a smaller one waits for a later turn of the loop once this turn has spent its
        budget (`TurnBudget`, shared by all responses; a thread's hand-over costs ~100 µs,
        more than compressing a small piece). Either way the server's reading is paused
        meanwhile, and compression never holds the loop long."""
        waiting = self._offloaded
        if waiting is not None:
            waiting.append(bytes(data))  # behind the piece in the thread, in order
            return
        if pipe.threaded:
            if len(data) >= pipe.offload_min:
                self._offload(pipe, [bytes(data)])
                return
            if not TURN_BUDGET.take(len(data), pipe.offload_min, self._loop):
                self._defer(pipe, [bytes(data)])
                return
        try:
            out = pipe.feed(data)
        except TransformFailed as exc:
            self._transform_failed(exc)
            return
        self._transformed(out)

    def _transformed(self, out: bytes | memoryview) -> None:
        if out:
            self._out.send_body(out)
            self._sent += len(out)
            self._response_started = True
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_later(TRANSFORM_FLUSH_DELAY, self._flush_body)

    def _offload(self, pipe: TransformChain, pieces: list[bytes]) -> None:
        """Feed `pieces` to `pipe` in a worker thread; the server's reading waits (the pieces
        that arrive from what was already read queue up: at most one read)."""
        self._offloaded = []
        upstream = self._upstream
        if upstream is not None:
            upstream.pause_reading()
        loop = self._loop
        future = loop.run_in_executor(transform_executor(), _feed_all, pipe, pieces)
        future.add_done_callback(self._offload_done)

    def _defer(self, pipe: TransformChain, pieces: list[bytes]) -> None:
        """This turn of the loop has spent its compression budget: `pieces` are fed in a
        later turn, the server's reading paused meanwhile (as for a thread)."""
        self._offloaded = []
        upstream = self._upstream
        if upstream is not None:
            upstream.pause_reading()
        size = sum(len(piece) for piece in pieces)
        TURN_BUDGET.wait(size, pipe.offload_min, self._loop, partial(self._deferred, pieces))

    def _deferred(self, pieces: list[bytes]) -> None:
        """The turn `_defer` waited for (the budget charged for `pieces`)."""
        pipe = self._pipe
        if self.finished or pipe is None:
            self._offloaded = None
            return  # the exchange ended meanwhile
        try:
            out = _feed_all(pipe, pieces)
        except TransformFailed as exc:
            self._offloaded = None
            self._transform_failed(exc)
            return
        self._caught_up(pipe, out)

    def _offload_done(self, future: asyncio.Future[bytes]) -> None:
        """The worker thread is done with its pieces: on with `_caught_up`."""
        pipe = self._pipe
        if future.cancelled() or self.finished or pipe is None:
            self._offloaded = None
            return  # the exchange ended meanwhile (client gone, server failed)
        exc = future.exception()
        if exc is not None:
            self._offloaded = None
            if isinstance(exc, TransformFailed):
                self._transform_failed(exc)
                return
            raise exc
        self._caught_up(pipe, future.result())

    def _caught_up(self, pipe: TransformChain, out: bytes) -> None:
        """The pieces handed to a thread or a later turn are transformed (`out`): send it,
        then go on with what queued up meanwhile, the server's end, or reading the server."""
        waiting, self._offloaded = self._offloaded, None
        self._transformed(out)
        if waiting:
            size = sum(len(piece) for piece in waiting)
            if size >= pipe.offload_min:
                self._offload(pipe, waiting)
                return
            if not TURN_BUDGET.take(size, pipe.offload_min, self._loop):
                self._defer(pipe, waiting)
                return
            try:
                out = _feed_all(pipe, waiting)
            except TransformFailed as failed:
                self._transform_failed(failed)
                return
            self._transformed(out)
        trailers, self._offload_trailers = self._offload_trailers, None
        end, self._offload_end = self._offload_end, False
        if trailers is not None:
            self.on_response_trailers(trailers)
            if self.finished:
                return  # a transform failed at the end
        if end:
            self.on_response_end()
            return
        upstream = self._upstream
        if upstream is not None and not self._client.write_paused:
            upstream.resume_reading()

    def _flush_body(self) -> None:
        self._flush_due = False
        pipe = self._pipe
        if pipe is None or self.finished or self._offloaded is not None:
            return  # a thread is at work on the transforms: its end schedules the flush
        try:
            out = pipe.flush()
        except TransformFailed as exc:
            self._transform_failed(exc)
            return
        if out:
            self._out.send_body(out)
            self._sent += len(out)
            self._response_started = True

    def _end_pipe(self) -> bool:
        """The body is complete: the transforms' last bytes go out. False when one raised
        (the exchange has failed the request)."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return True
        try:
            out = pipe.end()
        except TransformFailed as exc:
            self._transform_failed(exc)
            return False
        if out:
            self._out.send_body(out)
            self._sent += len(out)
        self._response_started = True
        return True

    def _transform_failed(self, exc: TransformFailed) -> None:
        """A body transform raised (logged): a 500 while nothing reached the client, else
        the response is cut (never presented as complete)."""
        self._pipe = None
        self._learning = None  # the server's response did not go out
        self._error = str(exc)
        if self._response_started:
            self._release_backend(failed=None)
            self._abort()
            return
        self._out.cancel_response_head()
        self._drop_upstream()
        self._release_backend(failed=None)
        self._respond_error(500)

    def on_response_trailers(self, fields: list[Header]) -> None:
        """A chunked response ended with trailer fields: the client gets them where its
        protocol has room (HTTP/1.1 chunked framing, an HTTP/2 HEADERS frame)."""
        if self._offloaded is not None:
            self._offload_trailers = fields  # after the piece in the worker thread
            return
        if self._pipe is not None and not self._end_pipe():
            return
        self._out.send_trailers(fields)
        self._response_started = True

    def on_response_end(self) -> None:
        client = self._client
        cached = self._cache_answer
        if cached is None:
            if self._offloaded is not None:
                self._offload_end = True  # after the piece in the worker thread
                return
            if self._pipe is not None and not self._end_pipe():
                return
            self._out.send_end()
            self._response_started = True
            if self._cache is not None:
                self._cache.end()
        upstream, self._upstream = self._upstream, None
        backend = self._backend
        self._release_backend(failed=None if self._observed else False)
        if upstream is not None and not self.request_complete:
            # the server answered before the whole body was sent: the connection is out of
            # step for good, and closing it would wait on a server that may never read what
            # is still buffered for it
            upstream.abort()
        elif upstream is not None:
            upstream.detach()
            settings = self._pool.settings
            if (
                backend is None
                or not upstream.is_reusable()
                or upstream.private
                or (settings.max_requests and upstream.requests >= settings.max_requests)
                or not backend.put_idle(upstream, self._context.clock())
            ):
                upstream.close()
        if cached is not None:
            self._cache_answer = None
            self._respond_locally(cached)
            return
        self.finished = True
        self._done(self.status)
        client.exchange_done(self, self.keep_alive)

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        self._upstream = None
        self._learning = None
        backend = self._backend
        stale = self._reused and not got_bytes and not timed_out and not self._stale_retried
        self._release_backend(failed=None if stale else True)
        if self._response_started:
            self._error = reason
            self._abort()  # never present a truncated body as complete
            return
        self._out.cancel_response_head()  # a retry stages the next server's
        if self._pipe is not None:
            self._pipe.abort()  # the next server's response gets its own
            self._pipe = None
        if got_bytes or not self._replayable:
            self._error = reason
            self._respond_error(504 if timed_out else 502)
            return
        if self._reused and not timed_out and not self._stale_retried and self.method in IDEMPOTENT:
            # a pooled connection the server had already given up on: not the server's fault
            self._stale_retried = True
            self.start()
            return
        if backend is not None:
            self._tried = [*self._tried, backend]
        if self.method in IDEMPOTENT and not timed_out:
            self._retry_or_fail(502, counts=True)
        else:
            self._respond_error(504 if timed_out else 502)

    def on_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        """The server answered 101: relay it, then tunnel bytes both ways until either ends."""
        client = self._client
        upstream, self._upstream = self._upstream, None
        assert upstream is not None
        assert upstream.transport is not None
        self.status = 101
        self.finished = True
        self._done(101)
        backend, self._backend = self._backend, None  # the relay counts it from now on
        assert backend is not None
        self._out.send_switching(head.reason, head.headers, head.upgrade)
        transport = client.hand_over()
        peer = transport.get_extra_info("peername") or ("", 0)
        sockname = transport.get_extra_info("sockname") or ("", 0)
        relay = Relay(
            _TunnelOwner(client),
            self._loop,
            transport,
            self._pool,
            self._context.pools,
            {},
            (peer[0], peer[1]),
            (sockname[0], sockname[1]),
            self._settings.tunnel_timeout,
            self._context.stats.client_bytes(self._settings.name),
        )
        relay.adopt(backend, upstream.transport)
        # the relay writes at once (its per-chunk path holds nothing): the 101 and the request
        # held this turn go first
        OUTBOX.flush_to(transport)
        OUTBOX.flush_to(upstream.transport)
        if rest:
            relay.bytes.sent += len(rest)
            transport.write(rest)  # what the server sent right after its 101
        relay.begin(client.early, False)

    def read_size(self) -> int:
        transport = self._client.transport
        if not self._room_looked:
            self._room_looked = True
            self._room = send_room(transport)
        # through transforms, what is written is not what was read (it may grow): the bound
        room = self._room if self._pipe is None else None
        # a body read is sized by what the client's transport holds, and what this turn
        # wrote to it that waits in the outbox (slow readers)
        held = 0 if transport is None else OUTBOX.held_for(transport)
        return client_read_size(transport, self._read_limit, room, held)

    def on_upstream_writable(self, writable: bool) -> None:
        if writable:
            self._client.unblock_reading(BLOCK_UPSTREAM)
        else:
            self._client.block_reading(BLOCK_UPSTREAM)

    # -- from the client connection ------------------------------------------------------------

    def client_writable(self, writable: bool) -> None:
        upstream = self._upstream
        if upstream is not None:
            if writable:
                if self._offloaded is None:  # else the worker thread's end resumes it
                    upstream.resume_reading()
            else:
                upstream.pause_reading()
        elif writable:
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_writable(self) -> None:
        """Until the client takes more (a local body streamed with back-pressure), or is
        gone (then `finished` is set)."""
        client = self._client
        while client.write_paused and not self.finished:
            waiter = self._waiter = self._loop.create_future()
            await waiter

    def client_gone(self) -> None:
        if self._cache is not None:
            self._cache.abort()
        if self._pipe is not None:
            self._pipe.abort()
            self._pipe = None
        if not self.finished:
            if self._error is None:
                self._error = "client gone"
            self._done(self.status if self._response_started else 499, False)  # NGINX's 499
        self.finished = True
        self._wake()
        self._drop_upstream()
        self._release_backend(failed=None)
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
            self._pool.leave_queue(self)

    # -- endings -------------------------------------------------------------------------------

    def _retry_or_fail(self, status: int, *, counts: bool) -> None:
        if self.finished:
            return
        pool = self._pool
        if counts and len(self._tried) <= pool.settings.retries:
            budget = pool.budget
            now = self._loop.time()
            if budget is None or budget.can_retry(now):
                if budget is not None:
                    budget.record_retry(now)
                self._context.stats.retry(pool.name)
                self.start()
                return
        self._respond_error(status)

    def _respond_locally(self, answer: LocalResponse) -> None:
        """A filter or a route answered (429, a redirect, a fixed page, a file): the
        connection stays usable if the request was read whole, or the rest of its body can be
        discarded. The response-head stages run on it (users' `on_response` hooks do not:
        they see servers' responses)."""
        keep = self._may_keep()
        if not keep:
            self.keep_alive = False
        settings = self._settings
        chain = self._route_chain()
        hooks = settings.response_hooks
        if (
            self._listener_stages()
            or (hooks is not None and hooks.local)
            or (chain is not None and (chain.response_stages or _local_hooks(chain)))
        ):
            self._staged_local(answer, keep, chain)
            return
        self._answer(answer, keep)

    def _staged_local(self, answer: LocalResponse, keep: bool, chain: RouteChain | None) -> None:
        """A local answer through the response-head stages (a cache or compression may act
        on it); streamed when a transform was attached or the body is a source."""
        status = answer.status
        source = answer.source
        length = source.length if source is not None else len(answer.body)
        edit = ResponseEdit(
            status,
            answer.reason,
            list(answer.headers),
            length,
            self,
            has_body=status != 204 and status != 304 and self.method != b"HEAD",
            local=True,
        )
        try:
            self._response_stages(edit, chain, False)
        except PluginError:
            if source is not None:
                source.close()
            self._respond_error(500)
            return
        replacement = edit.replacement
        if replacement is not None:
            for transform in edit.transforms:
                transform.abort()
            if source is not None:
                source.close()
            self._answer(replacement, keep)
            return
        if edit.transforms:
            self._pipe = TransformChain(edit.transforms)
        elif source is None and edit.status == status and edit.headers == list(answer.headers):
            self._answer(answer, keep)  # untouched
            return
        reason = answer.reason if edit.status == status else reason_phrase(edit.status)
        self._stream(edit.status, reason, edit.headers, answer.body, source, keep)

    def _stream(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        body: bytes,
        source: BodySource | None,
        keep: bool,
    ) -> None:
        """Send a local answer piece by piece (a source, or a body through transforms)."""
        self.status = status
        self._response_started = False
        pipe = self._pipe
        out = self._out
        timeout = self._settings.send_timeout
        tasks.spawn(
            stream_local(self, out, pipe, status, reason, headers, body, source, keep, timeout)
        )

    def local_started(self) -> None:
        """`stream_local` wrote the first body bytes: from now on a failure cuts the response
        (and a client leaving is logged with the status, not 499)."""
        self._response_started = True

    def local_sent(self, head_len: int, sent: int, keep: bool) -> None:
        """`stream_local` wrote the whole answer (`sent` body bytes)."""
        self._head_len = head_len
        self._sent = sent
        if self.finished:
            return
        self.finished = True
        self._done(self.status)
        self._client.exchange_done(self, keep and self._out.keep)

    def local_failed(self, head_len: int, sent: int, error: str) -> None:
        """`stream_local` failed (a source or transform raised): a 500 while nothing was
        sent, else the response is cut."""
        self._head_len = head_len
        self._sent = sent
        self._pipe = None
        self._error = error
        if self.finished:
            return
        if self._response_started:
            self._abort()
            return
        self._out.cancel_response_head()
        self._respond_error(500)

    def _respond_error(self, status: int) -> None:
        keep = self._may_keep()
        cache = self._cache
        if cache is not None:
            # a stored response may stand in: stale-if-error, or an origin out of reach
            # (502-504: unreachable, broken, no server fit, too slow; 500 is Portico's own)
            stale = cache.on_failed(status != 500)
            if stale is not None:
                self._respond_locally(self._cached_answer(stale))
                return
        self._answer(upstream_error(status), keep)

    def _may_keep(self) -> bool:
        """Whether the client connection may stay open after this answer: a request whose
        body is still coming counts as read if the rest is small enough to be read and
        thrown away (`max_discard_size`; a chunked rest is found out while discarding)."""
        client = self._client
        if not self.keep_alive or client.draining:
            return False
        if self.request_complete:
            return True
        if not self.received and not self._continued and self._expects_continue():
            # it waits for a 100 Continue that never came: it may never send its body (curl
            # 7.88 does not, and sends its next request instead), so the connection ends
            return False
        if self.head.kind is not LENGTH_BODY:
            return True
        return self.head.length - self.received <= self._settings.max_discard_size

    def _expects_continue(self) -> bool:
        for name, value in self.headers:
            if name.lower() == b"expect":
                return value.lower() == b"100-continue"
        return False

    def _answer(self, answer: LocalResponse, keep: bool, linger: bool = False) -> None:
        """Portico answers itself (an error, a filter's or a route's answer): the whole
        response in one piece, framed by the client's framer (a streamed body piece by
        piece)."""
        client = self._client
        source = answer.source
        if source is not None:
            self._stream(answer.status, answer.reason, list(answer.headers), b"", source, keep)
            return
        head_only = self.method == b"HEAD"
        # head and body as the access log counts them (the body is left out for HEAD)
        self._head_len = self._out.send_local(answer, keep, head_only)
        self._sent = 0 if head_only else len(answer.body)
        status = self.status = answer.status
        self.finished = True
        self._done(status)
        client.exchange_done(self, keep, linger)

    def _abort(self) -> None:
        if self._cache is not None:
            self._cache.abort()  # never store a truncated body
        if self._pipe is not None:
            self._pipe.abort()
            self._pipe = None
        if not self.finished:
            self._done(self.status or 502, False)  # cut: logged with what was sent
        self.finished = True
        self._drop_upstream()
        self._client.abort()

    def _drop_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abort()

    def _done(self, status: int, complete: bool = True) -> None:
        """The request has ended (answered, refused, cut or abandoned): run the done phase's
        stages (the access log, users' `on_done`), count it."""
        route = self.route
        settings = self._settings
        learning = self._learning
        if learning is not None:
            # the stick table's stage: a session sticks once a response went out whole
            self._learning = None
            persistence = self._pool.persistence
            if complete and persistence is not None:
                persistence.learn(learning)
        if settings.done_stages or (
            settings.route_filters is not None and route is not None and self._route_done()
        ):
            self._done_stages(status, complete)
        self._context.stats.request_done(
            self._settings.name,
            route.name if route is not None else NO_ROUTE,
            self._pool.name,
            self._backend_name,
            status if status != 499 or self._response_started else 0,
            _monotonic() - self._started,
            self._connect_time,
        )
        hooks = self._settings.done_hooks
        if hooks:
            for hook in hooks:
                hook(self, status)

    def _route_done(self) -> bool:
        chain = self._route_chain()
        return chain is not None and bool(chain.done_stages)

    def _done_stages(self, status: int, complete: bool) -> None:
        """The done phase: the outcome to every done stage, the route's then the listener's."""
        client = self._client
        settings = self._settings
        route = self.route
        outcome = Outcome(
            status=status,
            complete=complete,
            bytes_sent=self._sent,
            server=self._backend_name,
            pool=self._pool.name,
            duration_s=time.monotonic() - self._started,
            error=self._error,
            listener=settings.name,
            route=route.name if route is not None else None,
            client_ip=client.client_ip,
            target=self._original_target,
            head_bytes=self._head_len,
            received=self.received,
            connect_s=self._connect_time,
            response_s=self._response_time,
            request_id=self._request_id,
        )
        chain = self._route_chain()
        if chain is not None:
            for stage in chain.done_stages:
                stage.on_done(self, outcome)
        for stage in settings.done_stages:
            stage.on_done(self, outcome)

    def _release_backend(self, *, failed: bool | None) -> None:
        """The request is done with its backend; `failed` feeds outlier detection (None: the
        outcome says nothing about the server, as when the client left)."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.in_flight -= 1
            pool = self._pool
            if failed:
                backend.failures += 1
                pool.observe(backend, True, self._loop.time())
            elif failed is not None and backend.fail_streak:
                pool.observe(backend, False, self._loop.time())
            if pool.queue:
                pool.released()


def _local_hooks(chain: RouteChain) -> bool:
    hooks = chain.response
    return hooks is not None and hooks.local


def _feed_all(pipe: TransformChain, pieces: list[bytes]) -> bytes:
    """`pieces` through `pipe`, joined (run in a worker thread for large pieces)."""
    out = [bytes(pipe.feed(piece)) for piece in pieces]
    return b"".join(out)


class _TunnelOwner:
    """What a WebSocket relay tells the client connection it took over: only its end."""

    __slots__ = ("_client",)

    def __init__(self, client: ClientSide) -> None:
        self._client = client

    def upstream_ready(self) -> None:  # the server connection was up before the relay
        pass

    def upstream_failed(self) -> None:
        pass

    def relay_closed(self) -> None:
        self._client.tunnel_closed()
