"""Cache-Control and the other fields a cache decides on, parsed strictly. *pure*

Owns the reading of `Cache-Control` (RFC 9111 §5.2, list syntax of RFC 9110 §5.6.1), of the
delta-seconds values in it (§1.2.2), of `Age` (§5.1), of HTTP dates (RFC 9110 §5.6.7, for
`Date`, `Expires` and `Last-Modified`), of `Vary` and of entity tags (RFC 9110 §8.8.3). No
maintained library parses Cache-Control as RFC 9111 asks (quoted arguments, duplicates,
unknown extensions that hold what looks like a directive), so the tokenizer is here; dates go
through `email.utils`, which reads the three HTTP date formats. Never touches a socket.
"""

from __future__ import annotations

import calendar
import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from portico.http.headers import Header

__all__ = [
    "CacheControl",
    "age_value",
    "delta_seconds",
    "etag_matches",
    "field_values",
    "first_value",
    "http_date",
    "list_tokens",
    "parse_cache_control",
]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA: Final = 2**31
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_OWS: Final = b" \t"

# A directive present with an argument that cannot be read (`max-age=3600a`): stands as
# "present, value unusable", which the freshness rules treat as stale (RFC 9111 §4.2.1).
INVALID: Final = -1


def field_values(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Every line of the field `name` (lower-case), in order."""
    return [value for key, value in headers if key.lower() == name]


def first_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The first line of the field `name` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _split(value: bytes) -> list[tuple[bytes, bytes | None]] | None:
    """One Cache-Control line as (lower-case name, argument) pairs (RFC 9110 §5.6.1-§5.6.4):
    a quoted-string argument is unquoted, a comma inside quotes separates nothing. None when the
    line does not follow the grammar from some point on (the pairs read so far are lost too:
    a line that cannot be read is not trusted in part)."""
    out: list[tuple[bytes, bytes | None]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i] in _OWS or value[i] == 44):  # empty list elements, OWS
            i += 1
        if i >= n:
            break
        start = i
        while i < n and value[i] in _TCHAR:
            i += 1
        if i == start:
            return None
        name = value[start:i].lower()
        arg: bytes | None = None
        if i < n and value[i] == 61:  # "=": no whitespace on either side (token "=" value)
            i += 1
            if i < n and value[i] == 34:  # quoted-string
                i += 1
                chars = bytearray()
                while i < n and value[i] != 34:
                    if value[i] == 92:  # quoted-pair
                        i += 1
                        if i >= n:
                            return None
                    chars.append(value[i])
                    i += 1
                if i >= n:
                    return None  # unterminated
                i += 1
                arg = bytes(chars)
            else:
                start = i
                while i < n and value[i] in _TCHAR:
                    i += 1
                if i == start:
                    return None
                arg = value[start:i]
        while i < n and value[i] in _OWS:
            i += 1
        if i < n and value[i] != 44:
            return None
        out.append((name, arg))
    return out


def delta_seconds(arg: bytes | None) -> int:
    """A delta-seconds argument (RFC 9111 §1.2.2): digits only (leading zeros allowed), capped
    at 2^31; INVALID for anything else (a sign, a fraction, letters, no argument)."""
    if not arg or not arg.isdigit():
        return INVALID
    return min(int(arg), MAX_DELTA)


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The directives of one message. Seconds are None when absent and `INVALID` when present
    but unreadable. `no_cache_fields`/`private_fields` hold the qualified forms' field names
    (RFC 9111 §5.2.2.4, §5.2.2.7); an unqualified `no-cache`/`private` sets the flag."""

    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None  # request: MAX_DELTA for a bare max-stale (any staleness)
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    no_cache: bool = False
    no_cache_fields: tuple[bytes, ...] = ()
    no_store: bool = False
    private: bool = False
    private_fields: tuple[bytes, ...] = ()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    only_if_cached: bool = False
    no_transform: bool = False
    immutable: bool = False
    invalid: bool = False  # a line could not be read (RFC 9111 §4.2.1: treat as stale)


EMPTY: Final = CacheControl()


def _names(arg: bytes) -> tuple[bytes, ...]:
    return tuple(t for t in (part.strip().lower() for part in arg.split(b",")) if t)


def parse_cache_control(values: Sequence[bytes]) -> CacheControl:
    """All Cache-Control lines of a message, as one list (RFC 9110 §5.3).

    Names are case-insensitive (RFC 9111 §5.2). An argument may be quoted (`max-age="60"`,
    §5.2: recipients SHOULD accept it); a directive name inside a quoted argument of another
    directive is not a directive. A directive repeated with another value keeps its first
    occurrence (§4.2.1 allows the first or treating the response as stale). Unknown directives
    are ignored (§5.2.3).
    """
    if not values:
        return EMPTY
    seconds: dict[bytes, int] = {}
    flags: set[bytes] = set()
    no_cache_fields: list[bytes] = []
    private_fields: list[bytes] = []
    invalid = False
    for line in values:
        pairs = _split(line)
        if pairs is None:
            invalid = True
            continue
        for name, arg in pairs:
            if name in _SECONDS:
                if name not in seconds:
                    if name == b"max-stale" and arg is None:
                        seconds[name] = MAX_DELTA
                    else:
                        seconds[name] = delta_seconds(arg)
            elif name == b"no-cache" and arg is not None:
                no_cache_fields.extend(_names(arg))
            elif name == b"private" and arg is not None:
                private_fields.extend(_names(arg))
            else:
                flags.add(name)
    get = seconds.get
    return CacheControl(
        max_age=get(b"max-age"),
        s_maxage=get(b"s-maxage"),
        max_stale=get(b"max-stale"),
        min_fresh=get(b"min-fresh"),
        stale_while_revalidate=get(b"stale-while-revalidate"),
        stale_if_error=get(b"stale-if-error"),
        no_cache=b"no-cache" in flags,
        no_cache_fields=tuple(no_cache_fields),
        no_store=b"no-store" in flags,
        private=b"private" in flags,
        private_fields=tuple(private_fields),
        public=b"public" in flags,
        must_revalidate=b"must-revalidate" in flags,
        proxy_revalidate=b"proxy-revalidate" in flags,
        must_understand=b"must-understand" in flags,
        only_if_cached=b"only-if-cached" in flags,
        no_transform=b"no-transform" in flags,
        immutable=b"immutable" in flags,
        invalid=invalid,
    )


_SECONDS: Final = frozenset(
    {
        b"max-age",
        b"s-maxage",
        b"max-stale",
        b"min-fresh",
        b"stale-while-revalidate",
        b"stale-if-error",
    }
)


def age_value(headers: Iterable[Header]) -> int:
    """The Age field in seconds (RFC 9111 §5.1): the first member of the first line; 0 when
    absent or invalid (a cache SHOULD ignore an invalid Age)."""
    value = first_value(headers, b"age")
    if value is None:
        return 0
    seconds = delta_seconds(value.split(b",", 1)[0].strip())
    return 0 if seconds == INVALID else seconds


def http_date(value: bytes | None) -> float | None:
    """An HTTP date (RFC 9110 §5.6.7: IMF-fixdate, rfc850-date or asctime-date) as a POSIX
    time; None when absent or unreadable. Read leniently as §5.6.7 encourages, but a zone other
    than GMT/UTC or none is refused (HTTP dates are always GMT)."""
    if not value:
        return None
    try:
        parts = email.utils.parsedate_tz(value.decode("latin-1"))
    except (ValueError, IndexError, TypeError):
        return None
    if parts is None or parts[9] not in (0, None):
        return None
    try:
        return float(calendar.timegm((*parts[:6], 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def list_tokens(values: Iterable[bytes]) -> list[bytes]:
    """The members of a comma-separated list field, lower-case, empty ones dropped (Vary,
    Connection)."""
    return [t for value in values for t in (p.strip().lower() for p in value.split(b",")) if t]


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag[:2] == b"W/" else tag


def etag_matches(condition: bytes, etag: bytes | None) -> bool:
    """Whether an If-None-Match value matches `etag` by weak comparison (RFC 9110 §13.1.2,
    §8.8.3.2): `*` matches any current representation."""
    if condition.strip() == b"*":
        return True
    if etag is None:
        return False
    want = _opaque(etag)
    return any(_opaque(part) == want for part in condition.split(b","))
