"""UpstreamConnection reading responses through a fake transport: the head's fields as the
client gets them, whatever path the parse took (one dict fill, or a callback per field when
a name repeats), and the body framing after them."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from portico.http.headers import BodyKind, ResponseHead
from portico.upstreams.backend import BackendState
from portico.upstreams.connections import (
    BIG_READ,
    CLIENT_HIGH_WATER,
    MAX_READ,
    MIN_READ,
    READ_SIZE,
    TCP_MEMORY_EVERY,
    ResponseSink,
    SendRoom,
    TcpMemory,
    UpstreamConnection,
    body_read_size,
    client_read_size,
    read_buffer_size,
    reserve_read_buffer,
    send_room,
    tcp_memory_calm,
)


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class Sink(ResponseSink):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_interim(self, status: int, head: ResponseHead) -> None:
        self.events.append(("interim", status, list(head.headers)))

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        self.events.append(("head", status, head.reason, list(head.headers), head.kind))

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.events.append(("body", bytes(data)))

    def on_response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", fields))

    def on_response_end(self) -> None:
        self.events.append(("end",))

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        self.events.append(("failed", reason))

    def on_upstream_writable(self, writable: bool) -> None:
        pass

    def on_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        self.events.append(("upgraded", rest))

    def on_response_waiting(self) -> None:
        self.events.append(("waiting",))

    def read_size(self) -> int:
        return READ_SIZE


def exchange(
    responses: list[bytes], hide: frozenset[bytes] = frozenset(), method: bytes = b"GET"
) -> tuple[UpstreamConnection, list[Sink]]:
    """Send one request per response on one connection, feeding each response as given."""
    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: 0.0)
    conn = UpstreamConnection(backend, 30.0, 30.0, hide)
    conn.transport = Transport()  # type: ignore[assignment]
    sinks = []
    for data in responses:
        sink = Sink()
        sinks.append(sink)
        conn.send(sink, method, b"GET / HTTP/1.1\r\n\r\n", True)
        conn.data_received(data)
        if sink.events and sink.events[-1] == ("end",):
            conn.detach()
    return conn, sinks


def test_plain_fields_keep_order_and_spelling_framing_and_hop_by_hop_go() -> None:
    _, [sink] = exchange(
        [
            b"HTTP/1.1 200 Fine\r\nServer: s\r\nContent-Length: 2\r\nkeep-alive: timeout=5\r\n"
            b"Connection: keep-alive\r\nx-custom: 1\r\nDate: d\r\n\r\nok"
        ]
    )
    assert sink.events == [
        (
            "head",
            200,
            b"Fine",
            [(b"Server", b"s"), (b"x-custom", b"1"), (b"Date", b"d")],
            BodyKind.LENGTH,
        ),
        ("body", b"ok"),
        ("end",),
    ]


def test_a_length_head_read_alone_says_its_body_is_still_to_come_once() -> None:
    """The sink hears that a Content-Length body has not begun (a spliced body starts from
    there); a head read with body bytes, or with no body to come, does not say it."""
    conn, [sink] = exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"])
    assert [event[0] for event in sink.events] == ["head", "waiting"]
    conn.data_received(b"ab")
    conn.data_received(b"cd")
    assert sink.events[2:] == [("body", b"ab"), ("body", b"cd"), ("end",)]
    _, [with_body, empty] = exchange(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
    )
    assert [event[0] for event in with_body.events] == ["head", "body"]
    assert [event[0] for event in empty.events] == ["head", "end"]


def test_repeated_field_names_are_all_forwarded_in_order() -> None:
    _, [sink] = exchange(
        [
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: x\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 0\r\nset-cookie: c=3\r\n\r\n"
        ]
    )
    assert sink.events[0][3] == [
        (b"Set-Cookie", b"a=1"),
        (b"Vary", b"x"),
        (b"Set-Cookie", b"b=2"),
        (b"set-cookie", b"c=3"),
    ]


def test_names_listed_in_connection_and_hidden_names_are_dropped() -> None:
    _, [sink] = exchange(
        [
            b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: p\r\nX-Powered-By: php\r\n"
            b"Server: s\r\nContent-Length: 0\r\n\r\n"
        ],
        hide=frozenset({b"x-powered-by"}),
    )
    assert sink.events[0][3] == [(b"Server", b"s")]


def test_empty_values_and_no_reason_phrase() -> None:
    _, [sink] = exchange([b"HTTP/1.1 204 \r\nX-Empty:\r\nX-Next: n\r\n\r\n"])
    assert sink.events == [
        ("head", 204, b"", [(b"X-Empty", b""), (b"X-Next", b"n")], BodyKind.NONE),
        ("end",),
    ]


def test_interim_then_final_response_in_one_read() -> None:
    _, [sink] = exchange(
        [
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        ]
    )
    assert sink.events == [
        ("interim", 103, [(b"Link", b"</a>")]),
        ("head", 200, b"OK", [], BodyKind.LENGTH),
        ("body", b"x"),
        ("end",),
    ]


def test_chunked_body_after_a_head_with_repeated_or_plain_names() -> None:
    for extra in (b"", b"Vary: a\r\nVary: b\r\n"):
        conn, [sink] = exchange(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n"
                b"3\r\nabc\r\n0\r\nTrailer-Field: t\r\n\r\n"
            ]
        )
        # the head's fields are read twice (by a second parser) but reported once: only the
        # trailer section comes back as trailers
        assert sink.events[1:] == [
            ("body", b"abc"),
            ("trailers", [(b"trailer-field", b"t")]),
            ("end",),
        ]
        assert conn.is_reusable()


def test_connection_is_reused_for_many_responses() -> None:
    response = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 1\r\n\r\nx"
    conn, sinks = exchange([response] * 3)
    assert all(s.events[-1] == ("end",) for s in sinks)
    assert conn.is_reusable()


def test_every_response_on_a_connection_gets_its_own_head_whatever_came_before() -> None:
    """One parser reads the heads of a connection's responses while each message ended where
    llhttp saw it end: after any kind of response, the next head is read whole and alone."""
    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: 0.0)
    conn = UpstreamConnection(backend, 30.0, 30.0)
    conn.transport = Transport()  # type: ignore[assignment]
    steps: list[tuple[bytes, list[bytes], list[tuple[bytes, bytes]], list[bytes]]] = [
        (
            b"GET",
            [b"HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 2\r\n\r\nab"],
            [(b"A", b"1")],
            [b"ab"],
        ),
        (b"GET", [b"HTTP/1.1 204 No\r\nB: 2\r\n\r\n"], [(b"B", b"2")], []),
        # a HEAD's response announces a body llhttp would wait for
        (b"HEAD", [b"HTTP/1.1 200 OK\r\nC: 3\r\nContent-Length: 9\r\n\r\n"], [(b"C", b"3")], []),
        (b"GET", [b"HTTP/1.1 200 OK\r\nD: 4\r\nContent-Length: 0\r\n\r\n"], [(b"D", b"4")], []),
        # a body in two reads
        (
            b"GET",
            [b"HTTP/1.1 200 OK\r\nE: 5\r\nContent-Length: 4\r\n\r\nab", b"cd"],
            [(b"E", b"5")],
            [b"ab", b"cd"],
        ),
        (b"GET", [b"HTTP/1.1 304 Not Modified\r\nF: 6\r\n\r\n"], [(b"F", b"6")], []),
        (
            b"GET",
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nG: 7\r\n\r\n1\r\nz\r\n0\r\n\r\n"],
            [(b"G", b"7")],
            [b"z"],
        ),
        (
            b"GET",
            [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nH: 8\r\nContent-Length: 1\r\n\r\nh"],
            [(b"H", b"8")],
            [b"h"],
        ),
        (
            b"GET",
            [b"HTTP/1.1 200 OK\r\nI: 9\r\nContent-Length: 1\r\n\r\ni"],
            [(b"I", b"9")],
            [b"i"],
        ),
    ]
    for method, reads, fields, body in steps:
        sink = Sink()
        conn.send(sink, method, b"GET / HTTP/1.1\r\n\r\n", True)
        for data in reads:
            conn.data_received(data)
        heads = [e for e in sink.events if e[0] == "head"]
        assert [h[3] for h in heads] == [fields], method
        assert [e[1] for e in sink.events if e[0] == "body"] == body
        assert sink.events[-1] == ("end",)
        conn.detach()
        assert conn.is_reusable()
    # and a malformed head is still refused after all that
    sink = Sink()
    conn.send(sink, b"GET", b"GET / HTTP/1.1\r\n\r\n", True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")
    assert sink.events[0][0] == "failed"


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_malformed_heads_fail_the_exchange(bad: bytes) -> None:
    conn, [sink] = exchange([bad])
    assert sink.events[0][0] == "failed"
    assert not conn.is_reusable()


def test_a_connection_paused_for_a_slow_client_reads_again_once_pooled() -> None:
    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: 0.0)
    conn = UpstreamConnection(backend, 30.0, 30.0)
    transport = Transport()
    conn.transport = transport  # type: ignore[assignment]
    conn._deadline = None  # no timers without a running loop
    first, second = Sink(), Sink()
    conn.send(first, b"GET", b"GET /big HTTP/1.1\r\n\r\n", True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    conn.pause_reading()  # the client fell behind
    conn.data_received(b"def")  # what was in flight still arrives: the response is whole
    assert first.events[-1] == ("end",)
    conn.detach()
    assert conn.is_reusable()
    assert transport.reading  # pooled paused, it would never read the next response
    conn.send(second, b"GET", b"GET /next HTTP/1.1\r\n\r\n", True)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert second.events[-1] == ("end",)


class _Transport:
    """What `client_read_size` asks of a client transport."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


