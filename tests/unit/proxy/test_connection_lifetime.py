"""A closed client connection is freed at once, not at the next full garbage collection.

Why it matters: a TLS connection's transport holds OpenSSL's state and buffers (tens of KiB),
which Python's collector does not see. While a closed connection object sat in a reference
cycle (parser -> its bound methods, timer -> its bound callback, h2 stream <-> exchange), each
one waited for a full collection, and a worker's RSS grew by ~20 KiB per TLS connection under
churn (60 -> 287 MiB in 20 s; `bench/run --tls-soak`). These tests run with the collector
off: only reference counting may free the objects.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from fakes import ClientTransport as FakeTransport
from fakes import worker_with_idle_servers
from portico.listeners.h2 import H2ClientConnection, H2Stream
from portico.listeners.http import ClientConnection
from portico.proxy.framing import H2Framer
from portico.proxy.l7 import Exchange
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    http2: true
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A worker whose one server has idle pooled connections: requests attach at once."""
    with worker_with_idle_servers(CONFIG, 4) as worker:
        yield worker


_EARLIER: set[int] = set()


@pytest.fixture(autouse=True)
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    # connections that other tests of the session keep reachable are not this test's
    _EARLIER.clear()
    _EARLIER.update(
        id(o) for o in gc.get_objects() if isinstance(o, ClientConnection | H2ClientConnection)
    )
    try:
        yield
    finally:
        gc.enable()


def alive(cls: type) -> list[object]:
    """The instances of `cls` still in memory. (No weak references here: a mypyc-compiled
    class that inherits from an interpreted one, as ClientConnection and H2ClientConnection do from
    asyncio.Protocol, must not be weakly referenced on Python 3.11: mypyc's deallocator
    releases the weak reference list as if it were an object.) The collector is off, so
    cyclic garbage would still be listed. Instances earlier tests of the session keep reachable
    are left out (after test_response_framing.py three were: not this test's)."""
    return [o for o in gc.get_objects() if isinstance(o, cls) and id(o) not in _EARLIER]


def test_a_closed_http1_connection_is_freed_by_reference_counting(worker: Worker) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n")
    assert conn.active is not None  # a request in flight, another half-parsed
    conn.connection_lost(None)
    del conn
    assert not alive(ClientConnection)


def test_a_closed_http2_connection_and_its_streams_are_freed(worker: Worker) -> None:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
    client.send_headers(1, fields, end_stream=True)
    client.send_headers(3, fields, end_stream=False)  # a body still to come
    transport = FakeTransport()
    conn = H2ClientConnection(worker.settings["web"], worker.context)
    conn.adopt(transport, "127.0.0.1", None, False, client.data_to_send())
    assert transport.protocol is conn
    assert len(conn.streams) == 2
    h2_gone = weakref.ref(conn.h2)
    conn.connection_lost(None)
    del conn
    transport.protocol = None
    assert not alive(H2ClientConnection)  # compiled, as ClientConnection: see alive()
    assert h2_gone() is None  # the h2 library's own object: cyclic inside, emptied on close
    # streams and exchanges have no weak references: look for them among all objects (the
    # collector is off, so cyclic garbage would still be listed)
    assert not [o for o in gc.get_objects() if isinstance(o, (H2Stream, H2Framer, Exchange))]


def test_an_http1_connection_that_hands_over_to_h2c_is_freed_too(worker: Worker) -> None:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
    client.send_headers(1, fields, end_stream=True)
    transport = FakeTransport()
    first = ClientConnection(worker.settings["web"], worker.context)
    first.connection_made(transport)
    first.data_received(client.data_to_send())  # the h2c preface: HTTP/2 takes over
    h2 = transport.protocol
    assert isinstance(h2, H2ClientConnection)
    assert len(h2.streams) == 1
    del first
    assert not alive(ClientConnection)  # nothing of the HTTP/1 side outlives the handover
    h2.connection_lost(None)
    del h2
    transport.protocol = None
    assert not alive(H2ClientConnection)


def answer(conn: ClientConnection, body: bytes) -> None:
    """The server connection of `conn`'s request in flight answers it with `body`."""
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def forwarded(conn: ClientConnection) -> bytes:
    """What `conn`'s request in flight sent its server, last."""
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    assert isinstance(upstream.transport, FakeTransport)
    return upstream.transport.writes[-1]


