"""A stored response made into the answer to one request. *pure*

Owns what a reused response carries (RFC 9111 §4: Age on every reuse, §5.1; this cache's
Cache-Status member, RFC 9211), how a client's own preconditions are answered from the cache
(RFC 9111 §4.3.2 with RFC 9110 §13.1.2/§13.1.3: If-None-Match, If-Modified-Since), and a
single byte range out of a stored whole response (RFC 9110 §14: Range, If-Range, 206, 416).
A HEAD gets a GET's answer: the edge leaves the body out.

Hot path: a hit is built from the stored fields as they are (validated when they came from
the server, connection fields removed when stored), with no per-field check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from portico.cache.directives import etag_matches, http_date
from portico.cache.disk import DiskBody
from portico.cache.policy import StoredHead
from portico.http.headers import Header
from portico.http.local import BodySource, LocalResponse, reason_phrase

__all__ = ["REQUEST_FIELDS", "answer", "byte_range", "request_fields"]

# The request fields the cache reads, by lower-case name.
REQUEST_FIELDS: Final = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"authorization",
        b"range",
        b"if-range",
        b"if-none-match",
        b"if-modified-since",
    }
)
# What a 304 made from a stored 200 keeps (RFC 9110 §15.4.5): the fields a 200 would have
# sent that describe validators and caching, not the content.
_304_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def request_fields(headers: Iterable[Header]) -> dict[bytes, list[bytes]]:
    """The values of the fields the cache reads (`REQUEST_FIELDS`), in one pass."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        low = name.lower()
        if low in REQUEST_FIELDS:
            found = out.get(low)
            if found is None:
                out[low] = [value]
            else:
                found.append(value)
    return out


def _first(fields: Mapping[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = fields.get(name)
    return values[0] if values else None


def not_modified(head: StoredHead, fields: Mapping[bytes, list[bytes]]) -> bool:
    """Whether the client's preconditions say its copy is current (RFC 9110 §13.2.2 steps 3-4:
    If-None-Match by weak comparison; else If-Modified-Since against Last-Modified). Only a 200
    stored response is compared."""
    if head.status != 200:
        return False
    conditions = fields.get(b"if-none-match")
    if conditions:
        etag = head.etag
        return any(etag_matches(c, etag) for c in conditions)
    since = http_date(_first(fields, b"if-modified-since"))
    if since is None:
        return False
    modified = http_date(head.last_modified)
    return modified is not None and modified <= since


def byte_range(value: bytes, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range of a `size`-byte body (RFC 9110 §14.1.2): (first, last) inclusive;
    None when the field cannot be used here (another unit, several ranges, bad syntax: the
    whole body is the answer, §14.2 lets a server ignore Range); False when it is not
    satisfiable (416)."""
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition(b"-")
    if not dash:
        return None
    first_s, last_s = first_s.strip(), last_s.strip()
    if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if first >= size:
        return False
    last = min(int(last_s), size - 1) if last_s else size - 1
    if last < first:
        return None
    return first, last


def _if_range_holds(value: bytes, head: StoredHead) -> bool:
    """If-Range (RFC 9110 §13.1.5): a strong entity tag equal to the stored one, or a date
    equal to the stored Last-Modified."""
    value = value.strip()
    if value.startswith(b'"'):
        etag = head.etag
        return etag is not None and not etag.startswith(b"W/") and etag == value
    stamp = http_date(value)
    modified = http_date(head.last_modified)
    return stamp is not None and modified is not None and stamp == modified


def _response(
    status: int, fields: tuple[Header, ...], body: bytes | BodySource, length: int | None
) -> LocalResponse:
    """The value, with Content-Length (none for 204/304)."""
    if length is not None:
        fields = (*fields, (b"Content-Length", b"%d" % length))
    if isinstance(body, bytes):
        return LocalResponse(status, fields, body, reason_phrase(status))
    return LocalResponse(status, fields, b"", reason_phrase(status), body)


def answer(
    head: StoredHead,
    body: bytes | DiskBody,
    method: bytes,
    fields: Mapping[bytes, list[bytes]],
    age: float,
    status_member: bytes | None,
) -> LocalResponse:
    """The response to send for a stored `head`/`body` whose current age is `age`, to a
    request whose cache-related fields are `fields` (`request_fields`): a 304 when the
    client's preconditions hold, a 206/416 for a usable Range on a stored 200, else the stored
    response; with Age and this cache's Cache-Status member. A body on disk is streamed from
    its file (OSError when the file went away)."""
    added: tuple[Header, ...] = ((b"Age", b"%d" % age),)
    if status_member is not None:
        added = (*added, (b"Cache-Status", status_member))
    served = head.served
    if (b"if-none-match" in fields or b"if-modified-since" in fields) and not_modified(
        head, fields
    ):
        kept = tuple(h for h in served if h[0].lower() in _304_FIELDS)
        return _response(304, kept + added, b"", None)
    status = head.status
    size = len(body) if isinstance(body, bytes) else body.length
    if status == 200 and method == b"GET" and b"range" in fields:
        wanted = fields[b"range"][0]
        if_range = _first(fields, b"if-range")
        if if_range is None or _if_range_holds(if_range, head):
            span = byte_range(wanted, size)
            if span is False:
                no_type = tuple(h for h in served if h[0].lower() != b"content-type")
                rng = (b"Content-Range", b"bytes */%d" % size)
                return _response(416, (*no_type, rng, *added), b"", 0)
            if isinstance(span, tuple):
                first, last = span
                rng = (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size))
                count = last + 1 - first
                part = (
                    body[first : last + 1] if isinstance(body, bytes) else body.open(first, count)
                )
                return _response(206, (*served, rng, *added), part, count)
    if status == 204 or status == 304:
        return _response(status, served + added, b"", None)
    return _response(status, served + added, body if isinstance(body, bytes) else body.open(), size)
