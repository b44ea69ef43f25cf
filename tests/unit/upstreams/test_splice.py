"""`BodySplice` over real loopback sockets, on asyncio's loop and uvloop's: it moves exactly the
body's bytes and not one byte of what follows, holds at most its limit for a client that does
not read, tells a server that ends early from a client that fails, and closes what it owns."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import struct
import sys
import termios
from collections.abc import Callable, Iterator

import pytest

from fakes import tcp_pair
from portico.upstreams import splice

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(os, "splice"), reason="splice(2) is Linux's"
)

KIB = 1 << 10


def loops() -> Iterator[Callable[[], asyncio.AbstractEventLoop]]:
    yield asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return
    yield uvloop.new_event_loop


@pytest.fixture(params=list(loops()), ids=lambda make: make.__module__.split(".")[0])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    made = request.param()
    yield made
    made.close()


class Owner:
    """Records what a splice reports; `ended` is set by its end, done or failed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.moved = 0
        self.waits: list[bool] = []
        self.waits_for_client = asyncio.Event()
        self.failed: tuple[str, bool] | None = None
        self.trailing: bool | None = None
        self.ended = loop.create_future()

    def splice_moved(self, size: int) -> None:
        self.moved += size

    def splice_waits(self, for_client: bool) -> None:
        self.waits.append(for_client)
        if for_client:
            self.waits_for_client.set()

    def splice_done(self, trailing: bool) -> None:
        self.trailing = trailing
        self.ended.set_result("done")

    def splice_failed(self, reason: str, client: bool) -> None:
        self.failed = (reason, client)
        self.ended.set_result("failed")


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """Two loopback connections: (the server's end, the worker's end of it, the worker's end
    of the client's connection, the client's end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    server_far, server = tcp_pair(listener)
    client, client_far = tcp_pair(listener)
    listener.close()
    socks = (server_far, server, client, client_far)
    yield socks
    for sock in socks:
        sock.close()


def pattern(size: int) -> bytes:
    return b"".join(b"%015d\n" % i for i in range((size + 15) // 16))[:size]


def unread(sock: socket.socket) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_moves_exactly_the_body_and_leaves_what_follows_unread(loop, pairs) -> None:
    server_far, server, client, client_far = pairs
    body = pattern(3 * 1024 * KIB + 5)
    owner = Owner(loop)
    moving = splice.BodySplice(
        loop, os.dup(server.fileno()), os.dup(client.fileno()), len(body), 64 * KIB, owner
    )
    received = bytearray()

    async def run() -> str:
        moving.start()
        server_far.setblocking(True)
        writer = loop.run_in_executor(None, server_far.sendall, body + b"NEXT RESPONSE")
        while len(received) < len(body):
            received.extend(await loop.sock_recv(client_far, 256 * KIB))
        await writer
        return await asyncio.wait_for(owner.ended, 10)

    assert loop.run_until_complete(run()) == "done"
    assert bytes(received) == body
    assert owner.moved == len(body)
    assert owner.trailing  # ... and its owner hears of it
    assert server.recv(64) == b"NEXT RESPONSE"  # the next response is the connection's
    assert closed(moving._source) or moving._source == -1


def test_holds_at_most_its_limit_for_a_client_that_does_not_read(loop, pairs) -> None:
    server_far, server, client, client_far = pairs
    # small buffers, so that a client that stops reading stops the splice soon (a tiny window,
    # a few KiB, makes loopback TCP crawl once the client reads again: delayed ACKs)
    client_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KIB)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    size = 8 * 1024 * KIB
    body = pattern(size)
    owner = Owner(loop)
    limit = 32 * KIB
    moving = splice.BodySplice(
        loop, os.dup(server.fileno()), os.dup(client.fileno()), size, limit, owner
    )

    async def stall() -> int:
        moving.start()
        server_far.setblocking(True)
        loop.run_in_executor(None, server_far.sendall, body)
        # until it waits for the client, whose socket is full: nothing moves any more
        await asyncio.wait_for(owner.waits_for_client.wait(), 10)
        assert moving._pipe is not None
        count = array.array("i", [0])
        fcntl.ioctl(moving._pipe[0], termios.FIONREAD, count)
        return count[0]

    held = loop.run_until_complete(stall())
    assert 0 < held <= limit
    assert owner.moved < size // 2  # the server's bytes stayed in its socket, not with us

    received = bytearray()

    async def read_all() -> str:
        while len(received) < size:
            received.extend(await loop.sock_recv(client_far, 256 * KIB))
        return await asyncio.wait_for(owner.ended, 10)

    assert loop.run_until_complete(read_all()) == "done"
    assert bytes(received) == body


def test_a_server_that_ends_early_fails_it_on_the_servers_side(loop, pairs) -> None:
    server_far, server, client, client_far = pairs
    owner = Owner(loop)
    moving = splice.BodySplice(
        loop, os.dup(server.fileno()), os.dup(client.fileno()), 1024 * KIB, 64 * KIB, owner
    )

    async def run() -> str:
        moving.start()
        server_far.sendall(b"x" * 1000)
        server_far.close()  # a FIN, 1000 bytes into a 1 MiB body
        return await asyncio.wait_for(owner.ended, 10)

    assert loop.run_until_complete(run()) == "failed"
    assert owner.failed == ("server closed the connection", False)
    assert owner.moved == 1000
    assert client_far.recv(2000) == b"x" * 1000


def test_a_client_reset_fails_it_on_the_clients_side(loop, pairs) -> None:
    server_far, server, client, client_far = pairs
    owner = Owner(loop)
    moving = splice.BodySplice(
        loop, os.dup(server.fileno()), os.dup(client.fileno()), 1024 * KIB, 64 * KIB, owner
    )
    client_far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client_far.close()  # a reset: the first splice to the client fails

    async def run() -> str:
        moving.start()
        server_far.sendall(b"y" * 1000)
        return await asyncio.wait_for(owner.ended, 10)

    assert loop.run_until_complete(run()) == "failed"
    assert owner.failed is not None
    reason, client_side = owner.failed
    assert client_side
    assert reason.startswith("client: ")


def test_close_stops_it_and_closes_its_descriptors(loop, pairs) -> None:
    server_far, server, client, _ = pairs
    owner = Owner(loop)
    source, dest = os.dup(server.fileno()), os.dup(client.fileno())
    moving = splice.BodySplice(loop, source, dest, 1024 * KIB, 64 * KIB, owner)

    async def run() -> None:
        moving.start()
        moving.close()
        moving.close()  # idempotent
        server_far.sendall(b"z" * 1000)
        # a turn of the loop in which the server's socket is readable: a reader left
        # registered would run in it (a ready socket's callback runs before a timer's)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(run())
    assert not owner.ended.done()
    assert owner.moved == 0
    assert closed(source)
    assert closed(dest)
    assert unread(server) == 1000  # nothing was taken from the server after the close


def test_pipes_are_kept_empty_and_reused(loop, pairs) -> None:
    server_far, server, client, _ = pairs
    while splice._IDLE_PIPES:  # what earlier tests left
        read_end, write_end, _size = splice._IDLE_PIPES.pop()
        os.close(read_end)
        os.close(write_end)
    owner = Owner(loop)
    moving = splice.BodySplice(
        loop, os.dup(server.fileno()), os.dup(client.fileno()), 10, 64 * KIB, owner
    )

    async def run() -> str:
        moving.start()
        server_far.sendall(b"0123456789")
        return await asyncio.wait_for(owner.ended, 10)

    assert loop.run_until_complete(run()) == "done"
    assert owner.trailing is False  # nothing beyond the body
    assert len(splice._IDLE_PIPES) == 1  # kept, empty, for the next body
    read_end = splice._IDLE_PIPES[0][0]
    count = array.array("i", [0])
    fcntl.ioctl(read_end, termios.FIONREAD, count)
    assert count[0] == 0


def test_portico_splice_off_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(splice.SPLICE_ENV, "off")
    assert not splice.available()
    monkeypatch.setenv(splice.SPLICE_ENV, "")
    assert splice.available()
