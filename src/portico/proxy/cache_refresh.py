"""A stale-while-revalidate refresh (RFC 5861 §3): the request a cache sends on its own.

Owns `refresh`, which sends a stored response's conditional GET to a server of the route's
pool, with no client waiting on it, and feeds the answer to the cache's side of that request
(`portico.cache.runtime.CacheExchange`, marked `background`): a 304 refreshes the stored
response, a full response replaces it, a failure leaves it as it is. One refresh per key at a
time (the cache counts them); bounded by the pool's connect and read timeouts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from portico.http.headers import (
    LENGTH_BODY,
    NO_BODY,
    Header,
    ResponseHead,
    serialize_head,
    split_request_headers,
)
from portico.upstreams.connections import ResponseSink, UpstreamConnection, read_buffer_size

if TYPE_CHECKING:
    from portico.cache.runtime import CacheExchange
    from portico.upstreams.backend import BackendState
    from portico.upstreams.pool import Pool

__all__ = ["refresh"]


class _Sink(ResponseSink):
    """Receives the refresh's response for the cache."""

    def __init__(self, cache: CacheExchange, loop: asyncio.AbstractEventLoop) -> None:
        self.cache = cache
        self.done: asyncio.Future[bool] = loop.create_future()

    def on_interim(self, status: int, head: ResponseHead) -> None:
        pass

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        kind = head.kind
        length = head.length if kind is LENGTH_BODY else 0 if kind is NO_BODY else None
        self.cache.on_response(status, head.headers, length)

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.cache.feed(data)

    def on_response_trailers(self, fields: list[Header]) -> None:
        pass

    def on_response_end(self) -> None:
        self.cache.end()
        if not self.done.done():
            self.done.set_result(True)

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        self.cache.abort()
        if not self.done.done():
            self.done.set_result(False)

    def on_upstream_writable(self, writable: bool) -> None:
        pass

    def read_size(self) -> int:
        return read_buffer_size()  # no client to wait for: read as much as a server connection may

    def on_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        self.on_upstream_failed("upgrade", True, False)

    def on_response_waiting(self) -> None:
        pass

    def on_response_spliced(self, size: int) -> None:
        pass  # never spliced: the cache must see the body (no client socket either)

    def on_client_failed(self) -> None:
        pass


async def refresh(
    cache: CacheExchange, pool: Pool, host: bytes | None, loop: asyncio.AbstractEventLoop
) -> None:
    """Send `cache`'s request (conditional on the stored response) to a server of `pool`."""
    backend: BackendState | str | None = pool.select(
        cache.headers, cache.target, "", (), loop.time()
    )
    if backend is None or isinstance(backend, str):
        cache.abort()
        return
    settings = pool.settings
    conn = backend.take_idle()
    backend.in_flight += 1
    try:
        if conn is None:
            try:
                async with asyncio.timeout(settings.connect_timeout):
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
            except (OSError, TimeoutError):
                cache.abort()
                return
        sorted_head = split_request_headers(cache.headers, False, False)
        fields = cache.conditional(sorted_head.headers) or sorted_head.headers
        if host is None:
            fields = [(b"Host", f"{backend.host}:{backend.port}".encode()), *fields]
        head = serialize_head(b"GET " + cache.target + b" HTTP/1.1", fields)
        sink = _Sink(cache, loop)
        conn.send(sink, b"GET", head, True)
        reusable = await sink.done
        conn.detach()
        if not (reusable and conn.is_reusable() and backend.put_idle(conn, loop.time())):
            conn.close()
    finally:
        backend.in_flight -= 1
