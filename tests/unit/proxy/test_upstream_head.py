"""The request head a server gets: the client's end-to-end fields re-serialised, then the
forwarding fields (made once per client address and reused while its Host stays the same),
then the framing and what Portico adds. Driven through fake transports: a request into a real
`ClientConnection`, its head read off the pooled server connection's transport."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fakes import ClientTransport, worker_with_idle_servers
from portico.listeners.http import ClientConnection
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
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def worker() -> Iterator[Worker]:
    with worker_with_idle_servers(CONFIG, 2) as worker:
        yield worker


def sent_heads(worker: Worker, *requests: bytes) -> list[bytes]:
    """What the server got for each request, sent one after the other on one connection."""
    conn = ClientConnection(worker.settings["web"], worker.context)
    conn.connection_made(ClientTransport())
    heads = []
    for request in requests:
        conn.data_received(request)
        assert conn.active is not None
        upstream = conn.active._upstream
        assert upstream is not None
        transport = upstream.transport
        assert isinstance(transport, ClientTransport)
        method = request.split(b" ", 1)[0]
        heads.append([w for w in transport.writes if w.startswith(method + b" /")][-1])
        upstream.data_received(RESPONSE)
    return heads


def test_forwarding_fields_come_after_the_clients_and_before_the_framing(worker) -> None:
    [head] = sent_heads(
        worker,
        b"POST /u HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n"
        b"Content-Length: 0\r\n\r\n",
    )
    assert head == (
        b"POST /u HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: a\r\nForwarded: for=127.0.0.1;proto=http;host=a\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_a_clients_next_requests_get_the_forwarding_fields_of_their_own_host(worker) -> None:
    heads = sent_heads(
        worker,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /3 HTTP/1.1\r\nHost: b\r\n\r\n",
        b"GET /4 HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    )
    assert heads == [
        b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=a\r\n\r\n",
        b"GET /2 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=a\r\n\r\n",
        b"GET /3 HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: b\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=b\r\n\r\n",
        b"GET /4 HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: b\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=b\r\n\r\n",
    ]


def test_a_chunked_request_says_so_after_the_forwarding_fields(worker) -> None:
    [head] = sent_heads(
        worker,
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert head.endswith(b"host=a\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_requests_repeated_or_not_get_the_head_a_fresh_proxy_sends_them(worker) -> None:
    """The server connections remember the last head they were sent (and send those bytes
    again for equal inputs): whatever came before on them, each request's head is the one a
    worker that never sent one makes of it."""
    requests = [
        b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: b\r\nAccept: text/html\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: text/html\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 10.0.0.2\r\nAccept: text/html\r\n\r\n",
        b"HEAD /b HTTP/1.1\r\nHost: b\r\nAccept: text/html\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
        b"GET /a HTTP/1.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
        b"GET /a HTTP/1.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    ]
    heads = sent_heads(worker, *requests)
    for request, head in zip(requests, heads, strict=True):
        with worker_with_idle_servers(CONFIG, 2) as fresh:
            assert [head] == sent_heads(fresh, request)
