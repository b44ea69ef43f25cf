"""Reads lent as views (`LentBuffer`): an UpstreamConnection on a real loopback socket, read
by uvloop through get_buffer / buffer_updated, hands body bytes on as views of the worker's
shared read buffers. A view someone keeps (as uvloop keeps the part of a write a slow client's
socket did not take) must keep its bytes while later reads, on this connection and others,
fill the buffers again; a view nobody keeps lets the next read reuse the buffer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from portico.http.headers import ResponseHead
from portico.upstreams import connections
from portico.upstreams.backend import BackendState
from portico.upstreams.connections import BIG_READ, LEND_MIN, ResponseSink, UpstreamConnection

uvloop = pytest.importorskip("uvloop")

MIB = 1 << 20


def pattern(tag: bytes, size: int) -> bytes:
    """`size` bytes in which every 16-byte line says which body and where: a piece of another
    body, or of the same body at another place, never reads the same."""
    lines = (size + 15) // 16
    return b"".join(b"%s%013d\n" % (tag, i) for i in range(lines))[:size]


class Sink(ResponseSink):
    """Keeps what it is given as given (views included), like a write a client has not taken."""

    def __init__(self, read: int, keep: bool) -> None:
        self.read = read
        self.keep = keep
        self.pieces: list[bytes | memoryview] = []
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_interim(self, status: int, head: ResponseHead) -> None:
        pass

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes | memoryview) -> None:
        if self.keep:
            self.pieces.append(data)
        else:
            self.body += data

    def on_response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_response_end(self) -> None:
        self.done.set_result(None)

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        self.done.set_exception(AssertionError(reason))

    def on_upstream_writable(self, writable: bool) -> None:
        pass

    def on_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        pass

    def on_response_waiting(self) -> None:
        pass

    def read_size(self) -> int:
        return self.read

    def received(self) -> bytes:
        return b"".join(bytes(piece) for piece in self.pieces) if self.keep else bytes(self.body)


def lent(piece: bytes | memoryview) -> bool:
    """Whether a body piece is a view of a read buffer (not of a copy of the read)."""
    return isinstance(piece, memoryview) and isinstance(piece.obj, bytearray)


def framed(body: bytes, framing: str) -> bytes:
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    if framing == "chunked":
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 50000]), body[i : i + 50000])
            for i in range(0, len(body), 50000)
        )
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body


def run(test: Callable[[asyncio.AbstractEventLoop], object]) -> None:
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(test(loop), 30))  # type: ignore[arg-type]
    finally:
        loop.close()


async def origin(bodies: dict[bytes, bytes]) -> asyncio.AbstractServer:
    """Answers `GET /<name>` with bodies[name] (already framed), in one write."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            name = line.split()[1][1:]
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(bodies[name])
            await writer.drain()
            if b"Connection: close" in bodies[name][:100]:
                writer.close()
                return
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def fetch(port: int, name: bytes, read: int, keep: bool) -> Sink:
    loop = asyncio.get_running_loop()
    backend = BackendState("o", "127.0.0.1", port, 1, max_idle=4, clock=loop.time)
    _, conn = await loop.create_connection(
        lambda: UpstreamConnection(backend, 30.0, 30.0), "127.0.0.1", port
    )
    sink = Sink(read, keep)
    conn.send(sink, b"GET", b"GET /%s HTTP/1.1\r\nHost: o\r\n\r\n" % name, True)
    await sink.done
    conn.close()
    return sink


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("read", [BIG_READ, LEND_MIN, 64 * 1024])
def test_kept_views_keep_their_bytes_while_later_reads_fill_the_buffers(
    framing: str, read: int
) -> None:
    """Kept views of a 16 KiB body (read with its head) and a 3 MiB one (big reads), then two
    more bodies fetched concurrently through the same buffers: every body arrives intact."""
    bodies = {
        b"a": pattern(b"aa", 16 * 1024 + 7),
        b"b": pattern(b"bb", 3 * MIB + 5),
        b"c": pattern(b"cc", 2 * MIB + 3),
        b"d": pattern(b"dd", 20 * 1024),
    }

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        server = await origin({name: framed(body, framing) for name, body in bodies.items()})
        port = server.sockets[0].getsockname()[1]
        first = await fetch(port, b"a", read, keep=True)
        second = await fetch(port, b"b", read, keep=True)
        later = await asyncio.gather(
            fetch(port, b"c", read, keep=True), fetch(port, b"d", read, keep=False)
        )
        server.close()
        for name, sink in zip(b"abcd", [first, second, *later], strict=True):
            assert sink.received() == bodies[bytes([name])]
        if framing == "chunked":
            return  # llhttp hands each chunk's bytes on as a copy of its own
        # pieces were handed on as views of the read buffer, not copies, where the rule
        # lends the buffer
        assert any(lent(piece) for piece in first.pieces)
        if read >= LEND_MIN:
            assert sum(lent(piece) for piece in second.pieces) > 1
        else:
            assert sum(lent(piece) for piece in second.pieces) <= 1  # its head read's

    run(test)


def test_a_view_nobody_keeps_lets_the_next_read_reuse_the_buffer() -> None:
    """A fast reader's bodies: the same two buffers serve every read (no allocation, no
    copy); a kept view makes the next read use a new buffer, leaving the kept one as it was."""
    body = pattern(b"zz", 2 * MIB)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        server = await origin({b"z": framed(body, "length")})
        port = server.sockets[0].getsockname()[1]
        head, big = connections._HEAD_LENT.data, connections._BODY_LENT.data
        for _ in range(3):
            assert (await fetch(port, b"z", BIG_READ, keep=False)).received() == body
        assert connections._HEAD_LENT.data is head
        assert connections._BODY_LENT.data is big
        kept = await fetch(port, b"z", BIG_READ, keep=True)
        assert connections._HEAD_LENT.data is not head
        assert connections._BODY_LENT.data is not big
        assert (await fetch(port, b"z", BIG_READ, keep=False)).received() == body
        assert kept.received() == body
        server.close()

    run(test)


def test_a_read_that_fills_less_than_half_its_buffer_is_copied() -> None:
    """A kept view holds its whole buffer: a 4 KiB response (read with its head, in the 32 KiB
    head buffer) goes on as a copy, so that what a queued answer holds is what it read."""
    body = pattern(b"ss", 4096)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        server = await origin({b"s": framed(body, "length")})
        port = server.sockets[0].getsockname()[1]
        head = connections._HEAD_LENT.data
        kept = await fetch(port, b"s", BIG_READ, keep=True)
        server.close()
        assert kept.received() == body
        assert not any(lent(piece) for piece in kept.pieces)
        assert connections._HEAD_LENT.data is head  # nothing of it held: no new buffer

    run(test)
