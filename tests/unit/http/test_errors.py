"""The responses Portico writes itself: each one complete, well framed, and silent about servers.

The answers are values; `http1_bytes` is how the HTTP/1.1 edge writes them (with Connection:
close for a client error, since the listener always closes after one)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools
import pytest

from portico.http.errors import CLIENT_ERRORS, UPSTREAM_ERRORS, client_error, upstream_error
from portico.http.local import http1_bytes

# the statuses the listener refuses a request with (portico.listeners.http)
LISTENER_STATUSES = [400, 405, 408, 413, 414, 431, 505]
UPSTREAM_STATUSES = [502, 503, 504]


@dataclass
class Parsed:
    """One response as a client's parser reads it."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: int = 0
    complete: int = 0

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def value(self, name: bytes) -> bytes | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name!r} appears {len(found)} times"
        return found[0] if found else None


def parse(raw: bytes) -> Parsed:
    parsed = Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(raw)
    parsed.status = parser.get_status_code()
    return parsed


def every_response() -> list[object]:
    cases: list[object] = [
        pytest.param(s, http1_bytes(client_error(s), close=True), id=f"client-{s}")
        for s in CLIENT_ERRORS
    ]
    for status in UPSTREAM_ERRORS:
        for close in (False, True):
            raw = http1_bytes(upstream_error(status), close)
            cases.append(
                pytest.param(status, raw, id=f"upstream-{status}-{'close' if close else 'keep'}")
            )
    return cases


@pytest.mark.parametrize(("status", "raw"), every_response())
def test_error_response_is_exactly_one_message_framed_by_its_content_length(
    status: int, raw: bytes
) -> None:
    parsed = parse(raw)
    assert (parsed.messages, parsed.complete) == (1, 1)  # nothing left over to start another
    assert parsed.status == status
    assert raw.startswith(b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()))
    assert parsed.value(b"content-length") == b"%d" % len(parsed.body)
    assert parsed.value(b"transfer-encoding") is None


@pytest.mark.parametrize(("status", "raw"), every_response())
def test_error_response_says_nothing_about_the_servers_or_the_software(
    status: int, raw: bytes
) -> None:
    parsed = parse(raw)
    text = parsed.body.decode("utf-8")
    assert text.strip() == f"{status} {HTTPStatus(status).phrase}"  # status and phrase only
    for name in (b"server", b"via", b"x-powered-by", b"x-backend"):
        assert parsed.value(name) is None
    lowered = raw.lower()
    for word in (b"portico", b"python", b"httptools", b"uvloop", b"upstream", b"backend"):
        assert word not in lowered
    assert not re.search(rb"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b", parsed.body)  # no address or port


@pytest.mark.parametrize(("status", "raw"), every_response())
def test_error_response_is_plain_text_and_never_cached(status: int, raw: bytes) -> None:
    parsed = parse(raw)
    content_type = parsed.value(b"content-type")
    assert content_type is not None
    assert content_type.startswith(b"text/plain")
    assert parsed.value(b"cache-control") == b"no-store"


@pytest.mark.parametrize("status", sorted(set(LISTENER_STATUSES) | set(CLIENT_ERRORS)))
def test_client_errors_close_the_connection(status: int) -> None:
    # what follows a refused request on the wire can no longer be trusted to start a new one
    parsed = parse(http1_bytes(client_error(status), close=True))
    assert parsed.status == status
    assert parsed.value(b"connection") == b"close"


@pytest.mark.parametrize("status", UPSTREAM_STATUSES)
def test_upstream_errors_close_the_connection_only_when_asked(status: int) -> None:
    assert parse(http1_bytes(upstream_error(status), close=True)).value(b"connection") == b"close"
    assert parse(http1_bytes(upstream_error(status))).value(b"connection") is None


@pytest.mark.parametrize("close", [False, True])
def test_503_tells_the_client_when_to_retry(close: bool) -> None:
    retry_after = parse(http1_bytes(upstream_error(503), close)).value(b"retry-after")
    assert retry_after is not None
    assert retry_after.isdigit()  # delay-seconds (RFC 9110 §10.2.3)
    assert int(retry_after) >= 1
