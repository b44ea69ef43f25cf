"""The exchange decides what a response says; the framer of the client's protocol frames it.

Driven through fake transports, without sockets: a request into a real `ClientConnection` (or
an HTTP/2 connection's stream), a server's response into the pooled `UpstreamConnection` the
exchange sends it on, and what the client would read taken from the client's transport. The
case that matters most for body transforms is a body of unknown length: chunked for an HTTP/1.1
client, read to the close for HTTP/1.0, DATA frames until END_STREAM for HTTP/2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from fakes import ClientTransport as FakeTransport
from fakes import worker_with_idle_servers
from portico.http.headers import HeadMemo, ResponseHead
from portico.listeners.h2 import H2ClientConnection
from portico.listeners.http import ClientConnection
from portico.observe.stats import ByteCounter
from portico.proxy.framing import Http1Framer
from portico.upstreams.connections import UpstreamConnection
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

# a body of unknown length: no Content-Length, no chunks, it ends when the server closes
UNKNOWN_LENGTH = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nhello"


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A worker whose one server has idle pooled connections: requests attach at once."""
    with worker_with_idle_servers(CONFIG, 2) as worker:
        yield worker


def http1_exchange(worker: Worker, request: bytes) -> tuple[FakeTransport, UpstreamConnection]:
    """A client connection with `request` in flight: its transport and the server connection."""
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(request)
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    return transport, upstream


def test_http11_body_of_unknown_length_is_chunked_and_the_connection_stays(worker) -> None:
    client, upstream = http1_exchange(worker, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(UNKNOWN_LENGTH)
    upstream.connection_lost(None)  # the server's close ends the body
    assert client.written == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert not client.closing


def test_http10_body_of_unknown_length_runs_to_the_close(worker) -> None:
    request = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    client, upstream = http1_exchange(worker, request)
    upstream.data_received(UNKNOWN_LENGTH)
    upstream.connection_lost(None)
    assert client.written == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nhello"
    assert client.closing  # the only end an HTTP/1.0 client can see


def test_http10_keep_alive_is_said_when_the_length_is_known(worker) -> None:
    request = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    client, upstream = http1_exchange(worker, request)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.written == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    )
    assert not client.closing


