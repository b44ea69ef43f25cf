"""A client connection remembers the last request it read when that read was the request's
head alone (no body, keep-alive, no Upgrade) twice in a row, and takes a read of the same
bytes, between requests, as that request again without parsing it. What a client sees and
what a server gets must not tell the difference: each request below, repeated or not, after
whatever came before, is forwarded and answered as a connection that never read a request
forwards and answers it. Driven through fake transports: requests into a real
`ClientConnection`, the server's answer into the pooled `UpstreamConnection` the exchange sends
it on."""

from __future__ import annotations

import re

from fakes import ClientTransport, worker_with_idle_servers
from portico.listeners.http import ClientConnection
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    access_log: {path: /dev/null}
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"

REQUESTS = [
    GET,
    GET,
    GET,
    b"GET /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n",
    # absolute-form: its authority replaces Host
    b"GET http://c.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://c.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    # the client's forwarding list, a field its Connection names, an invalid request ID
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: X-Hop\r\n"
    b"X-Hop: 1\r\nX-Request-Id: bad id\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: X-Hop\r\n"
    b"X-Hop: 1\r\nX-Request-Id: bad id\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Request-Id: good-id-1\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: a\r\nX-Request-Id: good-id-1\r\n\r\n",
    # HTTP/1.0 keep-alive, and requests with a (empty) body: never remembered
    b"GET /o HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /o HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    GET,
    GET,
]


def connection(worker: Worker) -> tuple[ClientConnection, ClientTransport]:
    conn = ClientConnection(worker.settings["web"], worker.context)
    transport = ClientTransport()
    conn.connection_made(transport)
    return conn, transport


def forward(conn: ClientConnection, transport: ClientTransport, request: bytes) -> bytes:
    """`request` read whole in one read, answered by the server: the head the server got and
    what the client read, as one string of bytes."""
    before = len(transport.writes)
    conn.data_received(request)
    assert conn.active is not None
    upstream = conn.active._upstream
    assert upstream is not None
    server = upstream.transport
    assert isinstance(server, ClientTransport)
    sent = server.writes[-1]
    upstream.data_received(RESPONSE)
    assert conn.active is None
    # a request ID Portico made (the access log's): new for each request, repeated or not
    made = [v for v in re.findall(rb"X-Request-Id: ([^\r]*)", sent) if v not in request]
    for value in made:
        assert value not in MADE_IDS
        MADE_IDS.add(value)
        sent = sent.replace(value, b"<made>")
    return sent + b"|" + b"".join(transport.writes[before:])


MADE_IDS: set[bytes] = set()


def test_requests_repeated_or_not_are_forwarded_and_answered_as_on_a_new_connection() -> None:
    with worker_with_idle_servers(CONFIG, 24) as worker:
        conn, transport = connection(worker)
        seen = [forward(conn, transport, request) for request in REQUESTS]
        assert not transport.closing
        remembered = conn._repeat
        assert remembered is not None
        assert remembered.raw == GET
    for request, got in zip(REQUESTS, seen, strict=True):
        with worker_with_idle_servers(CONFIG, 24) as worker:
            assert forward(*connection(worker), request) == got, request


def test_a_repeat_pipelined_behind_a_request_waits_its_turn() -> None:
    """The same bytes while a request is being answered are parsed as ever (queued), and the
    parser, which never saw the repeats before them, reads them from where it was."""
    with worker_with_idle_servers(CONFIG, 24) as worker:
        conn, transport = connection(worker)
        first = forward(conn, transport, GET)
        conn.data_received(GET)  # a repeat: active at once
        active = conn.active
        assert active is not None
        conn.data_received(GET)  # the same bytes again, pipelined behind it
        assert conn.active is active
        upstream = active._upstream
        assert upstream is not None
        upstream.data_received(RESPONSE)
        queued = conn.active
        assert queued is not None
        assert queued is not active
        assert queued._upstream is not None
        queued._upstream.data_received(RESPONSE)
        assert conn.active is None
        answers = b"".join(transport.writes).split(b"HTTP/1.1 200 OK")[1:]
        assert len(answers) == 3
        assert first.endswith(b"HTTP/1.1 200 OK" + answers[0])
        assert answers[0] == answers[1] == answers[2]
        assert forward(conn, transport, GET) == first


def test_a_repeat_after_the_client_half_closed_is_its_last_request() -> None:
    with worker_with_idle_servers(CONFIG, 24) as worker:
        conn, transport = connection(worker)
        assert b"Connection: close" not in forward(conn, transport, GET)
        conn.eof_received()
        assert b"Connection: close\r\n" in forward(conn, transport, GET)
        assert transport.closing


def test_an_idle_connection_forgets_its_last_request_with_its_parser() -> None:
    with worker_with_idle_servers(CONFIG, 24) as worker:
        conn, transport = connection(worker)
        first = forward(conn, transport, GET)
        assert conn._repeat is None  # (remembered once read twice in a row)
        assert forward(conn, transport, GET) == first
        assert conn._repeat is not None
        conn.rest()
        conn.rest()  # idle since the last call: the parser and the request go
        assert conn._repeat is None
        assert forward(conn, transport, GET) == first
        assert forward(conn, transport, GET) == first
        assert conn._repeat is not None


def test_what_one_request_edits_of_its_head_never_reaches_its_repeats() -> None:
    """A request's fields are the exchange's to edit (filters, the cache's conditional
    fields, persistence): each repeat starts from the fields as the client sent them."""
    with worker_with_idle_servers(CONFIG, 24) as worker:
        conn, transport = connection(worker)
        first = forward(conn, transport, GET)
        for _ in range(2):
            conn.data_received(GET)
            exchange = conn.active
            assert exchange is not None
            exchange.headers.append((b"X-Edited", b"1"))
            exchange.head.headers.append((b"X-Edited", b"1"))
            exchange.head.host = b"elsewhere"
            assert exchange._upstream is not None
            exchange._upstream.data_received(RESPONSE)
        assert forward(conn, transport, GET) == first
