"""Storing, freshness, age, reuse and validation decisions (RFC 9111, RFC 5861)."""

from __future__ import annotations

import pytest

from portico.cache.directives import EMPTY, parse_cache_control
from portico.cache.policy import (
    Reuse,
    StoredHead,
    current_age,
    freshens,
    freshness_lifetime,
    invalidated_uris,
    may_serve_stale_on_error,
    may_store,
    reuse,
    stored_fields,
    updated_by_304,
    validation_headers,
    varies_match,
)
from portico.http.headers import Header

T0 = 1_700_000_000.0  # a request time; dates below are relative to it
DATE0 = b"Tue, 14 Nov 2023 22:13:20 GMT"  # T0 as an HTTP date


def date(offset: float) -> bytes:
    from email.utils import formatdate

    return formatdate(T0 + offset, usegmt=True).encode()


def head(
    *fields: tuple[str, str], status: int = 200, request: list[Header] | None = None
) -> StoredHead:
    headers = [(n.encode(), v.encode()) for n, v in fields]
    return StoredHead.make(status, headers, T0, T0, request or [])


def req(value: str = "") -> object:
    return parse_cache_control([value.encode()] if value else [])


def store(
    status: int = 200, *fields: tuple[str, str], request_cc: str = "", auth: bool = False
) -> bool:
    headers = [(n.encode(), v.encode()) for n, v in fields]
    return may_store(b"GET", status, headers, req(request_cc), auth)  # type: ignore[arg-type]


# -- §3 storing -------------------------------------------------------------------------------


def test_store_only_get_and_final_whole_responses() -> None:
    """§3: a method the cache understands (GET here), a final status; 206/304 not stored."""
    assert store(200)
    headers = [(b"Cache-Control", b"max-age=60")]
    assert not may_store(b"POST", 200, headers, EMPTY, False)
    assert not store(206, ("Cache-Control", "max-age=60"))
    assert not store(304, ("Cache-Control", "max-age=60"))
    assert not store(100)


