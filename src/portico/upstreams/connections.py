"""One HTTP/1.1 connection to a server: send a request head, read back the response.

Owns the client side of the HTTP/1.1 codec towards servers: finding the response head, parsing
it with httptools (strict llhttp), deciding the body's framing, and relaying body bytes to a
`ResponseSink` with as little Python per byte as possible: a Content-Length or close-delimited
body is never re-parsed, only counted; chunked bodies go through the C parser. Never decides
where a request goes or what the client sees (the proxy does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
import time
from typing import Final, cast

import httptools

from portico.http.headers import (
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    Header,
    HeadMemo,
    RequestLineMemo,
    ResponseHead,
    trailer_fields,
)
from portico.native import mypyc_attr
from portico.outbox import OUTBOX
from portico.timers import Deadline
from portico.upstreams import splice

MAX_RESPONSE_HEAD: Final = 64 * 1024
# How much a server connection reads at a time: what bounds the bytes a slow client makes
# Portico hold beyond the kernel's buffers. A body read happens only while the client's write
# buffer is under its high-water mark (half the listener's `limits.response_buffer`, set by the
# acceptor), and is no larger than that limit less what the buffer holds (`client_read_size`),
# so the buffer never holds more than the limit (DEFAULT_RESPONSE_BUFFER = 64 KiB), whatever
# the kernel took. The loop's own reads are 256 KiB, which a paused slow reader then held whole
# (~300 KiB each). A fast reader need not pay for that bound with many small reads: when the
# client's write buffer is empty and its socket's kernel send queue has room for more than the
# limit (`SendRoom`: half of SO_SNDBUF less what the queue is charged, SO_MEMINFO), a read may
# take that room, up to BIG_READ; what is read then goes straight into the kernel and nothing
# stays in user space. A slow reader's send queue is full, so it gets the bounded rule.
# Plain HTTP/1.x clients only: under TLS the socket sits below the SSL layer's own buffers, and
# HTTP/2 streams share one connection, so both keep the bound. Heads are read READ_SIZE at a
# time. The worker's connections share its read buffers: the loop calls `get_buffer`, reads
# into it and calls `buffer_updated` in one step. A head read, and a big body read (a fast
# reader's, `LEND_MIN` or more), go on as views of the buffer, not copies (`LentBuffer`); a
# bounded read (a slow reader's) is copied out of a buffer sized for the largest read
# (`reserve_read_buffer`), so that it holds only what it read.
DEFAULT_RESPONSE_BUFFER: Final = 64 * 1024
MIN_RESPONSE_BUFFER: Final = 16 * 1024
MAX_RESPONSE_BUFFER: Final = 4 * 1024 * 1024
CLIENT_HIGH_WATER: Final = DEFAULT_RESPONSE_BUFFER // 2
READ_SIZE: Final = 32 * 1024
BIG_READ: Final = 256 * 1024
MAX_READ: Final = DEFAULT_RESPONSE_BUFFER
MIN_READ: Final = 4 * 1024
# A body up to this size, read whole with its head, goes through the head parser too, so that
# the parser can read the next response's head (see UpstreamConnection._reuse_parser)
REUSE_BODY: Final = 16 * 1024
# a body piece at least this big, read with its head, is passed on as a view (`_body_of`)
VIEW_MIN: Final = 2048
# a final response head up to this size is remembered by its connection (`HeadMemo`)
MEMO_HEAD: Final = 2048
_READ_BUFFER = memoryview(bytearray(BIG_READ))
# a body read this big or bigger (up to BIG_READ) is read into the lent body buffer: if a view
# of it is kept, the whole buffer is held, at most 8/7 of what the read asked for
LEND_MIN: Final = BIG_READ - BIG_READ // 8
# called as a C static, not looked up as `sys` then `.getrefcount` (twice a lent read)
_getrefcount: Final = sys.getrefcount


class LentBuffer:
    """A read buffer whose bytes go on as views (`view`), not copies: a 16 KiB response's
    body was copied out of each read (the biggest single cost of relaying it), a 1 MiB one
    whole. Reused only while nobody holds a view of it: the refcount of `data` before and
    after the read's bytes were handed on tells (each `memoryview(data)` holds one reference
    while it or any slice of it lives). A view still held after that (the client's socket
    took only part of a write, and uvloop keeps the rest; an HTTP/2 stream waiting for its
    window) keeps the old buffer alive and unchanged: `renew` gives the next read a new one.
    Such a view holds the whole buffer, so a read is lent only when it filled at least half
    of it (`least`): a held view then holds at most twice what a copy held (a pipelining
    client that reads nothing gets every answer queued in the worker, one read each)."""

    __slots__ = ("data", "least", "view")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)  # what get_buffer hands out (slices of it)
        self.least = size // 2

    def renew(self) -> None:
        self.data = bytearray(len(self.data))
        self.view = memoryview(self.data)


_HEAD_LENT: Final = LentBuffer(READ_SIZE)
_BODY_LENT: Final = LentBuffer(BIG_READ)


def _body_of(buffer: bytes, start: int, end: int) -> bytes | memoryview:
    """The body bytes `buffer[start:end]` of a read that began with a response head: a view
    of the read when it is big (a 16 KiB response's body is then copied once, into the
    client's write, not twice), a copy when a view's two objects cost more than the copy.
    A view of immutable bytes: whoever keeps it (the client's write buffer) keeps it valid."""
    if end - start < VIEW_MIN:
        return buffer[start:end]
    return memoryview(buffer)[start:end]


def reserve_read_buffer(size: int) -> None:
    """Make the worker's shared read buffer at least `size` bytes (the largest listener's
    `response_buffer`); called once at start, so that a read never checks."""
    global _READ_BUFFER
    if size > len(_READ_BUFFER):
        _READ_BUFFER = memoryview(bytearray(size))


def read_buffer_size() -> int:
    """How many bytes one server read can take at most (the shared buffer's size)."""
    return len(_READ_BUFFER)


# SO_MEMINFO (Linux 4.6+, absent from the socket module): a socket's memory as the kernel
# charges it, u32s; SNDBUF at index 3, WMEM_QUEUED (the send queue, bookkeeping included) at 5
SO_MEMINFO = 55
_MEMINFO = struct.Struct("=6I")
_SEND_ROOM = sys.platform == "linux"


# The kernel takes a big write whole only while TCP's memory (all sockets' buffers, counted
# in pages by /proc/net/sockstat) is below its pressure marks (net.ipv4.tcp_mem); past them it
# moderates send buffers and refuses a send beyond a socket's fair share, so a big read's bytes
# would stay in user space, up to BIG_READ per slow reader (measured: 300 slow readers of
# 10 MiB bodies pass the mark here and held 200 KiB each instead of the bound's 64). Big reads
# stop once TCP memory passes tcp_mem's first figure (below it the kernel is "not bothered"),
# before the pressure mark (the second); read at most every TCP_MEMORY_EVERY seconds.
TCP_MEMORY_EVERY: Final = 0.05
_SOCKSTAT: Final = "/proc/net/sockstat"
_TCP_MEM: Final = "/proc/sys/net/ipv4/tcp_mem"


def tcp_memory_calm(sockstat: str, tcp_mem: str) -> bool:
    """Whether the pages TCP holds (`mem` on sockstat's `TCP:` line) are below tcp_mem's
    first figure; True when either text cannot be read as expected (then nothing changes)."""
    for line in sockstat.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            try:
                used = int(fields[fields.index("mem") + 1])
                low = int(tcp_mem.split()[0])
            except (ValueError, IndexError):
                return True
            return used < low
    return True


class TcpMemory:
    """The kernel's TCP memory, sampled: `calm(now)` re-reads it when the last reading is
    older than TCP_MEMORY_EVERY (two small /proc reads; only reads that could be big ask)."""

    __slots__ = ("_calm", "_next")

    def __init__(self) -> None:
        self._calm = True
        self._next = 0.0

    def calm(self, now: float) -> bool:
        if now >= self._next:
            self._next = now + TCP_MEMORY_EVERY
            try:
                with open(_SOCKSTAT) as sockstat, open(_TCP_MEM) as tcp_mem:
                    self._calm = tcp_memory_calm(sockstat.read(), tcp_mem.read())
            except OSError:
                self._calm = True
        return self._calm


_TCP_MEMORY = TcpMemory()


class SendRoom:
    """A plain client socket's kernel send queue: how much more it takes now, by the kernel's
    own test (queued < SO_SNDBUF, both in the bytes it charges, bookkeeping included: on a
    small-MSS connection that is 40% above the payload). The socket object is looked up once
    per exchange; the kernel is asked at most once per read that could be big, and not again
    while what it said last, less what reads took since, is still room enough (`room_for`):
    one getsockopt through uvloop's socket stand-in costs ~8 µs (it makes a socket object each
    time), four per 1 MiB response."""

    __slots__ = ("_floor", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # the room measured last less every read's size since: the queue only drains, and a
        # read's bytes charge it at most twice their size, which `free` halves, so this is
        # never more than the room there is now
        self._floor = 0

    def room_for(self, enough: int) -> int:
        """`free()`, or the floor of it when that is at least `enough` (no read can take
        more: the answer would be the same). A read of the size decided is then `take`n."""
        floor = self._floor
        if floor >= enough and _TCP_MEMORY.calm(time.monotonic()):
            return floor
        floor = self._floor = self.free()
        return floor

    def take(self, size: int) -> None:
        """A read of up to `size` bytes, all bound for this socket, is under way."""
        self._floor -= size

    def free(self) -> int:
        """Payload bytes the send queue takes now without blocking: half the room it charges
        for (the kernel's own allowance: it doubles SO_SNDBUF for its bookkeeping); 0 if the
        socket is gone (a reused fd number at worst sizes one read a closed client never gets),
        and 0 while the kernel's TCP memory is not calm (`TcpMemory`): it may refuse then."""
        if not _TCP_MEMORY.calm(time.monotonic()):
            return 0
        try:
            fields = _MEMINFO.unpack_from(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
        except (OSError, ValueError, struct.error):
            return 0
        sndbuf: int = fields[3]
        queued: int = fields[5]
        return (sndbuf - queued) // 2


def send_room(transport: asyncio.BaseTransport | None) -> SendRoom | None:
    """The `SendRoom` of a plain TCP client transport; None under TLS, off Linux, or when the
    socket is not reachable (then reads keep the bounded rule)."""
    if not _SEND_ROOM or transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return SendRoom(sock)


def body_read_size(buffered: int, limit: int, free: int) -> int:
    """The rule: `limit` (the listener's `response_buffer`) less the `buffered` bytes of the
    client's write buffer, at least MIN_READ; but with nothing buffered and `free` bytes of
    room in the client socket's kernel send queue, that room (at most BIG_READ, at least
    `limit`) when it is more than `limit`, and just that room when it is less (but at least
    MIN_READ): all of it goes straight into the kernel. A read the kernel takes only in part
    stays in user space whole until the rest is sent (uvloop keeps the unsent tail as a view
    of it), so a `limit`-sized read into a queue with a little room held `limit` plus what the
    kernel took: up to twice the bound for a reader that stops."""
    if buffered == 0 and free >= MIN_READ:
        if free <= limit:
            return free
        big = free if free < BIG_READ else BIG_READ
        return big if big > limit else limit
    return max(MIN_READ, limit - buffered)


def client_read_size(
    transport: asyncio.BaseTransport | None,
    limit: int = MAX_READ,
    room: SendRoom | None = None,
    held: int = 0,
) -> int:
    """How many body bytes a server connection may read now for a client on `transport`
    (`body_read_size`), `held` more bytes on their way to it (the outbox's); the kernel is
    asked only when nothing is buffered."""
    if transport is None:
        return READ_SIZE
    buffered = cast(asyncio.WriteTransport, transport).get_write_buffer_size() + held
    if room is None:
        return max(MIN_READ, limit - buffered)
    if buffered == 0:
        size = body_read_size(0, limit, room.room_for(limit if limit > BIG_READ else BIG_READ))
    else:
        size = max(MIN_READ, limit - buffered)
    room.take(size)
    return size


class UpstreamFailure(Exception):
    """Why a response could not be read; `retryable` when the server saw nothing useful."""


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseSink:
    """What receives a response (the proxy's exchange; a cache refresh's sink). A base class,
    not a Protocol: compiled, the connection's calls into an exchange are then vtable calls,
    not look-ups by name (three or more a response). Every method is overridden."""

    __slots__ = ()

    def on_interim(self, status: int, head: ResponseHead) -> None:
        raise NotImplementedError

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        raise NotImplementedError

    def on_response_body(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def on_response_trailers(self, fields: list[Header]) -> None:
        raise NotImplementedError

    def on_response_end(self) -> None:
        raise NotImplementedError

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        raise NotImplementedError

    def on_upstream_writable(self, writable: bool) -> None:
        raise NotImplementedError

    def on_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        raise NotImplementedError

    def on_response_waiting(self) -> None:
        """The head of a Content-Length body was read alone: none of the body yet."""
        raise NotImplementedError

    def on_response_spliced(self, size: int) -> None:
        """`size` more body bytes went to the client's socket in the kernel, never through
        `on_response_body` (`UpstreamConnection.splice_body`)."""
        raise NotImplementedError

    def on_client_failed(self) -> None:
        """The client's socket failed, or took nothing for the send timeout, while a body was
        spliced to it (the splice has stopped; the server connection is mid-body)."""
        raise NotImplementedError

    def read_size(self) -> int:
        """How many body bytes to read from the server now (`client_read_size`)."""
        raise NotImplementedError


class HeadReader:
    """The callbacks of a connection's head parser, which outlives one response: each goes
    to the head being read (a native call in the compiled build)."""

    __slots__ = ("head",)

    def __init__(self, head: ResponseHead) -> None:
        self.head = head

    def on_status(self, reason: bytes) -> None:
        self.head.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.on_header(name, value)


_NO_HEAD: Final = ResponseHead()  # what a reader holds between heads (never filled)

# response states (Final: compiled, a C constant, not a look-up in the module's dict)
_IDLE: Final = 0
_HEAD: Final = 1
_LENGTH: Final = 2
_CHUNKED: Final = 3
_CLOSE: Final = 4
_DONE: Final = 5


class UpstreamConnection(asyncio.BufferedProtocol):
    """A keep-alive connection to one backend, carrying one request at a time."""

    def __init__(
        self,
        backend: object,
        read_timeout: float,
        write_timeout: float,
        hide_headers: frozenset[bytes] = frozenset(),
    ) -> None:
        self.backend = backend  # the BackendState it serves (backend.py builds on this module)
        self._hide = hide_headers
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.private = False  # opened for one client only (a PROXY header): never pooled
        self._read_timeout = self._base_read = read_timeout
        self._write_timeout = self._base_write = write_timeout
        self._deadline: Deadline | None = None
        self._paused_reading = False
        self._write_blocked = False
        self._sending = False  # request body still streaming: no read timeout yet
        self._upgrade = False
        # per-response state
        self._state = _IDLE
        self._method = b"GET"
        self._buffer = b""
        self._remaining = 0
        self._parser: httptools.HttpResponseParser | None = None  # of a chunked body
        self._head_parser: httptools.HttpResponseParser | None = None  # reads every head
        self._reader: HeadReader | None = None  # ... reporting to this
        self._memo: HeadMemo | None = None  # the last final head read twice, parsed
        self._last_raw = b""  # the last final head read (up to MEMO_HEAD), and its method
        self._last_method = b""
        self.sent = RequestLineMemo()  # the last request head sent (the proxy serializes it)
        self._keep_alive = True
        self._got_bytes = False
        self._chunked_done = False
        self._trailers: list[Header] = []  # of a chunked response, as they arrive
        self._lent: LentBuffer | None = None  # the buffer get_buffer lent to the read under way
        # a body spliced to the client's socket (`splice_body`), and what its wait is for
        self._splice: splice.BodySplice | None = None
        self._splice_for_client = False
        self._send_timeout = 0.0  # ... the client's, while the splice waits for it

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._deadline = Deadline(asyncio.get_running_loop(), self._on_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_splice()
        if self._deadline is not None:
            self._deadline.cancel()
        sink, self.sink = self.sink, None
        state = self._state
        self._state = _DONE
        if sink is None:
            return
        if state == _CLOSE:
            sink.on_response_end()
        elif state != _IDLE:
            sink.on_upstream_failed(
                "server closed the connection" + (f" ({exc})" if exc else ""),
                self._got_bytes,
                False,
            )

    def eof_received(self) -> bool:
        if self.transport is not None:
            OUTBOX.flush_to(self.transport)  # what this turn wrote goes before the close
        return False  # close our side too: a half-closed server connection is never reused

    def pause_writing(self) -> None:
        self._write_blocked = True
        if self._deadline is not None and self._state != _IDLE:
            self._deadline.set(self._write_timeout)
        if self.sink is not None:
            self.sink.on_upstream_writable(False)

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.sink is not None:
            self.sink.on_upstream_writable(True)
            self._arm_read()

    def get_buffer(self, sizehint: int) -> memoryview:
        sink = self.sink
        if sink is None or self._state == _HEAD:
            self._lent = _HEAD_LENT
            return _HEAD_LENT.view
        size = sink.read_size()
        if LEND_MIN <= size <= BIG_READ:
            self._lent = _BODY_LENT
            view = _BODY_LENT.view
            return view if size == BIG_READ else view[:size]
        self._lent = None
        return _READ_BUFFER[:size]

    def buffer_updated(self, nbytes: int) -> None:
        lent = self._lent
        if lent is None or nbytes < lent.least:
            self._lent = None
            self.data_received(bytes((_READ_BUFFER if lent is None else lent.view)[:nbytes]))
            return
        self._lent = None
        data = lent.data
        held = _getrefcount(data)
        try:
            if self._state == _HEAD:
                self._lent_head(lent, nbytes)
            else:
                self.data_received(memoryview(data)[:nbytes])
        finally:
            if _getrefcount(data) != held:
                lent.renew()  # a view of this read is still held: never write into it again

    def _lent_head(self, lent: LentBuffer, nbytes: int) -> None:
        """A read in the head state: a whole head followed by at least VIEW_MIN body bytes
        goes on as the head's bytes and a view of the rest; anything else is copied."""
        data = lent.data
        end = -1 if self._buffer else data.find(b"\r\n\r\n", 0, nbytes)
        if end < 0 or nbytes - end - 4 < VIEW_MIN:
            self.data_received(bytes(lent.view[:nbytes]))
            return
        head_end = end + 4
        self._got_bytes = True
        self._read_head(bytes(lent.view[:head_end]), memoryview(data)[head_end:nbytes])
        if _IDLE < self._state < _DONE:
            self._arm_read()  # more of this response to come

    def data_received(self, data: bytes | memoryview) -> None:
        state = self._state
        if state == _LENGTH:
            # the hot path of a download: count and forward, never parse
            self._arm_read()
            remaining = self._remaining
            assert self.sink is not None
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                self.sink.on_response_body(data)
                return
            if len(data) > remaining:
                self._keep_alive = False  # bytes beyond the response: the stream is corrupt
                data = data[:remaining]
            self._remaining = 0
            self.sink.on_response_body(data)
            self._finish()
        elif state == _HEAD:
            self._got_bytes = True
            if self._buffer:
                self._read_head(self._buffer + data)
            else:
                self._read_head(data if isinstance(data, bytes) else bytes(data))
            if _IDLE < self._state < _DONE:
                self._arm_read()  # more of this response to come (usually it came whole)
        elif state == _CHUNKED:
            self._arm_read()
            self._feed_chunked(data)
        elif state == _CLOSE:
            self._arm_read()
            assert self.sink is not None
            self.sink.on_response_body(data)
        else:
            # bytes while idle (a late 408, garbage): this connection cannot be trusted again
            self.close()

    # -- used by the proxy -------------------------------------------------------------------

    def is_reusable(self) -> bool:
        transport = self.transport
        return (
            not self.closed
            and self._state == _IDLE
            and self._keep_alive
            and transport is not None
            and not transport.is_closing()
        )

    def send(
        self, sink: ResponseSink, method: bytes, head: bytes, complete: bool, upgrade: bool = False
    ) -> None:
        """Start a request: write its head and expect a response for `sink`. `complete` says
        the request has no more body to come (else `request_sent` is called when it has);
        `upgrade`, that a 101 may turn the connection into a tunnel."""
        self.sink = sink
        self._upgrade = upgrade
        self._sending = not complete
        self.requests += 1
        self._method = method
        self._state = _HEAD
        self._buffer = b""
        self._got_bytes = False
        self._chunked_done = False
        assert self.transport is not None
        OUTBOX.write(self.transport, head)
        self._arm_read()

    def write(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        OUTBOX.write(self.transport, data)

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        assert self.transport is not None
        size = 0
        for part in parts:
            size += len(part)
        OUTBOX.writelines(self.transport, parts, size)

    def body_left(self) -> int:
        """Bytes of a Content-Length body still to be read (0 in any other state)."""
        return self._remaining if self._state == _LENGTH else 0

    def pause_reading(self) -> None:
        """The client is not keeping up: stop reading so the server slows down, not our memory."""
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
            if self._deadline is not None:
                self._deadline.clear()

    def resume_reading(self) -> None:
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
            self._arm_read()

    def rest(self) -> None:
        """Pooled and unused for a while: give up what only speeds up a busy connection's next
        response, its head parser (llhttp's state with it) and the memo of its last head, as an
        idle client connection gives up its parser; the next response makes them anew."""
        if self._state == _IDLE:
            self._head_parser = None
            self._reader = None
            self._memo = None
            self._last_raw = b""

    def detach(self) -> None:
        """The exchange is over; the caller decides whether to pool or close. A connection
        paused for a slow client reads again: pooled paused, the next request sent on it would
        wait forever for its response (the last bytes of a big download often arrive while
        the client is behind)."""
        self.sink = None
        self._stop_splice()
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        self._read_timeout = self._base_read
        self._write_timeout = self._base_write
        if self._deadline is not None:
            self._deadline.clear()

    def close(self) -> None:
        self.sink = None
        self.closed = True
        self._stop_splice()
        if self._deadline is not None:
            self._deadline.cancel()
        if self.transport is not None:
            OUTBOX.flush_to(self.transport)
            self.transport.close()

    def abort(self) -> None:
        self.sink = None
        self.closed = True
        self._stop_splice()
        if self._deadline is not None:
            self._deadline.cancel()
        if self.transport is not None:
            OUTBOX.flush_to(self.transport)
            self.transport.abort()

    # -- response head -----------------------------------------------------------------------

    def _read_head(self, buffer: bytes, tail: memoryview | None = None) -> None:
        """Read the response head(s) at the start of `buffer`, and the body bytes after it.
        With a `tail` (`_lent_head`), `buffer` is exactly one head, and the bytes after it are
        `tail`, a view of the read."""
        while True:
            end = buffer.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    self._fail("response head too large")  # answered 502
                else:
                    self._buffer = buffer
                return
            head_end = end + 4
            self._buffer = b""
            raw = buffer[:head_end] if head_end < len(buffer) else buffer
            memo = self._memo
            # the same bytes as the last final head, after the same method: the same head,
            # not parsed again (the head parser, if any, stays where the last message it saw
            # ended: it never sees this one)
            parsed = memo is None or memo.raw != raw or memo.method != self._method
            if memo is not None and not parsed:
                head = memo.head()
                status = memo.status
                http11 = memo.http11
            else:
                head = ResponseHead(self._hide)
                # one parser reads every head of this connection, as long as each message it
                # saw ended where llhttp thinks it ends (`_reuse_parser`); making one costs as
                # much as parsing a small head. It reports to a `HeadReader` (head callbacks
                # only: no body or message callbacks), which hands them to this response's
                # head; a chunked body gets a parser of its own
                reader = self._reader
                parser = self._head_parser
                if parser is None or reader is None:
                    reader = self._reader = HeadReader(head)
                    parser = self._head_parser = httptools.HttpResponseParser(reader)
                else:
                    reader.head = head
                whole = True  # llhttp read the head through, without stopping
                try:
                    parser.feed_data(raw)
                except httptools.HttpParserUpgrade:
                    self._head_parser = None  # the parser has stopped for good
                    whole = False
                except httptools.HttpParserError as exc:
                    self._head_parser = None
                    self._fail(f"malformed response head: {exc}")
                    return
                reader.head = _NO_HEAD  # an idle connection holds no response's fields
                status = parser.get_status_code()
                # the version from the status line's first bytes when it starts there (llhttp
                # accepted "HTTP/<digit>.<digit>"): cheaper than get_http_version's formatting
                http11 = raw[:8] == b"HTTP/1.1" or (
                    raw[:1] != b"H" and parser.get_http_version() == "1.1"
                )
                head.finish(self._method, status, http11)
                if whole and status >= 200 and len(raw) <= MEMO_HEAD:
                    # remembered once read twice in a row (a server that never repeats a head
                    # costs a comparison, nothing made); before the sink edits its fields
                    if raw == self._last_raw and self._method == self._last_method:
                        memo = self._memo = HeadMemo(raw, self._method, status, http11, head)
                        head.memo = memo
                    self._last_raw = raw
                    self._last_method = self._method
            sink = self.sink
            assert sink is not None
            if status < 200:
                rest = buffer[head_end:]
                if tail is not None:
                    rest, tail = bytes(tail), None  # an interim response: rare, copied
                if status == 101:
                    if not self._upgrade:
                        self._fail("unexpected 101 Switching Protocols")
                        return
                    # the server switched protocols: the connection leaves HTTP for good
                    self._state = _DONE
                    self.sink = None
                    self.closed = True  # never pooled again
                    if self._deadline is not None:
                        self._deadline.cancel()
                    sink.on_upgraded(head, rest)
                    return
                sink.on_interim(status, head)
                if self.sink is None:
                    return
                buffer = rest
                continue
            kind = head.kind
            # a server that answers before it has the whole request may never read the rest:
            # whatever it says, the connection is not trusted with another request
            self._keep_alive = head.keep_alive and not self._sending
            sink.on_response_head(status, head)
            if self.sink is None:
                return
            if kind is LENGTH_BODY:
                length = head.length
                available = len(buffer) - head_end if tail is None else len(tail)
                if available >= length:
                    # the whole response in this read: the common case for small answers
                    if available > length:
                        self._keep_alive = False  # bytes beyond the response
                    if length:
                        if tail is None:
                            body = _body_of(buffer, head_end, head_end + length)
                        else:
                            body = tail if available == length else tail[:length]
                        sink.on_response_body(body)
                        if parsed:  # (else the parser never saw this message's head)
                            self._reuse_parser(body)
                    self._finish()
                else:
                    self._head_parser = None  # llhttp waits for a body it will never see
                    self._state = _LENGTH
                    self._remaining = length - available
                    if tail is not None:
                        sink.on_response_body(tail)
                    elif available:
                        sink.on_response_body(_body_of(buffer, head_end, len(buffer)))
                    else:
                        sink.on_response_waiting()
            elif kind is NO_BODY:
                if len(buffer) > head_end or tail is not None:
                    self._keep_alive = False
                if self._method == b"HEAD":
                    self._head_parser = None  # llhttp expects the body the headers describe
                self._finish()
            elif kind is CHUNKED_BODY:
                self._head_parser = None
                # a parser that reports the body to this connection reads the head again first
                # (it parsed cleanly above; its fields are not reported twice)
                parser = httptools.HttpResponseParser(self)
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    parser.feed_data(raw)
                self._state = _CHUNKED
                self._parser = parser
                if tail is not None:
                    self._feed_chunked(tail)
                elif len(buffer) > head_end:
                    self._feed_chunked(_body_of(buffer, head_end, len(buffer)))
            else:
                self._head_parser = None
                self._state = _CLOSE
                self._keep_alive = False
                if tail is not None:
                    sink.on_response_body(tail)
                elif len(buffer) > head_end:
                    sink.on_response_body(_body_of(buffer, head_end, len(buffer)))
            return

    def _reuse_parser(self, body: bytes | memoryview) -> None:
        """The head parser saw a head with Content-Length: give it the body too (counted by
        llhttp, reported to nobody), so that it ends the message and can read the next head.
        Not worth it for a big body (this connection only counts those), nor while the
        connection is not to be reused (llhttp would refuse bytes after `Connection: close`)."""
        parser = self._head_parser
        if parser is None:
            return
        if not self._keep_alive or len(body) > REUSE_BODY:
            self._head_parser = None
            return
        try:
            parser.feed_data(body)
        except httptools.HttpParserError:
            self._head_parser = None

    # httptools callbacks for the body of a chunked response (the head's go to ResponseHead)
    def on_body(self, body: bytes) -> None:
        if self._state == _CHUNKED and self.sink is not None:
            self.sink.on_response_body(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state == _CHUNKED:  # a trailer field: the head's were read before the state
            self._trailers.append((name, value))

    def on_message_begin(self) -> None:
        if self._state == _CHUNKED:
            self._keep_alive = False  # a second message after the chunked one: never reuse

    def on_message_complete(self) -> None:
        if self._state == _CHUNKED:
            self._chunked_done = True

    def _feed_chunked(self, data: bytes | memoryview) -> None:
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._chunked_done:
                self._fail(f"malformed chunked body: {exc}")
                return
            self._keep_alive = False  # bytes after the final chunk
        if self._chunked_done:
            # finished only after the parser returned: the sink may reuse this connection at once
            self._parser = None
            if self._trailers:
                fields = trailer_fields(self._trailers, self._hide)
                self._trailers = []
                if fields and self.sink is not None:
                    self.sink.on_response_trailers(fields)
            self._finish()

    # -- endings -----------------------------------------------------------------------------

    def _finish(self) -> None:
        self._state = _IDLE
        sink = self.sink
        if sink is not None:
            sink.on_response_end()

    def _fail(self, reason: str, timed_out: bool = False) -> None:
        sink = self.sink
        got = self._got_bytes
        self.abort()
        self._state = _DONE
        if sink is not None:
            sink.on_upstream_failed(reason, got, timed_out)

    def set_timeouts(self, read: float, write: float) -> None:
        """A route's own timeouts, for the request about to be sent on this connection (the
        pool's return with `detach`)."""
        self._read_timeout = read
        self._write_timeout = write

    def request_sent(self) -> None:
        """The whole request is written: the server's time to answer starts now (a slow
        upload is the client's time, watched by the listener's body timeout, as NGINX does)."""
        self._sending = False
        self._arm_read()

    def _arm_read(self) -> None:
        deadline = self._deadline
        if deadline is None or self._paused_reading:
            return
        if self._write_blocked:
            deadline.set(self._write_timeout)
        elif self._sending:
            deadline.clear()
        else:
            deadline.set(self._read_timeout)

    def _on_timeout(self) -> None:
        if self._state in (_IDLE, _DONE):
            return
        if self._splice is not None and self._splice_for_client:
            self._splice_failed_client()  # the client took nothing for its send timeout
            return
        self._fail("server timed out", timed_out=True)

    # -- a body spliced to the client (portico.upstreams.splice) -------------------------------

    def splice_body(self, client: asyncio.Transport, limit: int, send_timeout: float) -> bool:
        """Move the rest of this Content-Length body to `client`'s socket in the kernel
        (`splice.BodySplice`), at most `limit` bytes held at a time; the sink hears of it by
        `on_response_spliced`, then `on_response_end` (or a failure) as for a copied body.
        Preconditions (the caller's): whatever was written to `client` is in its socket (its
        write buffer is empty), the client is plain TCP, and nothing has to see the body.
        False (nothing changed) when this connection cannot: not in a Content-Length body,
        still sending the request, TLS, or no descriptor or pipe to spare."""
        transport = self.transport
        if (
            self._state != _LENGTH
            or self._remaining <= 0
            or self._sending
            or self._splice is not None
            or transport is None
            or transport.get_extra_info("sslcontext") is not None
        ):
            return False
        try:
            source = os.dup(transport.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            return False
        try:
            dest = os.dup(client.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            os.close(source)
            return False
        moving = splice.BodySplice(
            asyncio.get_running_loop(), source, dest, self._remaining, limit, self
        )
        self._send_timeout = send_timeout
        self.pause_reading()
        self._splice = moving
        try:
            moving.start()
        except (OSError, RuntimeError):  # no pipe (EMFILE), or not watched: copy as before
            self._splice = None
            moving.close()
            self.resume_reading()
            return False
        return True

    def _stop_splice(self) -> None:
        moving, self._splice = self._splice, None
        if moving is not None:
            moving.close()

    def splice_moved(self, size: int) -> None:
        self._remaining -= size
        if self.sink is not None:
            self.sink.on_response_spliced(size)

    def splice_waits(self, for_client: bool) -> None:
        self._splice_for_client = for_client
        deadline = self._deadline
        if deadline is not None:
            deadline.set(self._send_timeout if for_client else self._read_timeout)

    def splice_done(self, trailing: bool) -> None:
        self._splice = None
        self._remaining = 0
        if trailing:
            self._keep_alive = False  # bytes beyond the response: the stream is corrupt
        if self._deadline is not None:
            self._deadline.clear()
        self._finish()

    def splice_failed(self, reason: str, client: bool) -> None:
        self._splice = None
        if client:
            self._splice_failed_client()
        else:
            self._fail(reason)

    def _splice_failed_client(self) -> None:
        """The client failed mid-body: as when its transport fails on the copying path, the
        client is aborted (its connection's loss ends the exchange, which drops this one)."""
        self._stop_splice()
        if self._deadline is not None:
            self._deadline.clear()
        sink = self.sink
        if sink is not None:
            sink.on_client_failed()
