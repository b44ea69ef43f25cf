"""A two-way byte tunnel between two established connections, taking over both transports.

Owns what happens after an HTTP `101 Switching Protocols` (WebSocket): every byte read on one
side is written to the other, with flow control (a side that cannot write pauses reading on
the other), half-close (an EOF is passed on as a write EOF; the tunnel ends when both
directions have ended), and an idle timeout (no byte either way for that long closes both).
Never looks at the bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from portico.timers import Deadline


class _Side(asyncio.Protocol):
    """One end: bytes read here go out through the other end's transport."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side | None = None
        self.eof = False

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            peer.transport.write(data)
            self.tunnel.deadline.set(self.tunnel.idle_timeout)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport.can_write_eof() and not peer.transport.is_closing():
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self.tunnel.close()
            return False
        return True  # keep writing the other direction until it ends too

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    """Joins two transports; `on_close` runs once when both are closed or closing."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        first: asyncio.Transport,
        second: asyncio.Transport,
        idle_timeout: float,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.deadline = Deadline(loop, self.close)
        self.on_close = on_close
        self.closed = False
        a, b = _Side(self, first), _Side(self, second)
        a.peer, b.peer = b, a
        self.sides = (a, b)

    def start(self, first_early: bytes = b"", second_early: bytes = b"") -> None:
        """Take over both transports; `*_early` are bytes already read from that side."""
        a, b = self.sides
        for side in self.sides:
            side.transport.set_protocol(side)
        if first_early:
            b.transport.write(first_early)
        if second_early:
            a.transport.write(second_early)
        for side in self.sides:
            side.transport.resume_reading()
        self.deadline.set(self.idle_timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline.cancel()
        for side in self.sides:
            side.transport.close()  # after what is already queued is written
        if self.on_close is not None:
            self.on_close()

    def abort(self) -> None:
        for side in self.sides:
            side.transport.abort()
        self.close()
