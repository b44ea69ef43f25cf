"""What a shared cache may store, for how long, and when it may reuse it (RFC 9111). *pure*

Owns the decisions of a shared cache as plain functions over header lists and times given as
arguments: whether a response may be stored (§3), which of its fields are kept (§3.1), its
freshness lifetime (§4.2.1, heuristics §4.2.2), its current age (§4.2.3), whether a stored
response may answer a request as it is, must be validated first, or must not be used (§4,
§4.2.4, RFC 5861), the conditional request that validates it (§4.3.1), how a 304 updates it
(§3.2, §4.3.4) and which URIs an unsafe request invalidates (§4.4). Never touches a socket, a
clock or a store: the shell (`portico.cache.runtime`) does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as _derived
from enum import Enum
from typing import Final

from portico.cache.directives import (
    EMPTY,
    INVALID,
    CacheControl,
    age_value,
    field_values,
    first_value,
    http_date,
    list_tokens,
    parse_cache_control,
)
from portico.http.headers import HOP_BY_HOP, Header

__all__ = [
    "HEURISTIC_STATUSES",
    "Reuse",
    "StoredHead",
    "current_age",
    "freshness_lifetime",
    "invalidated_uris",
    "may_store",
    "reuse",
    "stored_fields",
    "updated_by_304",
    "validation_headers",
]

# RFC 9110 §15.1: final status codes that are heuristically cacheable.
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Status codes this cache understands (RFC 9111 §3: "the response status code is final and,
# if must-understand is present, understood"); 206 is understood but never stored: the cache
# keeps only whole responses.
UNDERSTOOD: Final = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451, 501}
)
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
# Fields never stored (RFC 9111 §3.1): hop-by-hop, framing, and the proxy-specific ones a
# cache MAY drop. Cache-Status is per response. Age is kept for the age calculation (§4.2.3)
# and replaced on every reuse.
_NOT_STORED: Final = HOP_BY_HOP | frozenset(
    {
        b"transfer-encoding",
        b"content-length",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"proxy-authorization",
        b"cache-status",
    }
)


@dataclass(frozen=True, slots=True)
class StoredHead:
    """A stored response without its body: what every decision reads. Times are POSIX
    seconds: when the request that got it was sent and when its head came back (§4.2.3)."""

    status: int
    headers: tuple[Header, ...]
    request_time: float
    response_time: float
    cc: CacheControl
    vary: tuple[bytes, ...] = ()  # the selecting field names, lower-case (§4.1)
    selected: tuple[bytes | None, ...] = ()  # the request's normalised values for them
    # read from the fields once, not on every reuse (derived: not compared)
    initial_age: float = _derived(
        default=0.0, init=False, compare=False
    )  # §4.2.3 corrected_initial_age
    served: tuple[Header, ...] = _derived(
        default=(), init=False, compare=False
    )  # the fields but Age
    etag: bytes | None = _derived(default=None, init=False, compare=False)
    last_modified: bytes | None = _derived(default=None, init=False, compare=False)
    # the last freshness_lifetime computed, with its heuristic settings: [fraction, max, value]
    lifetime_memo: list[float] = _derived(default_factory=list, init=False, compare=False)

    def __post_init__(self) -> None:
        headers = self.headers
        date = http_date(first_value(headers, b"date"))
        apparent_age = max(0.0, self.response_time - date) if date is not None else 0.0
        response_delay = self.response_time - self.request_time
        corrected_age_value = age_value(headers) + response_delay
        setattr_ = object.__setattr__  # a frozen dataclass: derived fields are set once here
        setattr_(self, "initial_age", max(apparent_age, corrected_age_value))
        setattr_(self, "served", tuple(h for h in headers if h[0].lower() != b"age"))
        setattr_(self, "etag", first_value(headers, b"etag"))
        setattr_(self, "last_modified", first_value(headers, b"last-modified"))

    @classmethod
    def make(
        cls,
        status: int,
        headers: Sequence[Header],
        request_time: float,
        response_time: float,
        request_headers: Sequence[Header] = (),
    ) -> StoredHead:
        """The head to store for a response to a request with `request_headers`."""
        fields = tuple(headers)
        vary = tuple(list_tokens(field_values(fields, b"vary")))
        selected = tuple(selecting_value(request_headers, name) for name in vary)
        cc = parse_cache_control(field_values(fields, b"cache-control"))
        return cls(status, fields, request_time, response_time, cc, vary, selected)

    def field(self, name: bytes) -> bytes | None:
        return first_value(self.headers, name)


def selecting_value(headers: Sequence[Header], name: bytes) -> bytes | None:
    """A request's value for a Vary-selecting field, normalised as §4.1 allows: lines combined
    into one list, whitespace around members dropped (members keep their order and case:
    a change of either may select another representation); None when absent."""
    values = field_values(headers, name)
    if not values:
        return None
    return b",".join(p.strip() for v in values for p in v.split(b",") if p.strip())


def may_store(
    method: bytes,
    status: int,
    headers: Sequence[Header],
    request_cc: CacheControl,
    authorized: bool,
) -> bool:
    """Whether a shared cache may store this response to a GET (RFC 9111 §3).

    The method is GET (the only one this cache keeps); the status is final (206 and 304 are
    never stored: only whole responses are); with must-understand, a status this cache
    understands (then no-store is ignored, §5.2.2.3); neither the request nor the response says
    no-store; the response is not private (a shared
    cache, §5.2.2.7); a request with Authorization only when the response allows it (§3.5:
    public, s-maxage or must-revalidate); and the response has explicit freshness, a validator,
    public, or a heuristically cacheable status (§3, last bullet, read with §4.2.2). Vary: *
    is stored by nobody here: it can never be reused (§4.1).
    """
    if method != b"GET" or status < 200 or status in (206, 304):
        return False
    cc = parse_cache_control(field_values(headers, b"cache-control"))
    if cc.must_understand:
        # §5.2.2.3: store only a status this cache understands, and then no-store yields
        if status not in UNDERSTOOD:
            return False
    elif cc.no_store:
        return False
    if request_cc.no_store or cc.private:
        return False
    if b"*" in list_tokens(field_values(headers, b"vary")):
        return False
    if authorized and not (cc.public or cc.s_maxage is not None or cc.must_revalidate):
        return False
    if cc.public or cc.max_age is not None or cc.s_maxage is not None:
        return True
    if first_value(headers, b"expires") is not None:
        return True
    return status in HEURISTIC_STATUSES


def stored_fields(headers: Sequence[Header]) -> tuple[Header, ...]:
    """The fields of a response kept in the cache (§3.1): without hop-by-hop ones, those its
    Connection names, framing, and those a qualified private=/no-cache= names (a shared
    cache MUST NOT store them, §5.2.2.7; §5.2.2.4 would allow them only after validation)."""
    drop = set(_NOT_STORED)
    drop.update(list_tokens(field_values(headers, b"connection")))
    cc = parse_cache_control(field_values(headers, b"cache-control"))
    drop.update(cc.private_fields)
    drop.update(cc.no_cache_fields)
    return tuple(h for h in headers if h[0].lower() not in drop)


def freshness_lifetime(head: StoredHead, heuristic_fraction: float, heuristic_max: float) -> float:
    """How long `head` stays fresh, in seconds (RFC 9111 §4.2.1): s-maxage (a shared cache),
    then max-age, then Expires minus Date (an invalid Expires, or several, means already
    expired, §5.3), then a heuristic (§4.2.2): `heuristic_fraction` of the time since
    Last-Modified, at most `heuristic_max`, only for a heuristically cacheable status or a public
    response. An unreadable directive counts as stale (§4.2.1)."""
    memo = head.lifetime_memo
    if memo and memo[0] == heuristic_fraction and memo[1] == heuristic_max:
        return memo[2]
    value = _lifetime(head, heuristic_fraction, heuristic_max)
    memo[:] = (heuristic_fraction, heuristic_max, value)
    return value


def _lifetime(head: StoredHead, heuristic_fraction: float, heuristic_max: float) -> float:
    cc = head.cc
    if cc.invalid:
        return 0.0
    if cc.s_maxage is not None:
        return 0.0 if cc.s_maxage == INVALID else float(cc.s_maxage)
    if cc.max_age is not None:
        return 0.0 if cc.max_age == INVALID else float(cc.max_age)
    expires_values = field_values(head.headers, b"expires")
    if expires_values:
        expires = http_date(expires_values[0]) if len(expires_values) == 1 else None
        if expires is None:
            return 0.0
        date = http_date(head.field(b"date"))
        return max(0.0, expires - (date if date is not None else head.response_time))
    if head.status in HEURISTIC_STATUSES or cc.public:
        modified = http_date(head.field(b"last-modified"))
        if modified is not None:
            date = http_date(head.field(b"date"))
            since = (date if date is not None else head.response_time) - modified
            if since > 0:
                return min(since * heuristic_fraction, heuristic_max)
    return 0.0


def current_age(head: StoredHead, now: float) -> float:
    """The age of `head` at `now` (RFC 9111 §4.2.3): corrected_initial_age (the larger of the
    apparent age, response_time - Date, and Age + response_delay; computed once, when the head
    was stored) plus the resident time."""
    return head.initial_age + (now - head.response_time)


class Reuse(Enum):
    """What a stored response may do for a request."""

    FRESH = 1  # serve it as it is
    STALE_OK = 2  # serve it stale: the client allows it (max-stale)
    STALE_REVALIDATE = 3  # serve it stale and refresh it in the background (RFC 5861 §3)
    VALIDATE = 4  # ask the origin first (conditional request); may serve stale on error
    MISS = 5  # it cannot answer this request at all (another Vary selection)


def varies_match(head: StoredHead, request_headers: Sequence[Header]) -> bool:
    """Whether the request selects the same representation as the one `head` answered
    (RFC 9111 §4.1): each selecting field has the same normalised value, absent in both or
    present in both."""
    if not head.vary:
        return True
    if b"*" in head.vary:
        return False
    return all(
        selecting_value(request_headers, name) == value
        for name, value in zip(head.vary, head.selected, strict=True)
    )


def reuse(
    head: StoredHead,
    request_cc: CacheControl,
    now: float,
    lifetime: float,
    pragma_no_cache: bool = False,
) -> Reuse:
    """Whether `head` (its selecting fields already matched) may answer a request now
    (RFC 9111 §4, §4.2.4, §5.2.1; RFC 5861).

    Validation is needed when the response says no-cache (§5.2.2.4), when the request says
    no-cache (§5.2.1.4; Pragma: no-cache stands for it without Cache-Control, §5.4), when the
    response is older than the request's max-age (§5.2.1.1) or has less than its min-fresh left
    (§5.2.1.3), or when it is stale. A stale response is served only when nothing forbids it
    (must-revalidate, proxy-revalidate, s-maxage, no-cache: §4.2.4) and the request's
    max-stale covers it (§5.2.1.2) or stale-while-revalidate does (RFC 5861 §3).
    """
    cc = head.cc
    if cc.no_cache or request_cc.no_cache or (pragma_no_cache and request_cc is EMPTY):
        return Reuse.VALIDATE
    age = current_age(head, now)
    wanted_age = request_cc.max_age
    if wanted_age is not None and (wanted_age == INVALID or age > wanted_age):
        return Reuse.VALIDATE
    min_fresh = request_cc.min_fresh
    if min_fresh is not None and (min_fresh == INVALID or lifetime - age < min_fresh):
        return Reuse.VALIDATE
    if age < lifetime:
        return Reuse.FRESH
    if cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None:
        return Reuse.VALIDATE
    staleness = age - lifetime
    max_stale = request_cc.max_stale
    if max_stale is not None and max_stale != INVALID and staleness <= max_stale:
        return Reuse.STALE_OK
    swr = cc.stale_while_revalidate
    if swr is not None and swr != INVALID and staleness <= swr:
        return Reuse.STALE_REVALIDATE
    return Reuse.VALIDATE


def may_serve_stale_on_error(
    head: StoredHead,
    request_cc: CacheControl,
    now: float,
    lifetime: float,
    disconnected: float = 0.0,
) -> bool:
    """Whether a stale `head` may answer when validating it failed (an error status or no
    answer): stale-if-error from the response or the request covers its staleness (RFC 5861
    §4), or the origin cannot be reached and the staleness is within `disconnected` seconds
    (RFC 9111 §4.2.4: a disconnected cache may serve stale; not when the client asked for a
    validated or young response); and no directive forbids serving it stale (§4.2.4)."""
    cc = head.cc
    if cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None or cc.no_cache:
        return False
    staleness = current_age(head, now) - lifetime
    for window in (request_cc.stale_if_error, cc.stale_if_error):
        if window is not None and window != INVALID and staleness <= window:
            return True
    client_wants_fresh = (
        request_cc.no_cache or request_cc.max_age is not None or request_cc.min_fresh is not None
    )
    return disconnected > 0 and staleness <= disconnected and not client_wants_fresh


# Conditional fields of the client's: replaced by the cache's own when it validates (§4.3.1).
_CONDITIONALS: Final = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)


def validation_headers(request_headers: Sequence[Header], head: StoredHead) -> list[Header] | None:
    """The request fields that validate `head` (RFC 9111 §4.3.1): the client's own without
    its preconditions, with If-None-Match carrying the stored entity tag and If-Modified-Since
    the stored Last-Modified. None when `head` has no validator (then it is fetched anew)."""
    etag = head.field(b"etag")
    modified = head.field(b"last-modified")
    if etag is None and modified is None:
        return None
    out = [h for h in request_headers if h[0].lower() not in _CONDITIONALS]
    if etag is not None:
        out.append((b"If-None-Match", etag))
    if modified is not None:
        out.append((b"If-Modified-Since", modified))
    return out


def updated_by_304(
    head: StoredHead, headers: Sequence[Header], request_time: float, response_time: float
) -> StoredHead | None:
    """`head` refreshed by a 304 that validated it (RFC 9111 §4.3.4, §3.2): each field of the
    304 replaces the stored lines of that name, except those never stored and Content-Length;
    the times become the 304's. None when the 304 names another
    representation (a strong ETag that differs, §4.3.4), which must then not be updated."""
    new_etag = first_value(headers, b"etag")
    old_etag = head.field(b"etag")
    if new_etag is not None and old_etag is not None:
        weak = new_etag.startswith(b"W/") or old_etag.startswith(b"W/")
        if not weak and new_etag != old_etag:
            return None
    # §3.2: every field but those never stored (§3.1) and Content-Length; this cache changes
    # no body (no decoding, no ranges stored), so no other stored field depends on it
    incoming = list(stored_fields(headers))
    names = {h[0].lower() for h in incoming}
    kept = [h for h in head.headers if h[0].lower() not in names]
    fields = tuple(kept + incoming)
    return replace(
        head,
        headers=fields,
        request_time=request_time,
        response_time=response_time,
        cc=parse_cache_control(field_values(fields, b"cache-control")),
    )


def freshens(head: StoredHead, size: int, headers: Sequence[Header]) -> bool:
    """Whether a HEAD response's `headers` may freshen the stored GET `head` whose body has
    `size` bytes (RFC 9111 §4.3.5): a validator, and its validators and Content-Length, where
    both have them, are the stored ones."""
    for name in (b"etag", b"last-modified"):
        new = first_value(headers, name)
        old = head.field(name)
        if new is not None and old is not None and new != old:
            return False
    length = first_value(headers, b"content-length")
    if length is not None and length.strip() != b"%d" % size:
        return False
    return first_value(headers, b"etag") is not None or (
        first_value(headers, b"last-modified") is not None
    )


def _origin(uri: bytes) -> bytes:
    scheme, _, rest = uri.partition(b"://")
    return scheme.lower() + b"://" + rest.split(b"/", 1)[0].lower()


def absolute_uri(reference: bytes, base: bytes) -> bytes:
    """A Location or Content-Location value resolved against the request URI `base`
    (absolute, `scheme://authority/path?query`)."""
    if b"://" in reference.split(b"?", 1)[0]:
        return reference
    if reference.startswith(b"//"):
        return base.split(b"//", 1)[0] + reference
    if reference.startswith(b"/"):
        return _origin(base) + reference
    directory = base.split(b"?", 1)[0].rsplit(b"/", 1)[0]
    return directory + b"/" + reference


def invalidated_uris(
    method: bytes, status: int, request_uri: bytes, headers: Iterable[Header]
) -> list[bytes]:
    """The URIs whose stored responses an unsafe request's answer invalidates (RFC 9111
    §4.4): on a non-error status (2xx, 3xx), the target and the Location and Content-Location
    that are of the same origin. Empty for a safe method or an error."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [request_uri]
    origin = _origin(request_uri)
    fields = list(headers)
    for name in (b"location", b"content-location"):
        value = first_value(fields, name)
        if value:
            uri = absolute_uri(value.strip(), request_uri)
            if _origin(uri) == origin and uri not in out:
                out.append(uri)
    return out
