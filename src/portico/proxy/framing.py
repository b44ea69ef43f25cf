"""How a response goes on the wire to one client: HTTP/1.x bytes or HTTP/2 frames.

Owns `ResponseFramer`, what an `Exchange` writes its response through (a head, body pieces,
trailers, the end, or one of Portico's own `LocalResponse` answers whole), and its two
implementations: `Http1Framer` (the status line, Content-Length or chunked re-framing,
Connection: close / keep-alive and HTTP/1.0's rules, the head written with the first body
bytes) and `H2Framer` (a HEADERS frame, DATA frames, END_STREAM or trailers, through an
`H2Stream`'s flow control). The exchange decides what a response says; a framer decides only
how it is framed, and never looks at a server or a route.

A body's length is told as a number of bytes, or `BODY_UNKNOWN` (chunked on HTTP/1.1, read to
the close on HTTP/1.0, DATA frames on HTTP/2: what a body transform that changes the length
needs), or `BODY_NONE` (HEAD, 204, 304). Compiled with the exchange: its calls into a framer
are native calls.
"""

from __future__ import annotations

import asyncio
from typing import Final

from portico.http.h2 import response_fields
from portico.http.headers import Header, HeadMemo, serialize_head
from portico.http.local import LocalResponse, http1_bytes
from portico.native import trait
from portico.observe.stats import ByteCounter
from portico.outbox import OUTBOX

BODY_UNKNOWN: Final = -1  # a body follows, its length unknown
BODY_NONE: Final = -2  # no body follows

# a body piece up to this size is copied into one buffer with its framing (the staged head, a
# chunk's size line and CRLF): one write, and over TLS one record instead of one per part
_COALESCE: Final = 16 * 1024
# ... on a plain TCP connection, up to this size: beyond it the parts go out in one writev,
# never copied together first (the kernel copies each part anyway; joining a 16 KiB body to
# its head cost a copy and an allocation of the whole response per response)
COALESCE_PLAIN: Final = 4 * 1024
_CRLF: Final = b"\r\n"
_CHUNK_END: Final = b"0\r\n\r\n"
# Status lines by status, with the reason they were made for, and Content-Length values by
# length: made once, not formatted per response (~400 instructions each). Bounded (a few tens
# of KiB at most): a server inventing reasons only replaces the line of its status, and lengths
# beyond the bound are formatted each time.
_STATUS_LINES: Final[dict[int, tuple[bytes, bytes]]] = {}
_LENGTHS: Final[dict[int, bytes]] = {}
_STATUS_LIMIT: Final = 1000
_LENGTH_LIMIT: Final = 512


def status_line(status: int, reason: bytes) -> bytes:
    """`HTTP/1.1 <status> <reason>`, memoised by status."""
    memo = _STATUS_LINES.get(status)
    if memo is not None and memo[0] == reason:
        return memo[1]
    line = b"HTTP/1.1 %d %s" % (status, reason)
    if memo is not None or len(_STATUS_LINES) < _STATUS_LIMIT:
        _STATUS_LINES[status] = (reason, line)
    return line


def length_value(length: int) -> bytes:
    """A Content-Length value, memoised."""
    value = _LENGTHS.get(length)
    if value is None:
        value = b"%d" % length
        if len(_LENGTHS) < _LENGTH_LIMIT:
            _LENGTHS[length] = value
    return value