def test_a_small_response_leaves_in_one_write_head_and_body_together(worker) -> None:
    client, upstream = http1_exchange(worker, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # the head alone
    assert client.writes == []  # staged until the first body bytes
    upstream.data_received(b"hello")
    assert client.writes == [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]


class CallsTransport(FakeTransport):
    """Also records how each write came: one buffer, or parts for a gathered write (and the
    parts themselves, as handed over)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.parts: list[Any] = []

    def write(self, data: Any) -> None:
        self.calls.append(("write", 1))
        self.parts.append(data)
        super().write(data)

    def writelines(self, parts: Any) -> None:
        parts = list(parts)
        self.calls.append(("writelines", len(parts)))
        self.parts.extend(parts)
        super().writelines(parts)


def test_a_16k_response_leaves_in_one_gathered_write_its_body_never_copied(worker) -> None:
    # the head and the body read with it go out in one writev: the body is the server's own
    # read (a view of it), not sliced off it and joined to the head (two copies of 16 KiB)
    conn = ClientConnection(worker.settings["web"], worker.context)
    client = CallsTransport()
    conn.connection_made(client)
    conn.data_received(b"GET /16k HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    body = bytes(range(256)) * 64
    read = b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + body
    upstream.data_received(read)
    assert client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + body
    assert client.calls == [("writelines", 2)]
    sent = client.parts[1]
    assert isinstance(sent, memoryview)
    assert sent.obj is read
    assert upstream.is_reusable()  # and the server connection reads the next head


def test_over_tls_a_16k_response_still_leaves_in_one_buffer(worker) -> None:
    # over TLS each part of a gathered write is a record of its own: the head is joined
    framer = Http1Framer(ByteCounter(), tls=True)
    client = CallsTransport()
    framer.transport = client
    framer.send_response_head(200, b"OK", [], 16384, None, True)
    framer.send_body(memoryview(b"x" * 16384))
    framer.send_end()
    assert client.calls == [("write", 1)]
    assert client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + b"x" * 16384


def test_a_small_chunk_leaves_in_one_buffer_with_its_framing(worker) -> None:
    # over TLS every part of a gathered write is a TLS record of its own: head, size line,
    # data and CRLF would be four records (and four encryptions) for five bytes of body
    conn = ClientConnection(worker.settings["web"], worker.context)
    client = CallsTransport()
    conn.connection_made(client)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    upstream.data_received(b"5\r\nhello\r\n")
    upstream.data_received(b"3\r\nbye\r\n0\r\n\r\n")
    assert client.written == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nbye\r\n0\r\n\r\n"
    )
    assert client.writes[0] == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    assert ("writelines", 4) not in client.calls
    assert ("writelines", 3) not in client.calls
    assert all(kind == "write" for kind, _ in client.calls)


def test_http2_body_of_unknown_length_is_data_frames_until_end_stream(worker) -> None:
    h2client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2client.initiate_connection()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
    h2client.send_headers(1, fields, end_stream=True)
    transport = FakeTransport()
    conn = H2ClientConnection(worker.settings["web"], worker.context)
    conn.adopt(transport, "127.0.0.1", None, False, h2client.data_to_send())
    exchange = conn.streams[1].exchange
    assert exchange is not None
    upstream = exchange._upstream
    assert upstream is not None
    transport.writes.clear()
    upstream.data_received(UNKNOWN_LENGTH)
    upstream.connection_lost(None)
    conn._flush_now()  # what the loop would do at the end of this turn
    events = h2client.receive_data(transport.written)
    (response,) = [e for e in events if isinstance(e, ResponseReceived)]
    assert response.headers == [(b":status", b"200"), (b"x-a", b"1")]  # no length, no close
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"hello"
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == [1]


def test_http2_small_response_ends_on_its_only_data_frame(worker) -> None:
    h2client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2client.initiate_connection()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
    h2client.send_headers(1, fields, end_stream=True)
    transport = FakeTransport()
    conn = H2ClientConnection(worker.settings["web"], worker.context)
    conn.adopt(transport, "127.0.0.1", None, False, h2client.data_to_send())
    exchange = conn.streams[1].exchange
    assert exchange is not None
    upstream = exchange._upstream
    assert upstream is not None
    transport.writes.clear()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert transport.writes == []  # framed at the end of the loop's turn, all at once
    conn._flush_now()  # what the loop would do at the end of this turn
    assert len(transport.writes) == 1
    events = h2client.receive_data(transport.written)
    data = [e for e in events if isinstance(e, DataReceived)]
    # HEADERS, then one DATA frame that carries END_STREAM (not a second, empty one)
    assert [(e.data, e.stream_ended is not None) for e in data] == [(b"hello", True)]
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == [1]


def test_each_response_gets_its_own_status_line_and_length(worker) -> None:
    # status lines and Content-Length values are made once and reused: a reason or a length
    # that changes from one response to the next must still be the one sent
    conn = ClientConnection(worker.settings["web"], worker.context)
    client = FakeTransport()
    conn.connection_made(client)
    heads = []
    for response in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\n\r\nyes",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ):
        conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.active is not None
        upstream = conn.active._upstream
        assert upstream is not None
        upstream.data_received(response)
        heads.append(client.writes[-1])
    assert heads == [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\n\r\nyes",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# what an HTTP/1.1 client and an HTTP/1.0 one (that did not ask for keep-alive) get for OK
AS_HTTP11 = OK
AS_HTTP10 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def answer_active(conn: ClientConnection) -> None:
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    upstream.data_received(OK)


@pytest.mark.parametrize(
    ("reads", "answers"),
    [
        # the version is read off the request line when that begins a read, else asked of
        # the parser: each way, every request gets the framing of its own version
        pytest.param(
            [b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n"],
            [AS_HTTP11, AS_HTTP10],
            id="pipelined-1.1-then-1.0",
        ),
        pytest.param(
            [
                b"GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n"
                b"Host: a\r\n\r\n"
            ],
            [OK.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n", 1), AS_HTTP11],
            id="pipelined-1.0-then-1.1",
        ),
        pytest.param(
            [b"GET / HTTP/1.", b"0\r\nHost: a\r\n\r\n"], [AS_HTTP10], id="line-split-in-version"
        ),
        pytest.param([b"GET / HTTP/1.0\r\nHost: a\r\n", b"\r\n"], [AS_HTTP10], id="head-split"),
        pytest.param([b"\r\nGET / HTTP/1.0\r\nHost: a\r\n\r\n"], [AS_HTTP10], id="blank-line"),
        pytest.param(
            [
                b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
                b"abcGET / HTTP/1.0\r\nHost: a\r\n\r\n",
            ],
            [AS_HTTP11, AS_HTTP10],
            id="after-a-body-in-the-same-read",
        ),
    ],
)
def test_each_request_is_framed_for_its_own_version(
    worker: Worker, reads: list[bytes], answers: list[bytes]
) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    client = FakeTransport()
    conn.connection_made(client)
    for data in reads:
        conn.data_received(data)
    for _ in answers:
        answer_active(conn)
    assert client.writes == answers


def test_big_bodies_read_with_their_head_arrive_whole_whatever_their_framing(worker) -> None:
    # a body of 2 KiB or more read with its head goes on as a view of the read: chunked (the
    # parser reads the view), read to the close, and a Content-Length body cut short
    chunk = b"c" * 4000
    client, upstream = http1_exchange(worker, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(chunk), chunk)
    )
    assert client.written == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(chunk), chunk)
    )
    client, upstream = http1_exchange(worker, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + chunk)
    upstream.connection_lost(None)
    assert client.written == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(chunk), chunk)
    )
    client, upstream = http1_exchange(worker, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 8000\r\n\r\n" + chunk)
    upstream.data_received(chunk)
    assert client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 8000\r\n\r\n" + chunk + chunk
    assert upstream.is_reusable()


# (status, reason, fields, length, coding, keep, http11): heads that differ in one input each
_HEADS: list[tuple[int, bytes, list[tuple[bytes, bytes]], int, bytes | None, bool, bool]] = [
    (200, b"OK", [(b"Server", b"s"), (b"Date", b"d1")], 5, None, True, True),
    (200, b"OK", [(b"Server", b"s"), (b"Date", b"d2")], 5, None, True, True),
    (200, b"OK", [(b"Date", b"d2"), (b"Server", b"s")], 5, None, True, True),
    (200, b"OK", [(b"server", b"s"), (b"Date", b"d2")], 5, None, True, True),
    (200, b"OK", [(b"Server", b"s"), (b"Date", b"d2")], 6, None, True, True),
    (200, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], 6, None, True, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], 6, None, True, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], 6, None, False, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], 6, None, True, False),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], -1, None, True, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], -1, b"gzip, chunked", True, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], -1, None, True, False),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2")], -2, None, True, True),
    (201, b"Fine", [(b"Server", b"s"), (b"Date", b"d2"), (b"X", b"")], -2, None, True, True),
    (201, b"Fine", [(b"Server", b"s")], -2, None, True, True),
    (201, b"Fine", [], -2, None, True, True),
    (200, b"OK", [(b"Server", b"s"), (b"Date", b"d1")], 5, None, True, True),
]


def _staged(
    head: tuple[int, bytes, list[tuple[bytes, bytes]], int, bytes | None, bool, bool],
    memo: HeadMemo | None,
) -> tuple[bytes, int, bool]:
    status, reason, fields, length, coding, keep, http11 = head
    transport = FakeTransport()
    framer = Http1Framer(ByteCounter())
    framer.transport = transport
    framer.http11 = http11
    # fields as new objects each time, as a parse makes them
    fresh = [(bytes(bytearray(name)), bytes(bytearray(value))) for name, value in fields]
    size = framer.send_response_head(status, reason, fresh, length, coding, keep, memo)
    framer.send_end()
    return transport.written, size, framer.keep


def test_a_head_framed_again_from_a_memo_is_byte_for_byte_a_fresh_one() -> None:
    """The framer keeps the client head it serialized on the server head's memo and reuses
    it only for the same status, reason and framed fields: every head below, after every
    other, frames as one framed without a memo."""
    memo = HeadMemo(b"HTTP/1.1 200 OK\r\n\r\n", b"GET", 200, True, ResponseHead())
    reused = 0
    for previous in _HEADS:
        for head in _HEADS:
            _staged(previous, memo)
            with_memo = _staged(head, memo)
            assert with_memo == _staged(head, None), (previous, head)
            assert with_memo[0].startswith(b"HTTP/1.1 %d %s\r\n" % (head[0], head[1]))
            reused += previous == head
    assert reused == len(_HEADS) + 2  # (the first head is also the last)
    # a repeat is the memo's bytes, not serialized again
    framer = Http1Framer(ByteCounter())
    framer.transport = FakeTransport()
    fields = [(b"Server", b"s")]
    framer.send_response_head(200, b"OK", list(fields), 5, None, True, memo)
    first = memo.out_head
    framer.send_response_head(200, b"OK", list(fields), 5, None, True, memo)
    assert memo.out_head is first
