"""Portico's own answers as values: a status, end-to-end header fields and a body. *pure*

Owns `LocalResponse` (what a filter, a route or the proxy answers with instead of a server:
a 429, a redirect, a fixed page, a 502) and `local_response`, the one way to make one, and
`http1_bytes`, the value as HTTP/1.1 bytes. A value says nothing about the connection: no
Connection, Transfer-Encoding or Keep-Alive field. Only a protocol edge turns it into what goes
on the wire: the HTTP/1.1 client connection (`http1_bytes`, adding Connection: close when it
closes, leaving the body out for HEAD) or the HTTP/2 stream (`portico.http.h2.response_fields`).
Never touches a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

from portico.http.headers import Header, serialize_head

__all__ = ["LocalResponse", "http1_bytes", "local_response"]

# Reason phrases by status, looked up without an Enum call (a redirect is built per request).
_PHRASES: Final[dict[int, bytes]] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# Fields that belong to one connection's framing: the edges add them, a value never carries one.
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_CLOSE: Final[Header] = (b"Connection", b"close")


def _wire_cache() -> list[bytes | None]:
    return [None, None, None, None]


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """A whole response Portico gives itself. Make one with `local_response`.

    `headers` are end-to-end fields in the order they are sent, Content-Length included (the
    length of `body`; also for a HEAD request, whose answer leaves the body out). `reason` is
    the status's registered phrase (empty for an unregistered status).
    """

    status: int
    headers: tuple[Header, ...]
    body: bytes
    reason: bytes
    # HTTP/1.1 bytes, built by the edge on first use (keep-alive / close x with / without the
    # body): a prebuilt answer (a 502, a fixed page) is serialised once, not per request
    _http1: list[bytes | None] = field(
        default_factory=_wire_cache, init=False, repr=False, compare=False
    )


def local_response(status: int, headers: Iterable[Header] = (), body: bytes = b"") -> LocalResponse:
    """The answer with `status`, `headers` and `body`.

    Content-Length is appended when `headers` has none, except for 204 and 304, which have no
    body. Raises ValueError for a status outside 200-599, a body on a 204 or 304, a
    connection-specific field, or a CR, LF or NUL in a field (it could end the head early).
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
    if status == 204 or status == 304:
        if body:
            raise ValueError(f"a {status} response has no body")
    elif not has_length:
        fields = (*fields, (b"Content-Length", b"%d" % len(body)))
    return LocalResponse(status, fields, body, _PHRASES.get(status, b""))


def http1_bytes(response: LocalResponse, close: bool = False, head_only: bool = False) -> bytes:
    """`response` as HTTP/1.1 bytes: with Connection: close last when `close`, without the body
    when `head_only` (the answer to a HEAD request). Built once per variant and value."""
    index = (2 if close else 0) + (1 if head_only else 0)
    cache = response._http1
    wire = cache[index]
    if wire is None:
        line = b"HTTP/1.1 %d %s" % (response.status, response.reason)
        head = serialize_head(line, (*response.headers, _CLOSE) if close else response.headers)
        wire = cache[index] = head if head_only else head + response.body
    return wire