class ResponseFramer:
    """Frames one response at a time for one client. Every method is overridden."""

    # after `send_response_head`: the connection may carry another request, as the exchange
    # said, unless the framing needs the close (an HTTP/1.0 body of unknown length)
    keep: bool

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> bool:
        """A server's 100 or 103, passed on where the client's protocol has room for it;
        whether it was."""
        raise NotImplementedError

    def send_response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        length: int,
        coding: bytes | None,
        keep: bool,
        memo: HeadMemo | None = None,
    ) -> int:
        """Stage the response head (sent with the first body bytes, or at the end), with the
        end-to-end `headers` (the framer may append its framing fields to the list).
        `length`: the body's bytes, BODY_UNKNOWN or BODY_NONE; `coding`: the server's
        transfer-coding chain of a chunked body (None: plain chunked); `keep`: the exchange
        would keep the connection (the framer may not, see `keep`); `memo`: the server
        connection's memo of the head this one comes from, where a framer may keep what it
        made of it (reused only for equal inputs). Returns the head's size in bytes, for the
        counters."""
        raise NotImplementedError

    def send_body(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def send_trailers(self, fields: list[Header]) -> None:
        """The trailer section of a body of unknown length (dropped where there is no room)."""
        raise NotImplementedError

    def send_end(self) -> None:
        """The response is complete."""
        raise NotImplementedError

    def cancel_response_head(self) -> None:
        """Forget a staged head: its server failed before a byte of it was sent."""
        raise NotImplementedError

    def send_local(self, response: LocalResponse, keep: bool, head_only: bool) -> int:
        """Portico's own answer, whole (a staged head is dropped); without its body when
        `head_only` (a HEAD request). Returns the head's size in bytes, for the counters."""
        raise NotImplementedError

    def send_switching(self, reason: bytes, headers: list[Header], upgrade: bytes | None) -> None:
        """The server's 101: the connection leaves HTTP (a WebSocket) after it."""
        raise NotImplementedError

    def raw_transport(self) -> asyncio.Transport | None:
        """The plain TCP transport a body of the staged head's length may be written to
        directly (sendfile), or None: TLS, HTTP/2, or a re-framed (chunked) body."""
        raise NotImplementedError

    def sent_raw(self, size: int) -> None:
        """`size` body bytes went out directly on `raw_transport` (for the counters)."""
        raise NotImplementedError


class Http1Framer(ResponseFramer):
    """HTTP/1.x framing on one client connection, for the request it answers now (the
    connection sets `http11` whenever another request becomes the one answered). Adds what it
    writes to the listener's `ByteCounter`, as the connection does."""

    def __init__(self, counter: ByteCounter, tls: bool = True) -> None:
        self.transport: asyncio.Transport | None = None  # set once connected
        self._bytes = counter
        # the largest body piece joined to its framing in one buffer (see COALESCE_PLAIN)
        self._coalesce = _COALESCE if tls else COALESCE_PLAIN
        self.http11 = True  # the request answered is HTTP/1.1 (else 1.0)
        self.keep = True
        # the response being framed
        self._head: bytes | None = None  # staged, written with the first body bytes
        self._chunked = False  # its body is re-chunked (length unknown, HTTP/1.1)

    def _write(self, data: bytes | memoryview) -> None:
        transport = self.transport
        assert transport is not None
        self._bytes.sent += len(data)
        OUTBOX.write(transport, data)

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> bool:
        if (status == 100 or status == 103) and self.http11:
            self._write(serialize_head(b"HTTP/1.1 %d %s" % (status, reason), headers))
            return True
        return False

    def send_response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        length: int,
        coding: bytes | None,
        keep: bool,
        memo: HeadMemo | None = None,
    ) -> int:
        http11 = self.http11
        if length >= 0:
            headers.append((b"Content-Length", length_value(length)))
        elif length == BODY_UNKNOWN:
            if http11:
                self._chunked = True
                headers.append((b"Transfer-Encoding", coding or b"chunked"))
            else:
                keep = False  # an HTTP/1.0 client reads this body until the connection closes
        self.keep = keep
        if not keep:
            headers.append((b"Connection", b"close"))
        elif not http11:
            headers.append((b"Connection", b"keep-alive"))
        # the same status, reason and fields (compared by value) as the head last serialized
        # from this server head: the same bytes (a small response's head is ~10% of its cost)
        if (
            memo is not None
            and memo.out_fields is not None
            and memo.out_status == status
            and memo.out_reason == reason
            and memo.out_fields == headers
        ):
            staged = memo.out_head
        else:
            staged = serialize_head(status_line(status, reason), headers)
            if memo is not None:
                memo.out_status = status
                memo.out_reason = reason
                memo.out_fields = list(headers)
                memo.out_head = staged
        self._head = staged
        return len(staged)

    def send_body(self, data: bytes | memoryview) -> None:
        transport = self.transport
        assert transport is not None
        head = self._head
        size = len(data)
        if self._chunked:
            if not data:
                return
            size_line = b"%x\r\n" % size
            parts: list[bytes | memoryview] = [size_line, data, _CRLF]
            size += len(size_line) + 2
            if head is not None:
                self._head = None
                parts.insert(0, head)
                size += len(head)
            self._bytes.sent += size
            if size <= self._coalesce:
                OUTBOX.write(transport, b"".join(parts))
            else:
                OUTBOX.writelines(transport, parts, size)
        elif head is not None:
            self._head = None
            self._bytes.sent += len(head) + size
            if size <= self._coalesce:
                # one small buffer beats a writev of two (bytes: compiled, a native
                # concatenation; a memoryview takes the generic addition)
                if isinstance(data, bytes):
                    OUTBOX.write(transport, head + data)
                else:
                    OUTBOX.write(transport, head + data)
            else:
                OUTBOX.writelines(transport, [head, data], len(head) + size)
        else:
            self._bytes.sent += size
            OUTBOX.write(transport, data)

    def send_trailers(self, fields: list[Header]) -> None:
        """An HTTP/1.1 client gets them in its own chunked framing (an HTTP/1.0 one has
        nowhere to put them)."""
        if not self._chunked:
            return
        end = serialize_head(b"0", fields)
        head = self._head
        if head is not None:
            self._head = None
            end = head + end
        self._write(end)
        self._chunked = False  # the last chunk is written

    def send_end(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._write(head + _CHUNK_END if self._chunked else head)
        elif self._chunked:
            self._write(_CHUNK_END)
        self._chunked = False

    def cancel_response_head(self) -> None:
        self._head = None
        self._chunked = False

    def send_local(self, response: LocalResponse, keep: bool, head_only: bool) -> int:
        self._head = None
        self._chunked = False
        # an HTTP/1.0 client keeps the connection only when told (RFC 9112 §9.3)
        data = http1_bytes(response, not keep, head_only, keep and not self.http11)
        self._write(data)
        return len(data) if head_only else len(data) - len(response.body)

    def send_switching(self, reason: bytes, headers: list[Header], upgrade: bytes | None) -> None:
        extra: list[Header] = [(b"Connection", b"Upgrade")]
        if upgrade is not None:
            extra.append((b"Upgrade", upgrade))
        self._write(serialize_head(b"HTTP/1.1 101 %s" % reason, headers + extra))

    def raw_transport(self) -> asyncio.Transport | None:
        transport = self.transport
        if self._chunked or transport is None or transport.get_extra_info("ssl_object"):
            return None
        return transport

    def sent_raw(self, size: int) -> None:
        self._bytes.sent += size


@trait
class StreamSide:
    """What an `H2Framer` needs of its HTTP/2 stream (`portico.listeners.h2.H2Stream`: the
    frames, flow control and END_STREAM are the stream's). A trait, not a Protocol: compiled,
    the framer calls these natively (through a Protocol, each call was a look-up by name:
    three a request). Every method is overridden."""

    __slots__ = ()

    head_only: bool

    def send_headers(self, fields: list[Header], *, end: bool) -> None:
        raise NotImplementedError

    def send_data(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def send_trailers(self, fields: list[Header]) -> None:
        raise NotImplementedError

    def send_end(self) -> None:
        raise NotImplementedError


class H2Framer(ResponseFramer):
    """HTTP/2 framing of one stream's response: streams end, the connection stays."""

    def __init__(self, stream: StreamSide) -> None:
        self._stream = stream
        self.keep = True
        self._fields: list[Header] | None = None  # the response head, staged

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> bool:
        if status == 100 or status == 103:
            self._stream.send_headers(response_fields(status, headers), end=False)
            return True
        return False

    def send_response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        length: int,
        coding: bytes | None,
        keep: bool,
        memo: HeadMemo | None = None,
    ) -> int:
        # an unknown length needs nothing: DATA frames until END_STREAM
        self.keep = keep
        if length >= 0:
            headers.append((b"content-length", b"%d" % length))
        fields = self._fields = response_fields(status, headers)
        return sum(len(name) + len(value) for name, value in fields)

    def send_body(self, data: bytes | memoryview) -> None:
        fields = self._fields
        if fields is not None:
            self._fields = None
            self._stream.send_headers(fields, end=False)
        if data:
            self._stream.send_data(data)

    def send_trailers(self, fields: list[Header]) -> None:
        staged = self._fields
        if staged is not None:
            self._fields = None
            self._stream.send_headers(staged, end=False)
        self._stream.send_trailers(fields)

    def send_end(self) -> None:
        fields = self._fields
        if fields is not None:
            self._fields = None
            self._stream.send_headers(fields, end=True)  # END_STREAM on the HEADERS frame
        else:
            self._stream.send_end()

    def cancel_response_head(self) -> None:
        self._fields = None

    def send_local(self, response: LocalResponse, keep: bool, head_only: bool) -> int:
        """HEADERS, then DATA with the body unless the request was HEAD."""
        self._fields = None
        stream = self._stream
        fields = response_fields(response.status, response.headers)
        size = sum(len(name) + len(value) for name, value in fields)
        body = response.body
        if not body or head_only or stream.head_only:
            stream.send_headers(fields, end=True)
            return size
        stream.send_headers(fields, end=False)
        stream.send_data(body)
        stream.send_end()
        return size

    def send_switching(self, reason: bytes, headers: list[Header], upgrade: bytes | None) -> None:
        raise RuntimeError("an HTTP/2 stream is never upgraded")  # Upgrade is refused first

    def raw_transport(self) -> asyncio.Transport | None:
        return None  # frames, never raw bytes

    def sent_raw(self, size: int) -> None:
        pass