def test_store_by_default_or_with_explicit_freshness() -> None:
    """§3 last bullet: heuristically cacheable status (RFC 9110 §15.1), or explicit freshness
    or public for any other status."""
    assert store(404)
    assert store(301)
    assert not store(302)
    assert store(302, ("Cache-Control", "max-age=60"))
    assert store(500, ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"))
    assert store(307, ("Cache-Control", "public"))
    assert not store(503)


def test_no_store_and_private() -> None:
    """§5.2.2.5, §5.2.1.5, §5.2.2.7: no-store in either message; private in a shared cache."""
    assert not store(200, ("Cache-Control", "no-store, max-age=60"))
    assert not store(200, ("Cache-Control", "max-age=60"), request_cc="no-store")
    assert not store(200, ("Cache-Control", "private, max-age=60"))
    assert store(200, ("Cache-Control", 'private="set-cookie", max-age=60'))


def test_must_understand_overrides_no_store_for_understood_status() -> None:
    """§5.2.2.3: with must-understand, no-store yields for an understood status only."""
    assert store(200, ("Cache-Control", "must-understand, no-store, max-age=60"))
    assert not store(299, ("Cache-Control", "must-understand, no-store, max-age=60"))


def test_authorization_needs_permission() -> None:
    """§3.5: a request with Authorization is stored only with public, s-maxage or
    must-revalidate."""
    assert not store(200, ("Cache-Control", "max-age=60"), auth=True)
    assert store(200, ("Cache-Control", "public"), auth=True)
    assert store(200, ("Cache-Control", "s-maxage=60"), auth=True)
    assert store(200, ("Cache-Control", "must-revalidate, max-age=60"), auth=True)


def test_vary_star_never_stored() -> None:
    """§4.1: Vary: * always fails to match, so it is not kept."""
    assert not store(200, ("Cache-Control", "max-age=60"), ("Vary", "Accept, *"))


def test_stored_fields() -> None:
    """§3.1: hop-by-hop, Connection-named and framing fields not stored (Age is: §4.2.3);
    private="f" fields of a shared cache neither (§5.2.2.7)."""
    fields = [
        (b"Connection", b"x-hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"3"),
        (b"Age", b"5"),
        (b"Cache-Control", b'private="set-cookie", max-age=9'),
        (b"Set-Cookie", b"a=b"),
        (b"ETag", b'"e"'),
    ]
    assert [n for n, _ in stored_fields(fields)] == [b"Age", b"Cache-Control", b"ETag"]


# -- §4.2.1 freshness lifetime --------------------------------------------------------------


def lifetime(h: StoredHead) -> float:
    return freshness_lifetime(h, 0.1, 86400.0)


def test_lifetime_precedence() -> None:
    """§4.2.1: s-maxage (shared) over max-age over Expires."""
    assert lifetime(head(("Cache-Control", "max-age=10, s-maxage=20"))) == 20
    assert lifetime(head(("Cache-Control", "max-age=10"), ("Expires", date(100).decode()))) == 10
    assert lifetime(head(("Date", date(0).decode()), ("Expires", date(100).decode()))) == 100


def test_invalid_expires_is_stale() -> None:
    """§5.3: an invalid Expires, "0" especially, is a time in the past; so are two of them."""
    assert lifetime(head(("Expires", "0"))) == 0
    assert lifetime(head(("Expires", date(100).decode()), ("Expires", date(200).decode()))) == 0


def test_invalid_max_age_is_stale() -> None:
    """§4.2.1: an invalid directive value makes the response stale."""
    assert lifetime(head(("Cache-Control", "max-age=10a"))) == 0
    assert lifetime(head(("Cache-Control", "max-age =10"))) == 0


def test_heuristic_only_where_allowed() -> None:
    """§4.2.2: a fraction of the time since Last-Modified, capped, for a heuristically
    cacheable status (or public) without explicit freshness."""
    lm = ("Last-Modified", date(-1000).decode())
    now = ("Date", date(0).decode())
    assert lifetime(head(lm, now)) == pytest.approx(100)
    assert lifetime(head(lm, now, status=302)) == 0
    assert lifetime(head(lm, now, ("Cache-Control", "public"), status=302)) == pytest.approx(100)
    assert freshness_lifetime(head(lm, now), 0.5, 60.0) == 60
    assert lifetime(head(now)) == 0


# -- §4.2.3 age ------------------------------------------------------------------------------


def test_age_calculation() -> None:
    """§4.2.3: the larger of apparent age and Age + response delay, plus resident time."""
    h = StoredHead.make(200, [(b"Date", date(-10)), (b"Age", b"3")], T0, T0 + 2, [])
    # apparent = (T0+2) - (T0-10) = 12; corrected age value = 3 + 2 = 5; initial = 12
    assert current_age(h, T0 + 2) == pytest.approx(12)
    assert current_age(h, T0 + 7) == pytest.approx(17)
    h = StoredHead.make(200, [(b"Date", date(0)), (b"Age", b"100")], T0, T0 + 1, [])
    assert current_age(h, T0 + 1) == pytest.approx(101)  # Age dominates a recent Date
    h = StoredHead.make(200, [(b"Date", date(60))], T0, T0, [])
    assert current_age(h, T0) == 0  # a Date in the future: apparent age is not negative


# -- §4 reuse --------------------------------------------------------------------------------


def decide(h: StoredHead, request_cc: str = "", at: float = 0, pragma: bool = False) -> Reuse:
    return reuse(h, req(request_cc), T0 + at, lifetime(h), pragma)  # type: ignore[arg-type]


def test_fresh_then_stale() -> None:
    """§4.2: fresh while age < lifetime; stale is validated (§4.2.4)."""
    h = head(("Cache-Control", "max-age=10"))
    assert decide(h, at=5) is Reuse.FRESH
    assert decide(h, at=11) is Reuse.VALIDATE


def test_no_cache_validates() -> None:
    """§5.2.2.4 response no-cache, §5.2.1.4 request no-cache, §5.4 Pragma without CC."""
    assert decide(head(("Cache-Control", "no-cache, max-age=60"))) is Reuse.VALIDATE
    fresh = head(("Cache-Control", "max-age=60"))
    assert decide(fresh, "no-cache") is Reuse.VALIDATE
    assert decide(fresh, pragma=True) is Reuse.VALIDATE
    assert decide(fresh, "max-stale=1", pragma=True) is Reuse.FRESH


def test_request_max_age_min_fresh_max_stale() -> None:
    """§5.2.1.1-§5.2.1.3."""
    h = head(("Cache-Control", "max-age=60"))
    assert decide(h, "max-age=5", at=10) is Reuse.VALIDATE
    assert decide(h, "max-age=20", at=10) is Reuse.FRESH
    assert decide(h, "min-fresh=55", at=10) is Reuse.VALIDATE
    assert decide(h, "min-fresh=40", at=10) is Reuse.FRESH
    assert decide(h, "max-stale=30", at=80) is Reuse.STALE_OK
    assert decide(h, "max-stale=10", at=80) is Reuse.VALIDATE
    assert decide(h, "max-stale", at=10_000) is Reuse.STALE_OK


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_never_served_stale_when_forbidden(directive: str) -> None:
    """§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: stale only after validation."""
    h = head(
        (
            "Cache-Control",
            f"max-age=60, {directive}, stale-while-revalidate=100, stale-if-error=100",
        )
    )
    assert decide(h, "max-stale", at=70) is Reuse.VALIDATE
    assert not may_serve_stale_on_error(h, EMPTY, T0 + 70, lifetime(h))


def test_stale_while_revalidate() -> None:
    """RFC 5861 §3: within the window, serve stale and revalidate in the background."""
    h = head(("Cache-Control", "max-age=10, stale-while-revalidate=20"))
    assert decide(h, at=20) is Reuse.STALE_REVALIDATE
    assert decide(h, at=40) is Reuse.VALIDATE


def test_stale_if_error() -> None:
    """RFC 5861 §4: from the response or the request, within the window only."""
    h = head(("Cache-Control", "max-age=10, stale-if-error=20"))
    assert may_serve_stale_on_error(h, EMPTY, T0 + 25, lifetime(h))
    assert not may_serve_stale_on_error(h, EMPTY, T0 + 40, lifetime(h))
    plain = head(("Cache-Control", "max-age=10"))
    assert not may_serve_stale_on_error(plain, EMPTY, T0 + 25, lifetime(plain))
    assert may_serve_stale_on_error(plain, req("stale-if-error=60"), T0 + 25, lifetime(plain))  # type: ignore[arg-type]


def test_stale_when_the_origin_is_unreachable() -> None:
    """RFC 9111 §4.2.4: a disconnected cache may serve stale within its own window, never
    against must-revalidate, proxy-revalidate, s-maxage or no-cache, nor when the client asks
    for validation (no-cache, max-age, min-fresh)."""
    plain = head(("Cache-Control", "max-age=10"))
    life = lifetime(plain)
    assert may_serve_stale_on_error(plain, EMPTY, T0 + 100, life, 3600)
    assert not may_serve_stale_on_error(plain, EMPTY, T0 + 100, life, 0)  # off
    assert not may_serve_stale_on_error(plain, EMPTY, T0 + 5000, life, 3600)  # too stale
    for directive in ("must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"):
        h = head(("Cache-Control", f"max-age=10, {directive}"))
        assert not may_serve_stale_on_error(h, EMPTY, T0 + 100, lifetime(h), 3600), directive
    for asked in ("no-cache", "max-age=0", "min-fresh=1"):
        client = req(asked)
        assert not may_serve_stale_on_error(plain, client, T0 + 100, life, 3600), asked  # type: ignore[arg-type]


def test_vary_matching_normalises() -> None:
    """§4.1: selecting fields compared after combining lines and dropping list whitespace;
    absent matches only absent."""
    h = head(("Vary", "Accept-Language"), request=[(b"Accept-Language", b"en, fr")])
    assert varies_match(h, [(b"accept-language", b"en,fr")])
    assert varies_match(h, [(b"Accept-Language", b"en"), (b"Accept-Language", b" fr")])
    assert not varies_match(h, [(b"Accept-Language", b"fr, en")])
    assert not varies_match(h, [])
    bare = head(("Vary", "X-Foo"))
    assert varies_match(bare, [])
    assert not varies_match(bare, [(b"X-Foo", b"")])  # present but empty is not absent
    assert not varies_match(bare, [(b"X-Foo", b"1")])


# -- §4.3 validation -------------------------------------------------------------------------


def test_validation_request() -> None:
    """§4.3.1: If-None-Match with the stored ETag, If-Modified-Since with Last-Modified; the
    client's own preconditions are not passed on."""
    h = head(("ETag", '"v1"'), ("Last-Modified", DATE0.decode()))
    out = validation_headers([(b"Host", b"a"), (b"If-None-Match", b'"zz"')], h)
    assert out == [(b"Host", b"a"), (b"If-None-Match", b'"v1"'), (b"If-Modified-Since", DATE0)]
    assert validation_headers([], head(("Cache-Control", "max-age=1"))) is None


def test_304_updates_stored_headers() -> None:
    """§3.2, §4.3.4: the 304's fields replace the stored ones, except framing (Content-Length);
    the times are the 304's."""
    h = head(
        ("Cache-Control", "max-age=1"),
        ("ETag", '"v1"'),
        ("Content-Type", "text/plain"),
        ("X-Old", "1"),
        ("X-Kept", "k"),
    )
    new = updated_by_304(
        h,
        [
            (b"Cache-Control", b"max-age=100"),
            (b"ETag", b'"v1"'),
            (b"X-Old", b"2"),
            (b"Content-Length", b"0"),
            (b"Content-Type", b"text/html"),
        ],
        T0 + 50,
        T0 + 51,
    )
    assert new is not None
    fields = dict(new.headers)
    assert fields[b"X-Old"] == b"2"
    assert fields[b"X-Kept"] == b"k"
    assert fields[b"Content-Type"] == b"text/html"
    assert b"Content-Length" not in fields
    assert new.cc.max_age == 100
    assert new.response_time == T0 + 51


def test_304_with_another_strong_etag_updates_nothing() -> None:
    """§4.3.4: a strong validator that differs selects no stored response."""
    h = head(("ETag", '"v1"'))
    assert updated_by_304(h, [(b"ETag", b'"v2"')], T0, T0) is None
    assert updated_by_304(h, [(b"ETag", b'W/"v1"')], T0, T0) is not None


def test_head_freshening() -> None:
    """§4.3.5: a HEAD response freshens a stored GET only with the same validators and
    length, and only when it has a validator."""
    h = head(("ETag", '"v1"'), ("Last-Modified", DATE0.decode()))
    assert freshens(h, 5, [(b"ETag", b'"v1"')])
    assert freshens(h, 5, [(b"ETag", b'"v1"'), (b"Content-Length", b"5")])
    assert not freshens(h, 5, [(b"ETag", b'"v1"'), (b"Content-Length", b"6")])
    assert not freshens(h, 5, [(b"ETag", b'"v2"')])
    assert not freshens(h, 5, [(b"Cache-Control", b"max-age=5")])


# -- §4.4 invalidation -----------------------------------------------------------------------


def test_invalidation() -> None:
    """§4.4: unsafe method + non-error status: the target, and same-origin Location and
    Content-Location."""
    uri = b"http://a.example/x/y"
    fields = [(b"Location", b"/z"), (b"Content-Location", b"http://other.example/q")]
    assert invalidated_uris(b"POST", 201, uri, fields) == [uri, b"http://a.example/z"]
    assert invalidated_uris(b"DELETE", 204, uri, [(b"Location", b"w")]) == [
        uri,
        b"http://a.example/x/w",
    ]
    assert invalidated_uris(b"POST", 500, uri, fields) == []
    assert invalidated_uris(b"GET", 200, uri, fields) == []
