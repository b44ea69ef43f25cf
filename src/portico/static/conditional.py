"""Validators, conditional requests and byte ranges of a static file (RFC 9110 §8.8, §13,
§14). *pure*

Owns the strong ETag and Last-Modified of a file, `preconditions` (what If-Match,
If-Unmodified-Since, If-None-Match and If-Modified-Since make of a request: go on, 304 or
412, evaluated in the RFC's order) and `byte_ranges` (Range and If-Range: the whole file, the
ranges to send, or unsatisfiable). Never opens a file; takes the file's size and times as
numbers.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from email.utils import formatdate, parsedate_to_datetime
from typing import Final

from portico.http.headers import Header

__all__ = [
    "MAX_RANGES",
    "UNSATISFIABLE",
    "WHOLE",
    "byte_ranges",
    "http_date",
    "make_etag",
    "preconditions",
]

MAX_RANGES: Final = 16  # more ranges in one request (or overlapping ones) get the whole file


def make_etag(size: int, mtime_ns: int) -> bytes:
    """A strong ETag from the file's size and modification time (as NGINX's), quoted."""
    return b'"%x-%x"' % (mtime_ns // 1000, size)


@functools.lru_cache(maxsize=1024)
def http_date(seconds: int) -> bytes:
    """An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of whole seconds (files' times:
    remembered, a site has few distinct ones)."""
    return formatdate(seconds, usegmt=True).encode("ascii")


def _parse_date(value: bytes) -> int | None:
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp())


def _etags(value: bytes) -> list[bytes] | None:
    """The entity-tags of an If-Match / If-None-Match value; None for `*`."""
    value = value.strip()
    if value == b"*":
        return None
    tags: list[bytes] = []
    for part in value.split(b","):
        part = part.strip()
        if part:
            tags.append(part)
    return tags


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def preconditions(method: bytes, headers: Iterable[Header], etag: bytes, mtime: int) -> int:
    """What the request's preconditions say, for a file with `etag` (strong) and modified at
    `mtime` (whole seconds): 0 to go on, 412 (Precondition Failed) or 304 (Not Modified,
    GET and HEAD only). RFC 9110 §13.2.2's order: If-Match, else If-Unmodified-Since; then
    If-None-Match, else If-Modified-Since. A date that does not parse is ignored."""
    if_match = if_none = None
    unmodified = modified = None
    for name, value in headers:
        low = name.lower()
        if low == b"if-match":
            if_match = value if if_match is None else if_match + b"," + value
        elif low == b"if-none-match":
            if_none = value if if_none is None else if_none + b"," + value
        elif low == b"if-unmodified-since":
            unmodified = value
        elif low == b"if-modified-since":
            modified = value
    if if_match is not None:
        tags = _etags(if_match)
        # strong comparison: a weak tag never matches
        if tags is not None and etag not in tags:
            return 412
    elif unmodified is not None:
        since = _parse_date(unmodified)
        if since is not None and mtime > since:
            return 412
    safe = method == b"GET" or method == b"HEAD"
    if if_none is not None:
        tags = _etags(if_none)
        # weak comparison: W/"x" matches "x"
        if tags is None or _opaque(etag) in (_opaque(tag) for tag in tags):
            return 304 if safe else 412
    elif modified is not None and safe:
        since = _parse_date(modified)
        if since is not None and mtime <= since:
            return 304
    return 0


WHOLE: Final[list[tuple[int, int]]] = []  # no range applies: the whole representation
UNSATISFIABLE: Final[list[tuple[int, int]]] = [(-1, -1)]


def _if_range_holds(value: bytes, etag: bytes, mtime: int) -> bool:
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return value == etag  # strong comparison; a weak tag never holds
    return _parse_date(value) == mtime


def byte_ranges(
    method: bytes, headers: Iterable[Header], size: int, etag: bytes, mtime: int
) -> list[tuple[int, int]]:
    """The byte ranges to send, as (first, last) inclusive pairs in the order asked;
    `WHOLE` when the whole file is to be sent (no Range, not GET, a malformed one, an
    If-Range that does not hold, too many or overlapping ranges), `UNSATISFIABLE` when none
    of them overlaps the file (416)."""
    if method != b"GET":
        return WHOLE
    spec: bytes | None = None
    if_range: bytes | None = None
    for name, value in headers:
        low = name.lower()
        if low == b"range":
            if spec is not None:
                return WHOLE  # two Range fields: ambiguous, ignored
            spec = value
        elif low == b"if-range":
            if_range = value
    if spec is None:
        return WHOLE
    if if_range is not None and not _if_range_holds(if_range, etag, mtime):
        return WHOLE
    unit, _, sets = spec.strip().partition(b"=")
    if unit.strip().lower() != b"bytes" or not sets.strip():
        return WHOLE
    ranges: list[tuple[int, int]] = []
    parsed = 0
    for part in sets.split(b","):
        part = part.strip()
        if not part:
            continue
        parsed += 1
        first_text, dash, last_text = part.partition(b"-")
        first_text, last_text = first_text.strip(), last_text.strip()
        if not dash or not (first_text or last_text):
            return WHOLE
        if not (first_text.isdigit() or not first_text) or not (
            last_text.isdigit() or not last_text
        ):
            return WHOLE
        if not first_text:  # suffix: the last N bytes
            count = int(last_text)
            if count == 0:
                continue
            first, last = max(size - count, 0), size - 1
        else:
            first = int(first_text)
            if last_text and int(last_text) < first:
                return WHOLE  # RFC 9110 §14.1.1: invalid, the field is ignored
            if first >= size:
                continue
            last = min(int(last_text), size - 1) if last_text else size - 1
        if size == 0:
            continue
        ranges.append((first, last))
    if not parsed:
        return WHOLE
    if not ranges:
        return UNSATISFIABLE
    if len(ranges) > MAX_RANGES:
        return WHOLE
    ordered = sorted(ranges)
    for (_, last), (first, _) in itertools.pairwise(ordered):
        if first <= last:
            return WHOLE  # overlapping ranges: a known amplification trick
    return ranges
