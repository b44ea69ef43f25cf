"""Cache-Control and field parsing (RFC 9111 §5.2, §1.2.2, §5.1; RFC 9110 §5.6)."""

from __future__ import annotations

import pytest

from portico.cache.directives import (
    INVALID,
    MAX_DELTA,
    age_value,
    etag_matches,
    http_date,
    parse_cache_control,
)


def cc(*lines: str):  # type: ignore[no-untyped-def]
    return parse_cache_control([line.encode() for line in lines])


def test_names_are_case_insensitive() -> None:
    """§5.2: directive names are case-insensitive."""
    parsed = cc("No-Store, MAX-AGE=5")
    assert parsed.no_store
    assert parsed.max_age == 5


def test_quoted_argument_is_accepted() -> None:
    """§5.2: a quoted-string argument is read like the token form."""
    assert cc('max-age="3600"').max_age == 3600


def test_directive_inside_quotes_is_not_a_directive() -> None:
    """RFC 9110 §5.6.4: a quoted string is one value; a comma inside it separates nothing."""
    parsed = cc('extension="max-age=3600, no-store", max-age=1')
    assert parsed.max_age == 1
    assert not parsed.no_store
    assert cc('max-age=1, extension="max-age=3600"').max_age == 1


@pytest.mark.parametrize(
    "value",
    [
        "max-age='3600'",
        "max-age=3600a",
        "max-age=a3600",
        "max-age=-1",
        "max-age=3600.5",
        "max-age=",
    ],
)
def test_bad_delta_seconds_is_invalid(value: str) -> None:
    """§1.2.2: delta-seconds is digits only; anything else is unusable (treated as stale)."""
    assert cc(value).max_age == INVALID or cc(value).invalid


@pytest.mark.parametrize("value", ["max-age =3600", "max-age= 3600"])
def test_whitespace_around_equals_breaks_the_line(value: str) -> None:
    """RFC 9110 §5.6.2: no whitespace around "="; the line is not trusted."""
    parsed = cc(value)
    assert parsed.invalid
    assert parsed.max_age is None


def test_leading_zeros_and_huge_values() -> None:
    """§1.2.2: leading zeros are digits; a value too large is taken as 2^31."""
    assert cc("max-age=003600").max_age == 3600
    assert cc("max-age=99999999999999999999").max_age == MAX_DELTA


def test_duplicates_keep_the_first() -> None:
    """§4.2.1: with several values for one directive the first occurrence may be used."""
    assert cc("max-age=1800, max-age=1").max_age == 1800
    assert cc("max-age=1", "max-age=1800").max_age == 1


def test_lines_combine_and_empty_members_are_skipped() -> None:
    """RFC 9110 §5.3, §5.6.1: several lines are one list; empty members are ignored."""
    parsed = cc(",, public ,", "s-maxage=10")
    assert parsed.public
    assert parsed.s_maxage == 10


def test_qualified_forms() -> None:
    """§5.2.2.4, §5.2.2.7: no-cache and private with field names are not the bare forms."""
    parsed = cc('private="Set-Cookie, X-Foo", no-cache="x-bar"')
    assert not parsed.private
    assert not parsed.no_cache
    assert parsed.private_fields == (b"set-cookie", b"x-foo")
    assert parsed.no_cache_fields == (b"x-bar",)


def test_request_directives() -> None:
    """§5.2.1: max-stale without a value accepts any staleness; the others carry seconds."""
    parsed = cc("max-stale, min-fresh=5, only-if-cached, no-cache")
    assert parsed.max_stale == MAX_DELTA
    assert parsed.min_fresh == 5
    assert parsed.only_if_cached
    assert parsed.no_cache
    assert cc("max-stale=7").max_stale == 7


def test_age() -> None:
    """§5.1: first member of a list; an invalid value is ignored."""
    assert age_value([(b"Age", b"30")]) == 30
    assert age_value([(b"Age", b"30, 60")]) == 30
    assert age_value([(b"Age", b"-5")]) == 0
    assert age_value([(b"Age", b"1.5")]) == 0
    assert age_value([]) == 0


def test_http_dates() -> None:
    """RFC 9110 §5.6.7: the three formats; "0" and other zones are not dates."""
    t = 784111777.0
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == t
    assert http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == t
    assert http_date(b"Sun Nov  6 08:49:37 1994") == t
    assert http_date(b"0") is None
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 +0100") is None
    assert http_date(None) is None


def test_etag_weak_comparison() -> None:
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison; * matches."""
    assert etag_matches(b'"a", W/"b"', b'"b"')
    assert etag_matches(b"*", b'"x"')
    assert not etag_matches(b'"a"', b'"b"')
    assert not etag_matches(b'"a"', None)
    assert etag_matches(b"*", None)  # any current representation, with or without a tag
