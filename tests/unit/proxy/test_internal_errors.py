"""Portico's own failures while a request is set up: a 500 for that request, logged (with the
traceback, sparingly), and never forwarded.

Before, an exception raised in a parser callback (building the Exchange when a head completes)
reached the client as a 400 with nothing logged, as if the request had been malformed; one
raised while the exchange began (filters, routing) escaped `data_received`, and the loop cut
the connection without an answer. The broken collaborators here are a parser whose
`should_keep_alive` raises and a listener filter that raises.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import httptools
import pytest

from fakes import ClientTransport as FakeTransport
from fakes import worker_with_idle_servers
from portico.listeners.http import ClientConnection
from portico.plugins.guard import LOG_INTERVAL
from portico.proxy.internal import InternalErrors, internal_errors
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class BrokenParser(httptools.HttpRequestParser):
    """llhttp as usual, but its `should_keep_alive` raises from the `fail_at`-th call on:
    the head-complete callback, which builds the Exchange, fails."""

    def __init__(self, protocol: object, fail_at: int = 1) -> None:
        super().__init__(protocol)
        self.calls = 0
        self.fail_at = fail_at

    def should_keep_alive(self) -> bool:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("boom in setup")
        return bool(super().should_keep_alive())


class BrokenFilter:
    """A built-in-style listener filter (not a guarded plugin) with a bug."""

    asynchronous = False

    def on_request(self, exchange: object) -> None:
        raise KeyError("boom in a filter")


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A worker whose one server has an idle pooled connection: a request attaches at once."""
    with worker_with_idle_servers(CONFIG, 1) as worker:
        yield worker


@pytest.fixture(autouse=True)
def fresh_log_limits() -> None:
    internal_errors._logged_at.clear()
    internal_errors._unlogged.clear()


def upstream_bytes(worker: Worker) -> int:
    """Bytes written to the pooled server connections (every one is idle in these tests)."""
    backend = worker.settings["web"].pool.backends[0]
    conn = backend.take_idle()
    assert conn is not None, "the server connection was taken and not given back"
    transport = conn.transport
    assert isinstance(transport, FakeTransport)
    return len(transport.written)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and r.exc_info is not None]


def test_a_head_whose_exchange_fails_to_build_gets_a_500_logged_not_forwarded(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    conn._parser = BrokenParser(conn)
    transport = FakeTransport()
    conn.connection_made(transport)
    before = internal_errors.total
    with caplog.at_level(logging.ERROR, logger="portico"):
        conn.data_received(GET)
    assert bytes(transport.written).startswith(b"HTTP/1.1 500 "), transport.written
    assert b"Connection: close" in transport.written
    assert internal_errors.total == before + 1
    assert len(logged(caplog, "boom in setup")) == 1
    assert upstream_bytes(worker) == 0  # never forwarded


def test_a_pipelined_head_that_fails_is_answered_500_after_the_one_before(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    conn = ClientConnection(worker.settings["web"], worker.context)
    conn._parser = BrokenParser(conn, fail_at=2)  # the first request is fine
    transport = FakeTransport()
    conn.connection_made(transport)
    with caplog.at_level(logging.ERROR, logger="portico"):
        conn.data_received(GET + GET)
        first = conn.active
        assert first is not None
        upstream = first._upstream
        assert upstream is not None
        assert not transport.written  # the 500 waits for the answer before it
        upstream.data_received(OK)
    written = bytes(transport.written)
    assert written.startswith(b"HTTP/1.1 200 OK"), written
    assert b"HTTP/1.1 500 " in written.split(b"\r\n\r\nok", 1)[1]
    assert len(logged(caplog, "boom in setup")) == 1


def test_a_filter_that_raises_as_the_exchange_begins_gives_a_500_not_a_dropped_connection(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(worker.settings["web"], filters=(BrokenFilter(),))
    conn = ClientConnection(settings, worker.context)
    transport = FakeTransport()
    conn.connection_made(transport)
    with caplog.at_level(logging.ERROR, logger="portico"):
        conn.data_received(GET)
    assert bytes(transport.written).startswith(b"HTTP/1.1 500 "), transport.written
    assert len(logged(caplog, "boom in a filter")) == 1
    assert upstream_bytes(worker) == 0


def test_internal_errors_are_logged_once_per_interval_with_the_count_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = InternalErrors()
    with caplog.at_level(logging.ERROR, logger="portico"):
        for at in (100.0, 101.0, 102.0):
            errors.report("setting up a request", ValueError("x"), now=at)
        errors.report("reading a request", ValueError("y"), now=102.0)  # another place
        errors.report("setting up a request", ValueError("z"), now=100.0 + LOG_INTERVAL)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "1 such error(s)" in messages[0]
    assert "reading a request" in messages[1]
    assert "ValueError: z" in messages[2]
    assert "3 such error(s)" in messages[2]
    assert errors.total == 5
