"""Validators, preconditions and ranges of static files (portico.static.conditional)."""

from __future__ import annotations

import pytest

from portico.static.conditional import (
    MAX_RANGES,
    UNSATISFIABLE,
    WHOLE,
    byte_ranges,
    http_date,
    make_etag,
    preconditions,
)

ETAG = make_etag(1000, 1_700_000_000_123_456_789)
MTIME = 1_700_000_000
LAST_MODIFIED = http_date(MTIME)
EARLIER = http_date(MTIME - 10)
LATER = http_date(MTIME + 10)


def test_validators() -> None:
    assert ETAG.startswith(b'"')
    assert ETAG.endswith(b'"')
    assert b"-3e8" in ETAG
    assert make_etag(1000, 1_700_000_001_000_000_000) != ETAG
    assert LAST_MODIFIED == b"Tue, 14 Nov 2023 22:13:20 GMT"


def pre(*fields: tuple[bytes, bytes], method: bytes = b"GET") -> int:
    return preconditions(method, list(fields), ETAG, MTIME)


def test_if_none_match_gives_304_with_weak_comparison() -> None:
    assert pre((b"If-None-Match", ETAG)) == 304
    assert pre((b"If-None-Match", b"W/" + ETAG)) == 304
    assert pre((b"If-None-Match", b'"other", ' + ETAG)) == 304
    assert pre((b"If-None-Match", b"*")) == 304
    assert pre((b"If-None-Match", b'"other"')) == 0
    assert pre((b"If-None-Match", ETAG), method=b"HEAD") == 304


def test_if_none_match_wins_over_if_modified_since() -> None:
    assert pre((b"If-None-Match", b'"other"'), (b"If-Modified-Since", LATER)) == 0


def test_if_modified_since() -> None:
    assert pre((b"If-Modified-Since", LAST_MODIFIED)) == 304
    assert pre((b"If-Modified-Since", LATER)) == 304
    assert pre((b"If-Modified-Since", EARLIER)) == 0
    assert pre((b"If-Modified-Since", b"yesterday")) == 0
    assert pre((b"If-Modified-Since", LATER), method=b"POST") == 0


def test_if_match_is_strong_and_fails_with_412() -> None:
    assert pre((b"If-Match", ETAG)) == 0
    assert pre((b"If-Match", b"*")) == 0
    assert pre((b"If-Match", b"W/" + ETAG)) == 412
    assert pre((b"If-Match", b'"other"')) == 412


def test_if_unmodified_since() -> None:
    assert pre((b"If-Unmodified-Since", EARLIER)) == 412
    assert pre((b"If-Unmodified-Since", LAST_MODIFIED)) == 0
    assert pre((b"If-Unmodified-Since", b"garbage")) == 0
    # If-Match present: If-Unmodified-Since is not looked at
    assert pre((b"If-Match", ETAG), (b"If-Unmodified-Since", EARLIER)) == 0


def ranges(spec: bytes, size: int = 1000, *extra: tuple[bytes, bytes]) -> list[tuple[int, int]]:
    return byte_ranges(b"GET", [(b"Range", spec), *extra], size, ETAG, MTIME)


def test_single_ranges() -> None:
    assert ranges(b"bytes=0-99") == [(0, 99)]
    assert ranges(b"bytes=900-") == [(900, 999)]
    assert ranges(b"bytes=-100") == [(900, 999)]
    assert ranges(b"bytes=-5000") == [(0, 999)]
    assert ranges(b"bytes=990-5000") == [(990, 999)]
    assert ranges(b"BYTES = 1-1") == [(1, 1)]


def test_several_ranges_keep_their_order() -> None:
    assert ranges(b"bytes=500-599, 0-9, -1") == [(500, 599), (0, 9), (999, 999)]


def test_unsatisfiable() -> None:
    assert ranges(b"bytes=1000-") is UNSATISFIABLE
    assert ranges(b"bytes=5000-6000") is UNSATISFIABLE
    assert ranges(b"bytes=-0") is UNSATISFIABLE
    assert ranges(b"bytes=0-", size=0) is UNSATISFIABLE
    assert ranges(b"bytes=2000-3000, 0-0") == [(0, 0)]  # one satisfiable range is enough


@pytest.mark.parametrize(
    "spec",
    [b"items=0-1", b"bytes=", b"bytes=a-b", b"bytes=5-1", b"bytes=1", b"bytes=-", b"bytes=,"],
)
def test_malformed_ranges_are_ignored(spec: bytes) -> None:
    assert ranges(spec) is WHOLE


def test_overlapping_or_too_many_ranges_get_the_whole_file() -> None:
    assert ranges(b"bytes=0-10, 5-20") is WHOLE
    many = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10 + 1) for i in range(MAX_RANGES + 1))
    assert ranges(many) is WHOLE


def test_only_get_has_ranges() -> None:
    assert byte_ranges(b"HEAD", [(b"Range", b"bytes=0-1")], 10, ETAG, MTIME) is WHOLE


def test_if_range() -> None:
    assert ranges(b"bytes=0-1", 1000, (b"If-Range", ETAG)) == [(0, 1)]
    assert ranges(b"bytes=0-1", 1000, (b"If-Range", b'"old"')) is WHOLE
    assert ranges(b"bytes=0-1", 1000, (b"If-Range", b"W/" + ETAG)) is WHOLE
    assert ranges(b"bytes=0-1", 1000, (b"If-Range", LAST_MODIFIED)) == [(0, 1)]
    assert ranges(b"bytes=0-1", 1000, (b"If-Range", EARLIER)) is WHOLE