def test_an_idle_http1_connection_gives_up_its_parser_and_serves_the_next_request(
    worker: Worker,
) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(conn, b"one")
    assert transport.written.endswith(b"\r\n\r\none")
    parser = conn._parser
    conn.rest()  # the worker's sweep: idle since now...
    assert conn._parser is parser
    conn.rest()  # ... and still idle a sweep later: the parser goes
    assert conn._parser is not parser
    assert sys.getrefcount(parser) == 2  # this test's name for it and the call's: freed next
    del parser
    transport.writes.clear()
    conn.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert forwarded(conn).startswith(b"GET /two HTTP/1.1\r\n")
    answer(conn, b"two")
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b"\r\n\r\ntwo")


def test_an_idle_connection_gives_up_its_framer_and_frames_and_counts_the_next_answer(
    worker: Worker,
) -> None:
    """The framer goes with the parser (an idle connection holds neither); the next request's
    answer is framed as any (here for an HTTP/1.0 client: keep-alive said, since it asked)
    and its bytes count in the listener's traffic as before."""
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(conn, b"one")
    framer = conn._framer
    conn.rest()
    conn.rest()
    assert conn._framer is not framer
    assert sys.getrefcount(framer) == 2  # this test's name for it and the call's: freed next
    del framer
    counter = worker.stats.client_bytes("web")
    sent = counter.sent
    transport.writes.clear()
    conn.data_received(b"GET /two HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    answer(conn, b"two")
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in transport.written
    assert transport.written.endswith(b"\r\n\r\ntwo")
    assert counter.sent - sent == len(transport.written)
    assert not transport.closing
    transport.writes.clear()
    conn.data_received(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")  # and again at once
    answer(conn, b"three")
    assert transport.written.endswith(b"\r\n\r\nthree")
    assert b"Connection:" not in transport.written


def test_a_connection_sets_its_write_buffer_to_half_the_listeners_response_buffer(
    worker: Worker,
) -> None:
    """What bounds the response bytes held for a client that does not read
    (`limits.response_buffer`, 64 KiB unless configured): set as the connection is made."""
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    assert transport.high_water == worker.settings["web"].response_buffer // 2 == 32 * 1024


def test_a_connection_with_bytes_between_sweeps_or_half_a_head_keeps_its_parser(
    worker: Worker,
) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.rest()
    conn.data_received(b"GET /slow HTTP/1.1\r\nHo")  # a byte since the last sweep
    parser = conn._parser
    conn.rest()
    conn.rest()  # no byte for two sweeps, but half a head parsed: its parser holds it
    assert conn._parser is parser
    conn.data_received(b"st: a\r\n\r\n")
    assert forwarded(conn).startswith(b"GET /slow HTTP/1.1\r\n")
    answer(conn, b"slow")
    assert transport.written.endswith(b"\r\n\r\nslow")


class _NoPeerTransport(FakeTransport):
    """A transport that must not be asked for the peer's address."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        assert name != "peername", "the peer's address was asked of the transport"
        return default


def test_a_connection_given_its_peer_at_accept_uses_it_without_asking_the_transport(
    worker: Worker,
) -> None:
    """The acceptor hands over the address accept(2) gave (asking the transport formats it
    again): the server sees that client, and the connection is served."""
    conn = ClientConnection(worker.settings["web"], worker.context, ("192.0.2.9", 5555))
    transport = _NoPeerTransport()
    conn.connection_made(transport)
    assert conn.client_ip == "192.0.2.9"
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"\r\nX-Forwarded-For: 192.0.2.9\r\n" in forwarded(conn)
    answer(conn, b"ok")
    assert transport.written.endswith(b"\r\n\r\nok")
    conn.connection_lost(None)


def test_a_connection_without_a_peer_from_accept_asks_the_transport(worker: Worker) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    conn.connection_made(FakeTransport())  # reports 127.0.0.1:40000
    assert conn.client_ip == "127.0.0.1"
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in forwarded(conn)
    conn.connection_lost(None)
