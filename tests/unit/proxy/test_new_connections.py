"""What a client connection costs from its accept to its first request is kept small (issue
#18: a new connection per request), without a change a client could see: the parsers of a
loop's connections share one callback object (`ParserHooks`), each read's callbacks reaching
the connection that read it; and a new connection's header timeout runs from its accept.
Driven through fake transports: requests into real `ClientConnection`s, the server's answer
into the pooled `UpstreamConnection` an exchange sends them on."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from functools import partial
from typing import Any

import httptools
import pytest

from fakes import ClientTransport, FakeLoop, worker_with_idle_servers
from portico.listeners.http import ClientConnection, hooks_of, new_connection
from portico.timers import Deadline
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    access_log: {path: /dev/null}
    timeouts: {header: 10s, keepalive: 60s}
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def worker() -> Iterator[Worker]:
    with worker_with_idle_servers(CONFIG, 4) as worker:
        yield worker


def connect(worker: Worker, loop: FakeLoop | None = None) -> tuple[ClientConnection, Any]:
    conn = ClientConnection(worker.settings["web"], worker.context, ("127.0.0.1", 40000))
    if loop is not None:
        conn._deadline = Deadline(loop, conn._on_timeout)  # type: ignore[arg-type]
    transport = ClientTransport()
    conn.connection_made(transport)
    return conn, transport


def forwarded(conn: ClientConnection) -> bytes:
    """The request head `conn`'s request in flight sent its server."""
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    assert isinstance(upstream.transport, ClientTransport)
    return upstream.transport.writes[-1]


def answer(conn: ClientConnection) -> None:
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    upstream.data_received(OK)


def test_connections_fed_in_turn_each_get_their_own_requests(worker: Worker) -> None:
    a, a_out = connect(worker)
    b, b_out = connect(worker)
    # each head split over two reads, the reads interleaved: the parsers hold half a head each
    a.data_received(b"GET /a HTTP/1.1\r\nHo")
    b.data_received(b"GET /b HTTP/1.1\r\nHost: b\r\nX-Who")
    a.data_received(b"st: a\r\nX-Who: a\r\n\r\n")
    b.data_received(b": b\r\n\r\n")
    assert forwarded(a).startswith(b"GET /a HTTP/1.1\r\n")
    assert b"X-Who: a\r\n" in forwarded(a)
    assert forwarded(b).startswith(b"GET /b HTTP/1.1\r\n")
    assert b"X-Who: b\r\n" in forwarded(b)
    answer(a)
    answer(b)
    assert a_out.written.endswith(b"\r\n\r\nok")
    assert b_out.written.endswith(b"\r\n\r\nok")


class _Interrupting(httptools.HttpRequestParser):
    """A parser that, before parsing its read, has another connection read first: that
    connection's callbacks run while this connection's read is under way."""

    def __init__(self, protocol: object, other: ClientConnection, data: bytes) -> None:
        super().__init__(protocol)
        self.other = other
        self.data = data

    def feed_data(self, data: Any) -> None:
        other, self.other = self.other, None
        if other is not None:
            other.data_received(self.data)
        super().feed_data(data)


def test_a_connection_fed_within_another_ones_read_gives_the_callbacks_back(
    worker: Worker,
) -> None:
    a, _ = connect(worker)
    b, _ = connect(worker)
    a._parser = _Interrupting(
        hooks_of(worker.loop).protocol, b, b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n"
    )
    a.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert forwarded(b).startswith(b"GET /b HTTP/1.1\r\n")
    assert forwarded(a).startswith(b"GET /a HTTP/1.1\r\n")
    assert hooks_of(worker.loop).conn is None  # no connection kept once the reads are over


def test_a_parser_keeps_no_reference_to_its_connection(worker: Worker) -> None:
    conn, _ = connect(worker)
    conn.data_received(b"GET /a HTTP/1.1\r\nHo")  # half a head: the parser is in use
    referents = gc.get_referents(conn._parser)
    assert not [r for r in referents if r is conn or getattr(r, "__self__", None) is conn]


def test_a_new_connections_header_timeout_runs_from_its_accept(worker: Worker) -> None:
    loop = FakeLoop()
    conn, transport = connect(worker, loop)
    loop.advance(9.0)  # the client waits before its first byte...
    conn.data_received(b"GET /late HTTP/1.1\r\nHost: a\r\n")
    loop.advance(0.9)
    assert not transport.closing
    loop.advance(0.2)  # ... and its head is not complete 10 s after the accept
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert transport.closing


def test_a_kept_alive_connections_next_head_is_timed_from_its_first_byte(
    worker: Worker,
) -> None:
    loop = FakeLoop()
    conn, transport = connect(worker, loop)
    conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(conn)
    loop.advance(30.0)  # idle, within the keep-alive timeout
    conn.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\n")
    loop.advance(9.9)
    assert not transport.closing
    conn.data_received(b"\r\n")
    assert forwarded(conn).startswith(b"GET /two HTTP/1.1\r\n")


def test_a_kept_alive_connections_unfinished_next_head_gets_the_header_timeout(
    worker: Worker,
) -> None:
    """The header timeout is armed once the read that began a head is parsed, if the head is
    still unfinished then (not when its first byte is parsed): it runs all the same."""
    loop = FakeLoop()
    conn, transport = connect(worker, loop)
    conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(conn)
    loop.advance(30.0)
    conn.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\n")
    loop.advance(9.9)
    assert not transport.closing
    loop.advance(0.2)  # not the keep-alive timeout (60 s) any more: the head's
    assert b"HTTP/1.1 408 " in transport.written
    assert transport.closing


def test_a_head_begun_on_a_draining_new_connection_gets_the_whole_header_timeout(
    worker: Worker,
) -> None:
    loop = FakeLoop()
    conn, transport = connect(worker, loop)
    conn.drain()  # a reload: a new connection gets a second for its first request
    loop.advance(0.5)
    conn.data_received(b"GET /drained HTTP/1.1\r\nHost: a\r\n")
    loop.advance(9.9)
    assert not transport.closing
    conn.data_received(b"\r\n")
    assert forwarded(conn).startswith(b"GET /drained HTTP/1.1\r\n")
    answer(conn)
    assert b"Connection: close\r\n" in transport.written


def test_the_factory_the_worker_accepts_with_makes_a_connection_that_knows_its_peer(
    worker: Worker,
) -> None:
    factory = partial(new_connection, worker.settings["web"], worker.context)
    conn = factory(("192.0.2.7", 5000))
    assert isinstance(conn, ClientConnection)
    assert conn.client_ip == "192.0.2.7"
    conn.connection_made(ClientTransport())
    conn.data_received(b"GET /f HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in forwarded(conn)
