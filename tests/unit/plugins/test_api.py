"""The plugin API's values and views: what a plugin builds and what it sees."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httptools
import pytest

from portico.http.headers import Header, RequestHead
from portico.http.local import http1_bytes
from portico.plugins import Request, Response, ResponseHeaders
from portico.plugins.guard import Guard


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def parse(data: bytes) -> tuple[int, _Parsed]:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(data)
    assert parsed.complete
    return parser.get_status_code(), parsed


def test_a_response_value_is_encoded_as_one_well_framed_message() -> None:
    # as the HTTP/1.1 edge writes the answer the value becomes
    answer = Response(401, "no key\n", [("WWW-Authenticate", "ApiKey")]).to_local()
    status, parsed = parse(http1_bytes(answer))
    assert status == 401
    assert parsed.body == b"no key\n"
    assert (b"Content-Length", b"7") in parsed.headers
    assert (b"Content-Type", b"text/plain; charset=utf-8") in parsed.headers
    binary = Response(200, b"\x00\x01", [("Content-Type", "application/x")]).to_local()
    head = http1_bytes(binary, head_only=True)
    assert head.endswith(b"Content-Length: 2\r\n\r\n")  # a HEAD answer: the length, no body
    assert b"text/plain" not in head


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (101, (), b""),  # Portico's own business
        (700, (), b""),
        (200, [("Content-Length", "5")], b""),  # framing is Portico's
        (200, [("X-A", "a\r\nInjected: yes")], b""),  # no header injection
        (200, [("Bad Name", "x")], b""),
        (204, (), b"body"),
    ],
)
def test_a_response_that_http_cannot_carry_is_refused_when_made(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        Response(status, body, headers)


@dataclass
class _Client:
    client_ip: str = "192.0.2.7"


@dataclass
class _Route:
    name: str = "api"


@dataclass
class FakeExchange:
    """What the proxy exposes to filters (`portico.plugins.ProxiedRequest`)."""

    headers: list[Header]
    head: RequestHead = field(default_factory=RequestHead)
    method: bytes = b"GET"
    target: bytes = b"/a/b?x=1"
    route: _Route | None = None
    client: _Client = field(default_factory=_Client)
    pools: tuple[str, ...] = ("app", "canary")
    pool_name: str = "app"

    def use_pool(self, name: str) -> None:
        if name not in self.pools:
            raise KeyError(name)
        self.pool_name = name


def test_a_request_view_reads_and_edits_what_the_server_gets() -> None:
    exchange = FakeExchange([(b"X-Key", b"k1"), (b"Accept", b"*/*")])
    exchange.head.headers = list(exchange.headers)
    exchange.head.host = b"example.com"
    request = Request(exchange)
    assert (request.method, request.path, request.query) == ("GET", "/a/b", "x=1")
    assert (request.host, request.client_ip, request.route) == ("example.com", "192.0.2.7", None)
    assert request.header("x-key") == "k1"
    request.set_header("X-Key", "k2")
    request.remove_header("accept")
    request.use_pool("canary")
    assert exchange.head.headers == [(b"X-Key", b"k2")]
    assert request.header("X-Key") == "k2"  # later filters and routing see the edit
    assert request.pool == "canary"
    with pytest.raises(ValueError, match="set by Portico"):
        request.set_header("Transfer-Encoding", "chunked")
    with pytest.raises(KeyError):
        request.use_pool("nowhere")


def test_response_headers_keep_repeated_fields_unless_replaced() -> None:
    response = ResponseHeaders(200, [(b"Set-Cookie", b"a=1"), (b"Server", b"x")])
    response.add_header("Set-Cookie", "b=2")
    response.set_header("server", "portico")
    response.remove_header("X-Absent")
    assert response.fields == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"server", b"portico"),
    ]


def test_a_guard_logs_a_failing_plugin_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard("mod:Thing (listener web)", budget=1.0)
    with caplog.at_level(logging.ERROR, logger="portico.plugins"):
        for _ in range(5):
            error = guard.failed(ValueError("bad"), "on_request")
    assert str(error) == "mod:Thing (listener web) failed in on_request"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("plugin mod:Thing (listener web) failed in on_request: ValueError")


def test_a_guard_logs_a_call_over_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard("mod:Slow (listener web)", budget=0.001)
    with caplog.at_level(logging.WARNING, logger="portico.plugins"):
        guard.timed(-1e9)  # began long ago: far over the budget
    (record,) = caplog.records
    assert "plugin mod:Slow (listener web) blocked the event loop" in record.getMessage()
