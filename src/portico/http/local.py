"""Portico's own answers as values: a status, end-to-end header fields and a body. *pure*

Owns `LocalResponse` (what a filter, a route or the proxy answers with instead of a server:
a 429, a redirect, a fixed page, a 502, a static file, a cache hit) and `local_response`, the
one way to make one, `BodySource` (a body streamed rather than held: a file, a cache entry)
and `http1_bytes`, the value as HTTP/1.1 bytes. A value says nothing about the connection: no
Connection, Transfer-Encoding or Keep-Alive field. Only a protocol edge turns it into what goes
on the wire: the HTTP/1.1 client connection (`http1_bytes`, adding Connection: close when it
closes, leaving the body out for HEAD) or the HTTP/2 stream (`portico.http.h2.response_fields`).
Never touches a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Protocol

from portico.http.headers import Header, serialize_head

__all__ = ["BodySource", "LocalResponse", "http1_bytes", "local_response", "reason_phrase"]


class BodySource(Protocol):
    """A local answer's body, streamed: read piece by piece as the client takes it (the
    framers wait for the client's writability between reads), never held whole.

    `length` is the body's size when known (sent as Content-Length), else None (chunked on
    HTTP/1.1, DATA frames until END_STREAM on HTTP/2). `file_range` gives (fd, offset, count)
    when the bytes are a plain file's, so a plain HTTP/1.1 connection may send them with
    sendfile(2), untouched by Python; None otherwise. `close` is always called once, whatever
    happened (sent, failed, client gone)."""

    @property
    def length(self) -> int | None: ...

    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of what follows; b"" at the end."""
        ...

    def file_range(self) -> tuple[int, int, int] | None: ...
    def close(self) -> None: ...


# Reason phrases by status, looked up without an Enum call (a redirect is built per request).
_PHRASES: Final[dict[int, bytes]] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# Fields that belong to one connection's framing: the edges add them, a value never carries one.
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_CLOSE: Final[Header] = (b"Connection", b"close")
_KEEP_ALIVE: Final[Header] = (b"Connection", b"keep-alive")


def _wire_cache() -> list[bytes | None]:
    return [None, None, None, None, None, None]


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """A whole response Portico gives itself. Make one with `local_response`.

    `headers` are end-to-end fields in the order they are sent, Content-Length included (the
    length of `body`; also for a HEAD request, whose answer leaves the body out; for a
    `source`, its length when known). `reason` is the status's registered phrase (empty for
    an unregistered status). `source`: a streamed body (then `body` is empty); a value with
    a source is answered once (the source is closed after it).
    """

    status: int
    headers: tuple[Header, ...]
    body: bytes
    reason: bytes
    source: BodySource | None = None
    # HTTP/1.1 bytes, built by the edge on first use (plain / close / keep-alive x with /
    # without the body): a prebuilt answer (a 502, a fixed page) is serialised once, not per request
    _http1: list[bytes | None] = field(
        default_factory=_wire_cache, init=False, repr=False, compare=False
    )


def local_response(
    status: int, headers: Iterable[Header] = (), body: bytes | BodySource = b""
) -> LocalResponse:
    """The answer with `status`, `headers` and `body` (bytes, or a `BodySource` streamed).

    Content-Length is appended when `headers` has none, except for 204 and 304, which have no
    body, and for a source of unknown length. Raises ValueError for a status outside 200-599,
    a body on a 204 or 304, a connection-specific field, or a CR, LF or NUL in a field (it
    could end the head early).
    """
    if not 200 <= status <= 599:
        raise ValueError(f"a local response's status is from 200 to 599, not {status}")
    fields = tuple(headers)
    has_length = False
    for name, value in fields:
        low = name.lower()
        if low in _CONNECTION_FIELDS:
            raise ValueError(f"{name!r} belongs to the connection, not to a local response")
        if b"\r" in value or b"\n" in value or b"\0" in value or b"\r" in name or b"\n" in name:
            raise ValueError(f"the {name!r} field holds a line break or NUL")
        if low == b"content-length":
            has_length = True
    reason = _PHRASES.get(status, b"")
    if not isinstance(body, bytes):
        if status == 204 or status == 304:
            raise ValueError(f"a {status} response has no body")
        length = body.length
        if not has_length and length is not None:
            fields = (*fields, (b"Content-Length", b"%d" % length))
        return LocalResponse(status, fields, b"", reason, body)
    if status == 204 or status == 304:
        if body:
            raise ValueError(f"a {status} response has no body")
    elif not has_length:
        fields = (*fields, (b"Content-Length", b"%d" % len(body)))
    return LocalResponse(status, fields, body, reason)


def reason_phrase(status: int) -> bytes:
    """The registered reason phrase of `status` (empty for an unregistered one)."""
    return _PHRASES.get(status, b"")


def http1_bytes(
    response: LocalResponse, close: bool = False, head_only: bool = False, keep_alive: bool = False
) -> bytes:
    """`response` as HTTP/1.1 bytes: with Connection: close last when `close` (or
    Connection: keep-alive when `keep_alive`, what an HTTP/1.0 client needs to keep the
    connection), without the body when `head_only` (the answer to a HEAD request). Built once
    per variant and value."""
    index = (2 if close else 4 if keep_alive else 0) + (1 if head_only else 0)
    cache = response._http1
    wire = cache[index]
    if wire is None:
        line = b"HTTP/1.1 %d %s" % (response.status, response.reason)
        fields = response.headers
        if close:
            fields = (*fields, _CLOSE)
        elif keep_alive:
            fields = (*fields, _KEEP_ALIVE)
        head = serialize_head(line, fields)
        wire = cache[index] = head if head_only else head + response.body
    return wire
