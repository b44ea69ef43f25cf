"""Header rules of a proxy (RFC 9110 §7.6, RFC 9112, RFC 7239), as pure functions over bytes.

Owns: which headers are hop-by-hop, how a request head is re-serialised for a server and a
response head for a client, and the forwarding headers. Never parses raw bytes (httptools does
that) and never touches a socket. Headers travel as a list of ``(name, value)`` byte pairs
exactly as the parser gave them; names are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

Header = tuple[bytes, bytes]

# Hop-by-hop: meaningful for one connection only, never forwarded (RFC 9110 §7.6.1).
# Content-Length is here too because Portico re-frames every body itself.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)


def header_value(headers: Sequence[Header], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def connection_tokens(headers: Sequence[Header]) -> frozenset[bytes]:
    """Lower-cased tokens of every Connection header: "close", "keep-alive", and header names
    that the sender declared hop-by-hop for this connection."""
    tokens: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def end_to_end(
    headers: Iterable[Header], also_drop: frozenset[bytes] = frozenset()
) -> list[Header]:
    """The headers a proxy may forward: all but hop-by-hop ones and those named in `also_drop`
    (lower-case; the Connection-listed names and any configured hidden headers)."""
    out: list[Header] = []
    for header in headers:
        low = header[0].lower()
        if low not in HOP_BY_HOP and low not in also_drop:
            out.append(header)
    return out


class BodyKind(Enum):
    """How a message body is delimited on the wire (RFC 9112 §6.3)."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # until the connection closes: responses only


def response_body_kind(
    request_method: bytes, status: int, headers: Sequence[Header]
) -> tuple[BodyKind, int]:
    """The framing of a response body and, for LENGTH, its length.

    Order follows RFC 9112 §6.3: HEAD and 1xx/204/304 have no body whatever the headers say;
    then a final `chunked` transfer coding; then Content-Length; else the body runs to close.
    The parser has already refused a Content-Length beside a Transfer-Encoding and bad lengths.
    """
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return BodyKind.NONE, 0
    length: int | None = None
    chunked = False
    for key, value in headers:
        low = key.lower()
        if low == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            if not chunked:
                return BodyKind.CLOSE, 0
        elif low == b"content-length":
            length = int(value)
    if chunked:
        return BodyKind.CHUNKED, 0
    if length is not None:
        return BodyKind.LENGTH, length
    return BodyKind.CLOSE, 0


def format_forwarded_for(client_ip: str) -> bytes:
    """A `for=` node of RFC 7239: IPv6 addresses quoted and bracketed."""
    if ":" in client_ip:
        return b'for="[' + client_ip.encode("ascii") + b']"'
    return b"for=" + client_ip.encode("ascii")


def forwarding_headers(
    headers: Sequence[Header],
    client_ip: str,
    proto: bytes,
    host: bytes | None,
    *,
    x_forwarded: bool,
    forwarded: bool,
) -> list[Header]:
    """Headers that tell a server who the client is.

    X-Forwarded-For appends this hop to any list the client sent (what NGINX's
    $proxy_add_x_forwarded_for and HAProxy's `option forwardfor` do); X-Forwarded-Proto and
    X-Forwarded-Host state what this proxy saw, replacing anything the client claimed.
    """
    out: list[Header] = []
    ip = client_ip.encode("ascii")
    if x_forwarded:
        prior = [value for key, value in headers if key.lower() == b"x-forwarded-for"]
        out.append((b"X-Forwarded-For", b", ".join([*prior, ip])))
        out.append((b"X-Forwarded-Proto", proto))
        if host is not None:
            out.append((b"X-Forwarded-Host", host))
    if forwarded:
        node = format_forwarded_for(client_ip) + b";proto=" + proto
        if host is not None and _is_token(host):
            node += b";host=" + host
        elif host is not None:
            node += b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        prior = [value for key, value in headers if key.lower() == b"forwarded"]
        out.append((b"Forwarded", b", ".join([*prior, node])))
    return out


_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
FORWARDING_NAMES: frozenset[bytes] = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


def _is_token(value: bytes) -> bool:
    return bool(value) and all(c in _TOKEN_CHARS for c in value)


def serialize_head(first_line: bytes, headers: Iterable[Header]) -> bytes:
    """`first_line` CRLF, each header as `name: value` CRLF, then the empty line."""
    parts = [first_line]
    for key, value in headers:
        parts.append(key + b": " + value)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)
