"""The accept path: what an accepted client socket is like once its protocol has it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket

import pytest

from portico.listeners.acceptor import Acceptor


class _Recorder(asyncio.Protocol):
    def __init__(self, seen: asyncio.Future[tuple[int, bool, bytes]]) -> None:
        self.seen = seen
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if not self.seen.done():
            blocking = not fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
            self.seen.set_result((nodelay, blocking, data))
        self.transport.write(b"pong")


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_an_accepted_socket_is_non_blocking_with_nagle_off(loop_kind: str) -> None:
    """The acceptor leaves both to the loop's transport (one syscall each fewer per
    connection): a small answer must still go out at once, from a non-blocking socket."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main() -> tuple[tuple[int, bool, bytes], bytes]:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        seen: asyncio.Future[tuple[int, bool, bytes]] = loop.create_future()
        acceptor = Acceptor(loop, listener, "web", lambda: _Recorder(seen))
        acceptor.start()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(b"ping")
            answer = await asyncio.wait_for(reader.readexactly(4), 5)
            result = await asyncio.wait_for(seen, 5)
            writer.close()
            await writer.wait_closed()
            return result, answer
        finally:
            acceptor.close()

    try:
        (nodelay, blocking, data), answer = loop.run_until_complete(main())
    finally:
        loop.close()
    assert data == b"ping"
    assert answer == b"pong"
    assert nodelay != 0
    assert blocking is False
