"""A stored response made into the answer to one request. *pure*

Owns what a reused response carries (RFC 9111 §4: Age on every reuse, §5.1; this cache's
Cache-Status member, RFC 9211), how a client's own preconditions are answered from the cache
(RFC 9111 §4.3.2 with RFC 9110 §13.1.2/§13.1.3: If-None-Match, If-Modified-Since), and a
single byte range out of a stored whole response (RFC 9110 §14: Range, If-Range, 206, 416).
A HEAD gets a GET's answer: the edge leaves the body out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from portico.cache.directives import etag_matches, field_values, first_value, http_date
from portico.cache.disk import DiskBody
from portico.cache.policy import StoredHead
from portico.http.headers import Header
from portico.http.local import LocalResponse, local_response

__all__ = ["answer", "byte_range"]

# What a 304 made from a stored 200 keeps (RFC 9110 §15.4.5): the fields a 200 would have
# sent that describe validators and caching, not the content.
_304_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def not_modified(head: StoredHead, request_headers: Sequence[Header]) -> bool:
    """Whether the client's preconditions say its copy is current (RFC 9110 §13.2.2 steps 3-4:
    If-None-Match by weak comparison; else If-Modified-Since against Last-Modified). Only a 200
    stored response is compared."""
    if head.status != 200:
        return False
    conditions = field_values(request_headers, b"if-none-match")
    if conditions:
        etag = head.field(b"etag")
        return any(etag_matches(c, etag) for c in conditions)
    since = http_date(first_value(request_headers, b"if-modified-since"))
    if since is None:
        return False
    modified = http_date(head.field(b"last-modified"))
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
        etag = head.field(b"etag")
        return etag is not None and not etag.startswith(b"W/") and etag == value
    stamp = http_date(value)
    modified = http_date(head.field(b"last-modified"))
    return stamp is not None and modified is not None and stamp == modified


def answer(
    head: StoredHead,
    body: bytes | DiskBody,
    method: bytes,
    request_headers: Sequence[Header],
    age: float,
    status_member: bytes | None,
    extra: Sequence[Header] = (),
) -> LocalResponse:
    """The response to send for a stored `head`/`body` whose current age is `age`: a 304 when
    the client's preconditions hold, a 206/416 for a usable Range on a stored 200, else the
    stored response; with Age, `extra` fields and this cache's Cache-Status member. A body on
    disk is streamed from its file (OSError when the file went away)."""
    added: list[Header] = [(b"Age", b"%d" % int(age)), *extra]
    if status_member is not None:
        added.append((b"Cache-Status", status_member))
    fields = tuple(h for h in head.headers if h[0].lower() != b"age")  # ours replaces it
    if not_modified(head, request_headers):
        kept = [h for h in fields if h[0].lower() in _304_FIELDS]
        return local_response(304, [*kept, *added])
    status = head.status
    if status == 200 and method == b"GET":
        wanted = first_value(request_headers, b"range")
        if_range = first_value(request_headers, b"if-range")
        if wanted is not None and (if_range is None or _if_range_holds(if_range, head)):
            size = len(body) if isinstance(body, bytes) else body.length
            span = byte_range(wanted, size)
            if span is False:
                no_type = [h for h in fields if h[0].lower() != b"content-type"]
                return local_response(
                    416, [*no_type, (b"Content-Range", b"bytes */%d" % size), *added]
                )
            if isinstance(span, tuple):
                first, last = span
                rng = (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size))
                part = (
                    body[first : last + 1]
                    if isinstance(body, bytes)
                    else body.open(first, last + 1 - first)
                )
                return local_response(206, [*fields, rng, *added], part)
    if status in (204, 304):
        return local_response(status, [*fields, *added])
    return local_response(
        status, [*fields, *added], body if isinstance(body, bytes) else body.open()
    )