def test_a_read_never_takes_the_clients_buffer_past_max_read() -> None:
    assert client_read_size(_Transport()) == MAX_READ  # type: ignore[arg-type]
    for buffered in (1, 8 * 1024, CLIENT_HIGH_WATER - 1):
        size = client_read_size(_Transport(buffered))  # type: ignore[arg-type]
        assert buffered + size == MAX_READ
    assert client_read_size(_Transport(MAX_READ)) == MIN_READ  # type: ignore[arg-type]
    assert client_read_size(None) == READ_SIZE


def test_bytes_held_for_the_client_this_turn_count_as_buffered() -> None:
    """The outbox's bytes for a client are on their way to its buffer: a read leaves room for
    them as for what the transport holds (a slow reader's bound)."""
    for buffered, held in ((0, 1), (0, 8 * 1024), (4 * 1024, 8 * 1024)):
        size = client_read_size(_Transport(buffered), held=held)  # type: ignore[arg-type]
        assert buffered + held + size == MAX_READ
    assert client_read_size(_Transport(), held=MAX_READ) == MIN_READ  # type: ignore[arg-type]


def test_a_read_never_takes_the_clients_buffer_past_the_listeners_limit() -> None:
    limit = 1024 * 1024  # limits.response_buffer: 1MiB; the high-water mark is half of it
    assert client_read_size(_Transport(), limit) == limit  # type: ignore[arg-type]
    for buffered in (1, 64 * 1024, limit // 2 - 1):
        assert buffered + client_read_size(_Transport(buffered), limit) == limit  # type: ignore[arg-type]
    assert client_read_size(_Transport(limit), limit) == MIN_READ  # type: ignore[arg-type]


def test_a_fast_reader_gets_big_reads_only_when_the_kernel_takes_them_whole() -> None:
    limit = MAX_READ
    # nothing buffered, room in the send queue: read what the kernel takes, up to BIG_READ
    assert body_read_size(0, limit, 200 * 1024) == 200 * 1024
    assert body_read_size(0, limit, 4 * 1024 * 1024) == BIG_READ
    # some room, less than the limit: just that room (a read the kernel takes in part stays
    # whole in user space until the rest is sent)
    for free in (MIN_READ, 20 * 1024, limit):
        assert body_read_size(0, limit, free) == free
    # (almost) no room (a slow reader's queue is full) or none known: the bounded rule
    for free in (-1, 0, 1024, MIN_READ - 1):
        assert body_read_size(0, limit, free) == limit
    # anything in user space: the bounded rule, whatever the kernel says
    for buffered in (1, 8 * 1024, CLIENT_HIGH_WATER - 1):
        assert body_read_size(buffered, limit, 4 * 1024 * 1024) + buffered == limit
    assert body_read_size(limit, limit, 4 * 1024 * 1024) == MIN_READ
    # a listener limit above BIG_READ: read whole when the room is larger, else the room
    assert body_read_size(0, 1024 * 1024, 4 * 1024 * 1024) == 1024 * 1024
    assert body_read_size(0, 1024 * 1024, 512 * 1024) == 512 * 1024


class _RoomTransport(_Transport):
    def __init__(self, sock: socket.socket | None, buffered: int = 0, tls: bool = False) -> None:
        super().__init__(buffered)
        self.extra: dict[str, Any] = {"socket": sock, "sslcontext": object() if tls else None}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


def test_the_send_room_follows_the_kernels_send_queue() -> None:
    """Over a real loopback pair: an empty queue gives room past the limit, a queue filled by
    a peer that does not read gives none, and TLS or a missing socket opt out."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 512 * 1024)
            room = send_room(_RoomTransport(peer))  # type: ignore[arg-type]
            assert room is not None
            assert room.free() > MAX_READ
            assert client_read_size(_RoomTransport(peer), MAX_READ, room) > MAX_READ  # type: ignore[arg-type]
            # something in user space: the bounded rule, the kernel not asked
            buffered = _RoomTransport(peer, 1024)
            assert client_read_size(buffered, MAX_READ, room) == MAX_READ - 1024  # type: ignore[arg-type]
            # the client stops reading: fill its receive buffer and our send queue
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peer.setblocking(False)
            chunk = bytes(64 * 1024)
            for _ in range(1000):  # bounded: the queues hold a few MiB at most
                try:
                    peer.send(chunk)
                except BlockingIOError:
                    break
            else:
                pytest.fail("the send queue never filled")
            assert room.free() < MIN_READ
            assert client_read_size(_RoomTransport(peer), MAX_READ, room) == MAX_READ  # type: ignore[arg-type]
            assert send_room(_RoomTransport(peer, tls=True)) is None  # type: ignore[arg-type]
            assert send_room(_RoomTransport(None)) is None  # type: ignore[arg-type]


class _MeminfoSocket:
    """A socket whose SO_MEMINFO says what `queued` is set to, counting how often it is asked."""

    family = socket.AF_INET

    def __init__(self, sndbuf: int) -> None:
        self.sndbuf = sndbuf
        self.queued = 0
        self.asked = 0

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked += 1
        return struct.pack("=9I", 0, 0, 0, self.sndbuf, 0, self.queued, 0, 0, 0)


def test_the_kernel_is_asked_again_only_when_the_room_left_may_be_short() -> None:
    """A fast reader's 1 MiB body in big reads: one getsockopt while the room measured, less
    what the reads took since, still covers a whole big read; the sizes are the same as when
    it is asked every time. Once that floor runs short it is asked again."""
    sock = _MeminfoSocket(sndbuf=4 * 1024 * 1024)  # room: 2 MiB of payload
    room = SendRoom(sock)  # type: ignore[arg-type]
    transport = _Transport(0)
    sizes = [client_read_size(transport, MAX_READ, room) for _ in range(4)]  # type: ignore[arg-type]
    assert sizes == [BIG_READ] * 4
    assert sock.asked == 1
    # the floor (2 MiB - 1 MiB) covers four more; the fifth asks again
    sizes = [client_read_size(transport, MAX_READ, room) for _ in range(4)]  # type: ignore[arg-type]
    assert sizes == [BIG_READ] * 4
    assert sock.asked == 1
    sock.queued = 4 * 1024 * 1024 - 2 * 10 * 1024  # the client fell behind: 10 KiB of room
    assert client_read_size(transport, MAX_READ, room) == 10 * 1024  # type: ignore[arg-type]
    assert sock.asked == 2
    # a read while bytes wait in user space counts against the floor too
    sock.queued = 0
    assert client_read_size(transport, MAX_READ, room) == BIG_READ  # type: ignore[arg-type]
    assert client_read_size(_Transport(1024), MAX_READ, room) == MAX_READ - 1024  # type: ignore[arg-type]
    assert sock.asked == 3
    sock.queued = 4 * 1024 * 1024  # full: nothing more may be read past the bound
    floor_left = 2 * 1024 * 1024 - BIG_READ - (MAX_READ - 1024)
    reads = floor_left // BIG_READ  # what the floor still covers without asking
    for _ in range(reads):
        client_read_size(transport, MAX_READ, room)  # type: ignore[arg-type]
    assert sock.asked == 3
    assert client_read_size(transport, MAX_READ, room) == MAX_READ  # type: ignore[arg-type]
    assert sock.asked == 4


def test_the_shared_read_buffer_grows_to_the_largest_limit_and_never_shrinks() -> None:
    before = read_buffer_size()
    assert before >= BIG_READ
    reserve_read_buffer(16 * 1024)
    assert read_buffer_size() == before
    reserve_read_buffer(before + 4096)
    assert read_buffer_size() == before + 4096
    # a body read for a client with a large limit gets the room it asks for

    class LargeLimit(Sink):
        def read_size(self) -> int:
            return before + 4096

    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: 0.0)
    conn = UpstreamConnection(backend, 30.0, 30.0)
    conn.transport = Transport()  # type: ignore[assignment]
    conn.send(LargeLimit(), b"GET", b"GET / HTTP/1.1\r\n\r\n", True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
    assert len(conn.get_buffer(-1)) == before + 4096


def test_big_reads_stop_when_the_kernels_tcp_memory_passes_its_first_mark() -> None:
    sockstat = (
        "sockets: used 312\nTCP: inuse 301 orphan 0 tw 4 alloc 303 mem {mem}\nUDP: inuse 0 mem 0\n"
    )
    tcp_mem = "287907\t383878\t575814\n"
    assert tcp_memory_calm(sockstat.format(mem=239), tcp_mem)
    assert tcp_memory_calm(sockstat.format(mem=287906), tcp_mem)
    assert not tcp_memory_calm(sockstat.format(mem=287907), tcp_mem)
    assert not tcp_memory_calm(sockstat.format(mem=459259), tcp_mem)
    # unreadable: nothing changes (big reads as before)
    assert tcp_memory_calm("sockets: used 1\n", tcp_mem)
    assert tcp_memory_calm(sockstat.format(mem="x"), tcp_mem)
    assert tcp_memory_calm(sockstat.format(mem=1), "")


def test_the_tcp_memory_reading_agrees_with_this_machines_figures() -> None:
    memory = TcpMemory()
    with open("/proc/net/sockstat") as sockstat, open("/proc/sys/net/ipv4/tcp_mem") as mem:
        expected = tcp_memory_calm(sockstat.read(), mem.read())
    assert memory.calm(100.0) is expected
    assert memory.calm(100.0 + TCP_MEMORY_EVERY / 2) is expected


class HeadSink(Sink):
    """A sink that records every attribute of the heads it gets, and the heads themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[ResponseHead] = []

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        self.heads.append(head)
        self.events.append(
            (
                "head",
                status,
                head.reason,
                list(head.headers),
                head.kind,
                head.length,
                head.declared_length,
                head.te,
                head.keep_alive,
                head.upgrade,
            )
        )
        head.headers.append((b"X-Edited", b"by the proxy"))  # as the exchange's framer does


_CONTINUED = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nH: 8\r\nContent-Length: 1\r\n\r\nh"
# (method, reads): responses repeated byte for byte, after the same method or another
MEMO_STEPS: list[tuple[bytes, list[bytes]]] = [
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d1\r\nContent-Length: 2\r\n\r\nab"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d1\r\nContent-Length: 2\r\n\r\nab"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\ncd"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\nef"]),
    # the same bytes after a HEAD: no body, whatever Content-Length says
    (b"HEAD", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\n"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\n", b"gh"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\n", b"gh"]),
    (b"HEAD", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\n"]),
    (b"HEAD", [b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d2\r\nContent-Length: 2\r\n\r\n"]),
    (b"GET", [b"HTTP/1.1 204 No\r\nB: 2\r\n\r\n"]),
    (b"GET", [b"HTTP/1.1 204 No\r\nB: 2\r\n\r\n"]),
    (b"GET", [b"HTTP/1.1 304 Not Modified\r\nETag: e\r\nContent-Length: 7\r\n\r\n"]),
    (b"GET", [b"HTTP/1.1 304 Not Modified\r\nETag: e\r\nContent-Length: 7\r\n\r\n"]),
    (
        b"GET",
        [
            b"HTTP/1.1 200 OK\r\nConnection: X-P, keep-alive\r\nX-P: p\r\nX-Powered-By: x\r\n"
            b"Q: q\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\nT: t\r\n\r\n"
        ],
    ),
    (
        b"GET",
        [
            b"HTTP/1.1 200 OK\r\nConnection: X-P, keep-alive\r\nX-P: p\r\nX-Powered-By: x\r\n"
            b"Q: q\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\nT: t\r\n\r\n"
        ],
    ),
    (b"GET", [_CONTINUED]),
    (b"GET", [_CONTINUED]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nH: 8\r\nContent-Length: 1\r\n\r\nh"]),
    (b"POST", [b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"]),
    (b"POST", [b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"]),
    (b"GET", [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nk"]),
    (b"GET", [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nk"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nl"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nl"]),
    (b"GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nl"]),
]


def _run(conn: UpstreamConnection, method: bytes, reads: list[bytes]) -> HeadSink:
    sink = HeadSink()
    conn.send(sink, method, b"GET / HTTP/1.1\r\n\r\n", True)
    for data in reads:
        conn.data_received(data)
    return sink


def _fresh(hide: frozenset[bytes]) -> UpstreamConnection:
    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: 0.0)
    conn = UpstreamConnection(backend, 30.0, 30.0, hide)
    conn.transport = Transport()  # type: ignore[assignment]
    return conn


def test_a_head_repeated_byte_for_byte_is_what_parsing_it_again_gives() -> None:
    """A connection remembers its last final head once read twice in a row (`HeadMemo`): the same
    bytes after the same method give the sink the same head, field for field, as a connection that
    never saw a head before (which parses it), whatever came before; edits to one head never reach
    the next; the heads between (and the bodies) are read as ever."""
    hide = frozenset({b"x-powered-by"})
    conn = _fresh(hide)
    reused = 0
    last: ResponseHead | None = None
    for method, reads in MEMO_STEPS:
        sink = _run(conn, method, reads)
        fresh = _run(_fresh(hide), method, reads)
        assert sink.events == fresh.events, (method, reads)
        assert conn.is_reusable()
        conn.detach()
        if last is not None and sink.heads and last.memo is sink.heads[0].memo:
            reused += 1
        last = sink.heads[0] if sink.heads else None
    assert reused >= 3  # the memo was used (a head read twice in a row), not only the parser
    # and after all that, a malformed head is still refused
    sink = _run(conn, b"GET", [b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"])
    assert sink.events[0][0] == "failed"


def test_a_repeated_head_with_bytes_beyond_its_response_unpools_the_connection() -> None:
    """Whether a connection may be reused is read afresh for each response, memo or not."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    conn = _fresh(frozenset())
    _run(conn, b"GET", [response])
    conn.detach()
    assert conn.is_reusable()
    sink = _run(conn, b"GET", [response + b"HTTP"])
    assert sink.events[-1] == ("end",)
    assert sink.heads[0].memo is not None
    assert not conn.is_reusable()


def test_a_pooled_connection_unused_for_a_while_rests_and_reads_on_as_a_fresh_one() -> None:
    """The worker's sweep rests pooled connections unused for two sweeps (`close_idle`'s
    `rest_before`): they stay pooled, give up their head parser and head memo (what an idle
    server connection holds beyond its socket), and read the next responses exactly as a
    connection that never saw a head does; those used more recently keep theirs."""
    now = [100.0]
    backend = BackendState("a", "127.0.0.1", 9001, 1, max_idle=4, clock=lambda: now[0])
    hide = frozenset({b"x-powered-by"})
    resting, busy = _fresh(hide), _fresh(hide)
    for conn in (resting, busy):
        for method, reads in MEMO_STEPS[:2]:  # a head read twice: parser and memo made
            _run(conn, method, reads)
            conn.detach()
        assert conn._head_parser is not None
        assert conn._memo is not None
    backend.put_idle(resting, 100.0)
    backend.put_idle(busy, 101.5)
    backend.close_idle(older_than=40.0, rest_before=101.0)
    assert backend.idle == [resting, busy]  # both still pooled
    assert resting._head_parser is None
    assert resting._memo is None
    assert busy._head_parser is not None
    assert busy._memo is not None
    fresh = _fresh(hide)
    for method, reads in MEMO_STEPS:
        got = _run(resting, method, reads)
        assert got.events == _run(fresh, method, reads).events, (method, reads)
        resting.detach()
        fresh.detach()
    assert resting.is_reusable()
