"""A fuzz target for the request path: arbitrary bytes, cut at arbitrary points, fed to a real
HTTP/1.1 client connection (parsing, limits, routing, filters, the local answer and its
framing) through a fake transport, without sockets. Properties: no exception ever escapes;
what Portico writes back is a sequence of well-formed HTTP/1.1 responses with a status it
documents; a well-formed request gets its answer.

CI runs `EXAMPLES` examples per test (a few seconds). A longer session:

    PORTICO_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/unit/fuzz -p no:randomly -q

(hypothesis keeps the failing inputs it finds in .hypothesis/ and replays them first.)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Iterator

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fakes import ClientTransport
from portico.config.load import parse_config
from portico.listeners.http import ClientConnection
from portico.worker import Worker

EXAMPLES = int(os.environ.get("PORTICO_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    limits: {max_request_line: 200, max_header_size: 400, max_headers: 8, max_body_size: 64}
    access: {deny: [198.51.100.0/24]}
    trusted_proxies: [127.0.0.1/32]
    bans: [{key: 'header:X-User', count: 1000, window: 1s, duration: 1s}]
    routes:
      - match: {path_prefix: /private}
        pool: app
        access: {allow: [10.0.0.0/8]}
      - match: {}
        respond: {status: 200, body: "ok\\n"}
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""
DOCUMENTED = {200, 400, 403, 405, 408, 413, 414, 431, 501, 505}


class Transport(ClientTransport):
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    loop = asyncio.new_event_loop()
    try:
        yield Worker(loop, parse_config(CONFIG, "<fuzz>"), {})
    finally:
        loop.close()


class Responses:
    """Parses what Portico wrote as HTTP/1.1 responses (httptools raises on anything else)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def feed(worker: Worker, chunks: list[bytes]) -> list[int]:
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = Transport()
    conn.connection_made(transport)
    for chunk in chunks:
        if transport.closing:
            break
        conn.data_received(chunk)
    if not transport.closing:
        conn.eof_received()
    conn.connection_lost(None)
    written = bytes(transport.written)
    if b"HEAD" in b"".join(chunks):
        # an answer to HEAD has a Content-Length and no body: a response parser that does not
        # know the request misreads it; the status lines are enough (the bodies are fixed text)
        statuses = [int(m) for m in re.findall(rb"(?:^|\r\n\r\n)HTTP/1\.1 (\d{3}) ", written)]
        assert written[:9] in (b"", b"HTTP/1.1 ")
    else:
        responses = Responses()
        responses.parser.feed_data(written)
        statuses = responses.statuses
    assert set(statuses) <= DOCUMENTED, statuses
    return statuses


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


methods = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH", b"BREW", b"get"]
)
targets = st.one_of(
    st.sampled_from([b"/", b"/private/x", b"*", b"http://a/b", b"/a?b=c", b"//x", b"/%00"]),
    st.binary(max_size=40).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"")),
)
names = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"X-Forwarded-For",
        b"Forwarded",
        b"X-User",
        b"Expect",
        b"Upgrade",
        b"Cookie",
        b"X-A",
    ]
)
values = st.one_of(
    st.sampled_from(
        [
            b"a",
            b"0",
            b"5",
            b"-1",
            b"chunked",
            b"gzip, chunked",
            b"close",
            b"keep-alive",
            b"100-continue",
            b"198.51.100.7",
            b"10.1.1.1, 198.51.100.7",
            b"for=198.51.100.9",
            b"websocket",
            b"99999999999999999999",
        ]
    ),
    st.binary(max_size=30),
)
bodies = st.one_of(
    st.just(b""), st.binary(max_size=80), st.just(b"5\r\nhello\r\n0\r\n\r\n"), st.just(b"zz\r\n")
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(methods)
    target = draw(targets)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]))
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    return head + draw(bodies)


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=6))
@example([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], [])
def test_structured_requests(worker: Worker, sent: list[bytes], points: list[int]) -> None:
    data = b"".join(sent)
    statuses = feed(worker, cut(data, points))
    if data == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n":
        assert statuses == [200]


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=6))
def test_arbitrary_bytes(worker: Worker, data: bytes, points: list[int]) -> None:
    feed(worker, cut(data, points))


@FUZZ
@given(requests(), st.data())
def test_mutated_requests(worker: Worker, data_: bytes, draw: st.DataObject) -> None:
    data = bytearray(data_)
    for _ in range(draw.draw(st.integers(1, 3))):
        if data:
            data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    feed(worker, [bytes(data)])


def test_well_formed_requests_are_answered(worker: Worker) -> None:
    assert feed(
        worker, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"]
    ) == [200, 200]
    assert feed(worker, [b"GET /private/x HTTP/1.1\r\nHost: a\r\n\r\n"]) == [403]
    denied = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    assert feed(worker, [denied]) == [403]  # the listener's list, behind a trusted proxy
    assert feed(worker, [b"GET / HTTP/1.1\r\n"]) == []  # an unfinished head: no answer yet
