"""Portico's own answers as values (portico.http.local): made by one function that keeps them
well framed and safe, written as HTTP/1.1 bytes only by `http1_bytes` (the edge's)."""

from __future__ import annotations

import dataclasses

import httptools
import pytest

from portico.http.local import LocalResponse, http1_bytes, local_response


def test_content_length_is_added_for_the_body_when_missing() -> None:
    answer = local_response(200, [(b"Content-Type", b"text/plain")], b"hello")
    assert answer.headers == ((b"Content-Type", b"text/plain"), (b"Content-Length", b"5"))
    assert (answer.status, answer.reason, answer.body) == (200, b"OK", b"hello")


def test_a_content_length_given_is_kept_where_it_is() -> None:
    fields = [(b"Location", b"/x"), (b"Content-Length", b"0"), (b"Cache-Control", b"no-store")]
    assert local_response(302, fields).headers == tuple(fields)


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_get_no_content_length_and_refuse_a_body(status: int) -> None:
    assert local_response(status).headers == ()
    with pytest.raises(ValueError, match="no body"):
        local_response(status, body=b"x")


def test_an_unregistered_status_has_an_empty_reason() -> None:
    assert local_response(299).reason == b""
    assert http1_bytes(local_response(299)).startswith(b"HTTP/1.1 299 \r\n")


@pytest.mark.parametrize("status", [100, 101, 199, 600, 0])
def test_only_final_statuses(status: int) -> None:
    with pytest.raises(ValueError, match="200 to 599"):
        local_response(status)


@pytest.mark.parametrize(
    "name", [b"Connection", b"transfer-encoding", b"Keep-Alive", b"Upgrade", b"TE"]
)
def test_connection_fields_are_the_edges_not_the_values(name: bytes) -> None:
    with pytest.raises(ValueError, match="belongs to the connection"):
        local_response(200, [(name, b"close")])


@pytest.mark.parametrize(
    "field",
    [
        (b"Location", b"/x\r\nSet-Cookie: a=1"),
        (b"Location", b"/x\nSet-Cookie: a=1"),
        (b"X-A", b"a\0b"),
        (b"X-A\r\nSet-Cookie", b"a=1"),
    ],
)
def test_a_field_can_never_end_the_head_early(field: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        local_response(200, [field])


def test_a_value_is_frozen() -> None:
    answer = local_response(200)
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.status = 500  # type: ignore[misc]


def test_equal_answers_compare_equal() -> None:
    assert local_response(200, body=b"a") == local_response(200, body=b"a")
    assert isinstance(local_response(200), LocalResponse)


def test_http1_bytes_closes_last_and_leaves_the_body_out_for_head() -> None:
    answer = local_response(503, [(b"Retry-After", b"1")], b"down\n")
    assert http1_bytes(answer) == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\n\r\ndown\n"
    )
    assert http1_bytes(answer, close=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\ndown\n"
    )
    # HEAD: the length the GET would have, and no body (RFC 9110 §9.3.2)
    assert http1_bytes(answer, head_only=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\n\r\n"
    )


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("head_only", [False, True])
def test_http1_bytes_are_built_once_per_variant(close: bool, head_only: bool) -> None:
    answer = local_response(502, body=b"502 Bad Gateway\n")
    assert http1_bytes(answer, close, head_only) is http1_bytes(answer, close, head_only)


def test_http1_bytes_are_exactly_one_message() -> None:
    complete: list[bool] = []

    class Parsed:
        def on_message_complete(self) -> None:
            complete.append(True)

    parser = httptools.HttpResponseParser(Parsed())
    parser.feed_data(http1_bytes(local_response(200, [(b"X-A", b"1")], b"body")))
    assert complete == [True]
    assert parser.get_status_code() == 200
