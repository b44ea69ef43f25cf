"""Small writes of one loop turn, sent together at the turn's end (issue #18, kernel time).

Why: uvloop writes at once, so a worker that handles 20 ready connections in a turn writes
20 times, ~10 µs of Python apart. The readers on the other core (the origins, the clients)
handle each write faster than that and go back to sleep in `epoll_wait`, so almost every write
wakes one of them again, and on a VM the writer pays for that wake-up (`sock_def_readable` in
`perf`, an inter-processor interrupt). Sent back to back at the end of the turn, the writes
find their readers awake: one wake-up serves many writes (bench/wakeups.py; HAProxy, which
sends from its task list after polling, gets the same effect).

What is held: bytes (and read-only views of bytes) up to `DEFER_MAX` per write and `TURN_MAX`
per turn, so a worker holds at most `TURN_MAX` more than before whatever its connections do;
anything else, and every write while the outbox is not started (tests, tools), is written at
once after what is held, so each transport sees its bytes in the order they were written.

The rule for callers: a transport written through the outbox gets every other operation that
must follow those bytes (a direct write, `write_eof`, `close`, `abort`) only after
`flush_to(transport)` (or `flush()`). Both are cheap when nothing is held, and writing early is
always correct.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

DEFER_MAX: Final = 32 * 1024  # a write larger than this goes at once (a 16 KiB response waits)
TURN_MAX: Final = 256 * 1024  # what one turn may hold in all

Data = bytes | memoryview


def _immutable(data: Data) -> bool:
    """Bytes, or a view of bytes: nothing can change them before the turn ends (a view of a
    bytearray, e.g. a shared read buffer, may be overwritten by the next read)."""
    if isinstance(data, bytes):
        return True
    return isinstance(data.obj, bytes)


def _length(item: Data | list[Data]) -> int:
    if isinstance(item, list):
        size = 0
        for part in item:
            size += len(part)
        return size
    return len(item)


def _send(transport: asyncio.WriteTransport, item: Data | list[Data]) -> None:
    """Write `item` as it would have been written at once. A transport that closed within
    the turn takes it as it takes any write after its close (asyncio and uvloop drop it; a
    closing one with bytes still queued sends it first), or refuses it: one refusal must not
    cost the other transports their bytes."""
    try:
        if isinstance(item, list):
            transport.writelines(item)
        else:
            transport.write(item)
    except RuntimeError:  # uvloop: "unable to perform operation ... the handler is closed"
        pass


class Outbox:
    """The writes held in this turn, in order, and the loop that sends them."""

    __slots__ = ("_data", "_loop", "_size", "_transports")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transports: list[asyncio.WriteTransport] = []
        self._data: list[Data | list[Data]] = []  # a list: one writelines
        self._size = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold writes from now on, sent at the end of each turn of `loop` (the worker's)."""
        self.flush()
        self._loop = loop

    def stop(self) -> None:
        """Send what is held; write at once from now on."""
        self.flush()
        self._loop = None

    def _hold(self, size: int) -> bool:
        """Whether `size` more bytes may wait for the turn's end (scheduling the flush)."""
        loop = self._loop
        if loop is None or size > DEFER_MAX:
            return False
        held = self._size
        if not self._data:
            # the turn's first: checked once a turn (a test's loop that ended holds nothing)
            if not loop.is_running():
                self._loop = None
                return False
            loop.call_soon(self.flush)
        elif held + size > TURN_MAX:
            return False
        self._size = held + size
        return True

    def write(self, transport: asyncio.WriteTransport, data: Data) -> None:
        """`transport.write(data)`, at the end of this turn if it may wait."""
        if _immutable(data) and self._hold(len(data)):
            self._transports.append(transport)
            self._data.append(data)
            return
        if self._data:
            self.flush()
        transport.write(data)

    def writelines(self, transport: asyncio.WriteTransport, parts: list[Data], size: int) -> None:
        """`transport.writelines(parts)` (`size`: their total length), as `write`."""
        for part in parts:
            if not _immutable(part):
                break
        else:
            if self._hold(size):
                self._transports.append(transport)
                self._data.append(parts)
                return
        if self._data:
            self.flush()
        transport.writelines(parts)

    def held_for(self, transport: asyncio.BaseTransport) -> int:
        """The bytes held for `transport` this turn: they count against its write buffer's
        bound (a body read sizes itself by both), though they are not there yet. Asked,
        not flushed: a read asks from inside uvloop's buffer callback, where a write that
        pauses the reader would stop the stream in the middle of its read (a crash)."""
        data = self._data
        if not data:
            return 0
        transports = self._transports
        size = 0
        for j in range(len(data)):
            if transports[j] is transport:
                size += _length(data[j])
        return size

    def flush_to(self, transport: asyncio.BaseTransport) -> None:
        """Write what is held for `transport`, in order, before an operation that must follow
        it (a close, an EOF); the other transports' writes keep waiting for the turn's end."""
        data = self._data
        if not data:
            return
        transports = self._transports
        count = len(data)
        i = 0
        while i < count and transports[i] is not transport:
            i += 1  # the others' writes before this transport's first stay where they are
        if i == count:
            return
        out = cast(asyncio.WriteTransport, transport)
        if i == count - 1:
            # the usual case (a response's last write, then its close): the turn's last write
            # is this transport's only one, taken off the end (no list made, no slice deleted)
            item = data.pop()
            transports.pop()
            self._size -= _length(item)
            _send(out, item)
            return
        mine: list[Data | list[Data]] = []
        for j in range(i, count):
            if transports[j] is transport:
                mine.append(data[j])
                self._size -= _length(data[j])
            else:
                transports[i] = transports[j]
                data[i] = data[j]
                i += 1
        del transports[i:]
        del data[i:]
        for item in mine:
            _send(out, item)

    def flush(self) -> None:
        """Write everything held, in order."""
        data = self._data
        if not data:
            return
        transports = self._transports
        self._data = []
        self._transports = []
        self._size = 0
        for i in range(len(data)):
            _send(transports[i], data[i])


OUTBOX: Final = Outbox()  # the worker's (one loop per process); started by `Worker.start`
