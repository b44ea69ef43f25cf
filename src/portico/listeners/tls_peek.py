"""The server name a TLS client asks for, read from its ClientHello without terminating TLS
(SNI passthrough routing), and the routing of names to pools. *pure*

Owns: parsing the first bytes of a connection as TLS records carrying a ClientHello (RFC 8446
§4.1.2, RFC 5246 §6.2.1 and §7.4.1.2) up to its server_name extension (RFC 6066 §3), when those
bytes arrive split across reads and the ClientHello across several records; and `SniRouter`,
exact names before one-label wildcards. Never consumes or changes the bytes: the caller keeps
them and forwards them untouched to the server it picks. Never decrypts or answers anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, Generic, TypeVar

RECORD_HEADER: Final = 5
MAX_RECORD: Final = 1 << 14  # TLSPlaintext.length limit (RFC 8446 §5.1)
MAX_HELLO: Final = 32 * 1024  # the largest ClientHello message accepted (real ones: < 2 KiB)

_HANDSHAKE: Final = 22  # ContentType.handshake
_CLIENT_HELLO: Final = 1  # HandshakeType.client_hello
_SERVER_NAME: Final = 0  # ExtensionType.server_name
_HOST_NAME: Final = 0  # NameType.host_name
# a DNS host name as SNI carries it: ASCII letters, digits, "-", "_" (seen in the wild), dots
_HOST: Final = re.compile(rb"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


class SniState(Enum):
    NEED_MORE = "need more bytes"
    MALFORMED = "not TLS, or not a valid ClientHello"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class SniResult:
    """What `peek_sni` found. COMPLETE: `server_name` is the requested name in lower case, or
    None when the ClientHello has no server_name extension. MALFORMED: `reason` says why."""

    state: SniState
    server_name: str | None = None
    reason: str = ""


NEED_MORE: Final = SniResult(SniState.NEED_MORE)


class _Malformed(Exception):
    pass


def peek_sni(buffer: bytes) -> SniResult:
    """Read the ClientHello at the start of `buffer` (every byte received so far) and return
    the server name it asks for. NEED_MORE until the ClientHello is whole; MALFORMED as soon as
    the bytes cannot be one (not TLS, a record of another type first, a bad length, a
    ClientHello over MAX_HELLO bytes)."""
    try:
        message = _handshake_message(buffer)
        if message is None:
            return NEED_MORE
        return SniResult(SniState.COMPLETE, _server_name(message))
    except _Malformed as exc:
        return SniResult(SniState.MALFORMED, reason=str(exc))


def _handshake_message(buffer: bytes) -> memoryview | None:
    """The ClientHello body reassembled from the records at the start of `buffer`, or None if
    more bytes are needed. Handshake messages may be fragmented over records (RFC 8446 §5.1)."""
    view = memoryview(buffer)
    fragments: list[memoryview] = []
    have = 0
    wanted = -1  # the whole handshake message's size, once its 4-byte header is in
    offset = 0
    while True:
        if len(view) - offset < RECORD_HEADER:
            _check_partial_header(view[offset:])
            return None
        content_type, major, minor, length = (
            view[offset],
            view[offset + 1],
            view[offset + 2],
            int.from_bytes(view[offset + 3 : offset + 5], "big"),
        )
        if content_type != _HANDSHAKE:
            if offset == 0:
                raise _Malformed("not a TLS handshake record")
            raise _Malformed("a record of another type interrupts the ClientHello")
        if major != 3 or minor > 4:
            raise _Malformed(f"record version {major}.{minor} is not TLS")
        if length == 0 or length > MAX_RECORD:
            raise _Malformed(f"record length {length} out of range")
        body_start = offset + RECORD_HEADER
        available = min(length, len(view) - body_start)
        fragments.append(view[body_start : body_start + available])
        have += available
        if wanted < 0 and have:
            first = b"".join(fragments)[:4]
            if first[0] != _CLIENT_HELLO:
                raise _Malformed("the first handshake message is not a ClientHello")
            if len(first) == 4:
                wanted = 4 + int.from_bytes(first[1:4], "big")
                if wanted > MAX_HELLO:
                    raise _Malformed(f"ClientHello of {wanted} bytes is over {MAX_HELLO}")
        if 0 <= wanted <= have:
            break
        if available < length:
            return None  # this record is not whole yet
        offset = body_start + length
    return memoryview(b"".join(fragments))[4:wanted]


def _check_partial_header(head: memoryview) -> None:
    """Reject a record header already wrong in its first bytes, without waiting for all 5."""
    if len(head) >= 1 and head[0] != _HANDSHAKE:
        raise _Malformed("not a TLS handshake record")
    if len(head) >= 2 and head[1] != 3:
        raise _Malformed(f"record version {head[1]}.x is not TLS")
    if len(head) >= 3 and head[2] > 4:
        raise _Malformed(f"record version 3.{head[2]} is not TLS")


class _Reader:
    """Bounds-checked reads from one ClientHello; any overrun is malformed."""

    __slots__ = ("data", "pos")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise _Malformed("a length runs past the end of the ClientHello")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> memoryview:
        """A length-prefixed vector (`size` bytes of length)."""
        return self.take(self.number(size))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _server_name(message: memoryview) -> str | None:
    hello = _Reader(message)
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1)) > 32:
        raise _Malformed("session id longer than 32 bytes")
    suites = hello.vector(2)
    if not suites or len(suites) % 2:
        raise _Malformed("bad cipher_suites length")
    if not hello.vector(1):
        raise _Malformed("no compression methods")
    if not hello.left:
        return None  # no extensions at all (allowed before TLS 1.3)
    extensions = _Reader(hello.vector(2))
    if hello.left:
        raise _Malformed("bytes after the extensions")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            raise _Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(data: memoryview) -> str | None:
    """The host_name in a server_name extension (RFC 6066 §3)."""
    outer = _Reader(data)
    names = _Reader(outer.vector(2))
    if outer.left:
        raise _Malformed("bytes after the server name list")
    if not names.left:
        # an empty extension is what a server sends back; from a client it names nothing
        return None
    host: str | None = None
    types: set[int] = set()
    while names.left:
        name_type = names.number(1)
        value = bytes(names.vector(2))
        if name_type in types:
            raise _Malformed("two server names of one type")
        types.add(name_type)
        if name_type == _HOST_NAME:
            if len(value) > 255 or not _HOST.fullmatch(value):
                raise _Malformed("server name is not a host name")
            host = value.decode("ascii").lower().rstrip(".")
    return host


# -- routing ----------------------------------------------------------------------------------

T = TypeVar("T")


class SniRouter(Generic[T]):
    """Maps server names to targets (pool names, or pools). A pattern is an exact name
    (``a.example.com``) or a wildcard of exactly one label (``*.example.com`` matches
    ``a.example.com``, not ``example.com`` nor ``a.b.example.com``); an exact name beats a
    wildcard. Names compare case-insensitively."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, routes: Mapping[str, T]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # keyed by the suffix after "*."
        for pattern, target in routes.items():
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                self._wildcard[pattern[2:]] = target
            else:
                self._exact[pattern] = target

    def route(self, server_name: str | None) -> T | None:
        """The target for `server_name`; None when nothing matches (or there is no name)."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        target = self._exact.get(name)
        if target is not None:
            return target
        label, dot, rest = name.partition(".")
        if not dot or not label:
            return None
        return self._wildcard.get(rest)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard)
