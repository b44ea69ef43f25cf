"""The Cache-Status response field (RFC 9211). *pure*

One list member per cache a response went through; this cache appends its own after those of
the caches before it (the origin's side), as §2 asks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from portico.http.headers import Header

__all__ = ["CACHE_NAME", "cache_status"]

CACHE_NAME: Final = b"portico"


_PLAIN: Final = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # nothing to escape or drop


def _sf_string(value: bytes) -> bytes:
    """A Structured Field string (RFC 8941 §3.3.3): printable ASCII, quotes and backslashes
    escaped; other bytes dropped."""
    if _PLAIN.fullmatch(value):
        return b'"' + value + b'"'
    out = bytearray(b'"')
    for byte in value:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes((byte,))
        elif 0x20 <= byte <= 0x7E:
            out.append(byte)
    out += b'"'
    return bytes(out)


def cache_status(
    *,
    hit: bool,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    key: bytes | None = None,
    detail: str | None = None,
) -> bytes:
    """This cache's member (§2): `hit`, or `fwd=` the reason it went to the origin (`uri-miss`,
    `vary-miss`, `miss`, `stale`, `request`, `method`, `bypass`), `fwd-status`, `stored`,
    `collapsed` (served from another request's answer), `ttl` (seconds of freshness left,
    negative when stale), `key` and `detail`."""
    parts = [CACHE_NAME]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if ttl is not None:
        parts.append(b"ttl=%d" % int(ttl))
    if key is not None:
        parts.append(b"key=" + _sf_string(key))
    if detail is not None:
        parts.append(b"detail=" + detail.encode("ascii"))
    return b"; ".join(parts)


def with_cache_status(headers: Sequence[Header], member: bytes) -> list[Header]:
    """`headers` with this cache's member appended to Cache-Status (a new line: a list field's
    lines join in order, RFC 9110 §5.3)."""
    return [*headers, (b"Cache-Status", member)]
