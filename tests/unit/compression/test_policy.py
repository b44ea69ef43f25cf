"""Which responses are compressed and how their heads change (portico.compression.policy)."""

from __future__ import annotations

import pytest

from portico.compression.policy import (
    CompressionSettings,
    Decision,
    TypeSet,
    decide,
    encoded_headers,
    merge_vary,
)
from portico.http.headers import Header

SETTINGS = CompressionSettings()
ACCEPT: list[Header] = [(b"Accept-Encoding", b"gzip, br, zstd")]
JSON: list[Header] = [(b"Content-Type", b"application/json")]


def check(
    status: int = 200,
    response: list[Header] | None = None,
    length: int | None = 5000,
    method: bytes = b"GET",
    request: list[Header] | None = None,
    settings: CompressionSettings = SETTINGS,
) -> Decision:
    return decide(
        settings,
        method,
        ACCEPT if request is None else request,
        status,
        JSON if response is None else response,
        length,
    )


def test_a_json_response_is_compressed_with_the_first_configured_coding() -> None:
    assert check() == Decision("zstd", True)


@pytest.mark.parametrize("status", [100, 101, 204, 206, 304])
def test_statuses_without_a_body_to_compress(status: int) -> None:
    assert check(status) == Decision(None, False)


def test_head_is_not_compressed_but_varies() -> None:
    assert check(method=b"HEAD") == Decision(None, True)


def test_a_range_request_is_not_compressed() -> None:
    assert check(request=[*ACCEPT, (b"Range", b"bytes=0-10")]).coding is None


def test_an_encoded_response_is_left_alone() -> None:
    assert check(response=[*JSON, (b"Content-Encoding", b"gzip")]) == Decision(None, False)
    assert check(response=[*JSON, (b"Content-Encoding", b"identity")]).coding == "zstd"


def test_no_transform_is_obeyed() -> None:
    response = [*JSON, (b"Cache-Control", b"public, No-Transform")]
    assert check(response=response) == Decision(None, False)


def test_short_known_bodies_are_sent_as_they_are_unknown_lengths_are_compressed() -> None:
    assert check(length=1023) == Decision(None, False)
    assert check(length=1024).coding == "zstd"
    assert check(length=None).coding == "zstd"


@pytest.mark.parametrize(
    "ctype",
    [
        b"text/html; charset=utf-8",
        b"TEXT/CSS",
        b"application/json",
        b"application/ld+json",
        b"application/javascript",
        b"text/javascript",
        b"application/xml",
        b"application/atom+xml",
        b"image/svg+xml",
        b"application/wasm",
    ],
)
def test_default_types_are_compressed(ctype: bytes) -> None:
    assert check(response=[(b"Content-Type", ctype)]).coding == "zstd"


@pytest.mark.parametrize(
    "ctype",
    [b"image/png", b"image/jpeg", b"video/mp4", b"audio/ogg", b"application/octet-stream", b""],
)
def test_other_types_and_media_never(ctype: bytes) -> None:
    assert check(response=[(b"Content-Type", ctype)]) == Decision(None, False)
    assert check(response=[]) == Decision(None, False)


def test_a_configured_type_list_replaces_the_default_but_never_takes_media() -> None:
    settings = CompressionSettings(types=TypeSet.of(["application/x-custom", "image/*"]))
    assert check(response=[(b"Content-Type", b"application/x-custom")], settings=settings).coding
    assert check(settings=settings).coding is None
    assert check(response=[(b"Content-Type", b"image/png")], settings=settings).coding is None


def test_identity_client_gets_none_but_the_response_varies() -> None:
    assert check(request=[]) == Decision(None, True)
    assert check(request=[(b"Accept-Encoding", b"gzip;q=0, identity")]) == Decision(None, True)


def test_event_streams_and_unbuffered_responses_stream() -> None:
    sse = [(b"Content-Type", b"text/event-stream")]
    assert check(response=sse, length=None) == Decision("zstd", True, True)
    assert check(response=[*JSON, (b"X-Accel-Buffering", b"no")]).streaming


def test_encoded_headers_set_coding_weaken_etag_drop_length_merge_vary() -> None:
    head: list[Header] = [
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"5000"),
        (b"ETag", b'"abc"'),
        (b"Vary", b"Cookie"),
    ]
    assert encoded_headers(head, "br") == [
        (b"Content-Type", b"text/html"),
        (b"ETag", b'W/"abc"'),
        (b"Vary", b"Cookie, Accept-Encoding"),
        (b"Content-Encoding", b"br"),
    ]
    weak: list[Header] = [(b"etag", b'W/"x"'), (b"vary", b"accept-encoding")]
    assert encoded_headers(weak, "gzip") == [*weak, (b"Content-Encoding", b"gzip")]


def test_merge_vary() -> None:
    assert merge_vary([]) == [(b"Vary", b"Accept-Encoding")]
    assert merge_vary([(b"Vary", b"*")]) == [(b"Vary", b"*")]
    assert merge_vary([(b"Vary", b"")]) == [(b"Vary", b"Accept-Encoding")]
    two: list[Header] = [(b"Vary", b"Cookie"), (b"Vary", b"ACCEPT-ENCODING")]
    assert merge_vary(two) == two
