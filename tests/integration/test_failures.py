"""End-to-end: what a client sees when servers fail (refuse, stall, break, die mid-answer).

Portico answers 503 when no server is available, 502 when a server is unreachable or its answer
is broken, and 504 when it is too slow; those answers are short plain text and say nothing about
the servers. A response that already started is never completed with made-up bytes: the client's
connection is cut instead.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from conftest import simple_config
from fakes import Reply, Response, ResponseReader, connect, read_until_closed, request


@dataclass(frozen=True)
class DeadServer:
    """A pool entry at a loopback port where nothing listens: connecting is refused."""

    name: str
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dead_server() -> Iterator[Callable[[str], DeadServer]]:
    """Make dead servers: a port bound but never listening, so connecting is refused. It stays
    bound until the test ends: no other socket gets the port meanwhile, and an outgoing connect
    never picks it as its own port (which would connect the socket to itself)."""
    with contextlib.ExitStack() as stack:

        def make(name: str) -> DeadServer:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            return DeadServer(name, sock.getsockname()[1])

        yield make


@contextlib.contextmanager
def unresponsive_server(name: str) -> Iterator[DeadServer]:
    """A pool entry whose connects hang: a listening socket that never accepts, its accept
    queue filled up so that the kernel drops further SYNs (nothing refuses, nothing answers)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield DeadServer(name, port)


def assert_plain_error(response: Response, status: int, servers: list) -> None:
    """A Portico-made error: the status, short plain text, nothing about any server."""
    assert response.status == status
    assert (response.header("Content-Type") or "").startswith("text/plain")
    assert 0 < len(response.body) < 200
    assert response.header("X-Backend") is None
    seen = response.body.decode("latin-1") + "".join(f"{k}: {v}\n" for k, v in response.headers)
    assert "127.0.0.1" not in seen
    for server in servers:
        assert str(server.port) not in seen
        assert server.name not in seen


def send(sock: socket.socket, method: str = "GET", target: str = "/", body: bytes = b"") -> None:
    head = f"{method} {target} HTTP/1.1\r\nHost: test.local\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)


# -- servers that cannot be reached ------------------------------------------------------------


def test_connect_failures_are_retried_on_the_live_server(dead_server, backends, portico) -> None:
    dead, live = dead_server("gone-server"), backends("live-server")
    proxy = portico(simple_config([dead, live], extra_pool="    retries: 1\n"))
    answers = [request(proxy.port, target=f"/{i}") for i in range(50)]
    assert [r.status for r in answers] == [200] * 50
    assert {r.header("X-Backend") for r in answers} == {"live-server"}
    assert [s.target for s in live.seen] == [f"/{i}" for i in range(50)]


def test_dead_server_without_retries_gives_502(dead_server, portico) -> None:
    dead = dead_server("gone-server")
    proxy = portico(simple_config([dead], extra_pool="    retries: 0\n"))
    assert_plain_error(request(proxy.port), 502, [dead])


def test_all_servers_dead_gives_502_and_the_client_connection_stays_usable(
    dead_server, portico
) -> None:
    pool = [dead_server("gone-a"), dead_server("gone-b")]
    proxy = portico(simple_config(pool, extra_pool="    retries: 1\n"))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        send(sock, target="/first")
        first = reader.read()
        assert_plain_error(first, 502, pool)
        assert first.header("Connection") != "close"
        send(sock, target="/second")  # the same connection still gets an answer
        assert_plain_error(reader.read(), 502, pool)


def test_more_retries_than_servers_still_ends_in_502(dead_server, portico) -> None:
    pool = [dead_server("gone-a"), dead_server("gone-b")]
    proxy = portico(simple_config(pool, extra_pool="    retries: 5\n"))
    assert_plain_error(request(proxy.port), 502, pool)


def test_post_is_retried_with_its_whole_body_after_a_connect_failure(
    dead_server, backends, portico
) -> None:
    # nothing reached the dead server, so even a POST is safe to send elsewhere
    dead, live = dead_server("gone-server"), backends("live-server")
    proxy = portico(simple_config([dead, live], extra_pool="    retries: 1\n"))
    bodies = [bytes([i]) * 200_000 for i in range(4)]  # larger than any replay buffer
    answers = [request(proxy.port, "POST", "/upload", body=body) for body in bodies]
    assert [r.status for r in answers] == [200] * 4
    assert [s.body for s in live.seen] == bodies


# -- servers that are too slow -----------------------------------------------------------------


def test_server_that_never_accepts_gives_504_after_the_connect_timeout(portico) -> None:
    with unresponsive_server("mute-server") as mute:
        config = simple_config(
            [mute], extra_pool="    retries: 0\n    timeouts: {connect: 200ms}\n"
        )
        proxy = portico(config)
        started = time.monotonic()
        response = request(proxy.port)
        elapsed = time.monotonic() - started
    assert_plain_error(response, 504, [mute])
    assert elapsed < 1.5


def test_connect_timeout_is_retried_on_the_live_server(backends, portico) -> None:
    live = backends("live-server")
    with unresponsive_server("mute-server") as mute:
        config = simple_config([mute, live], extra_pool="    timeouts: {connect: 200ms}\n")
        proxy = portico(config)
        answers = [request(proxy.port, target=f"/{i}") for i in range(6)]
    assert [(r.status, r.header("X-Backend")) for r in answers] == [(200, "live-server")] * 6


def test_slow_server_gives_prompt_504_and_its_late_answer_is_never_delivered(
    backends, portico
) -> None:
    def handler(seen):
        if seen.target == "/slow":
            return Reply(body=b"late answer to /slow", delay=2.0)
        return Reply(body=seen.target.encode())

    slow = backends("slow-server", handler)
    proxy = portico(simple_config([slow], extra_pool="    timeouts: {read: 300ms}\n"))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        started = time.monotonic()
        send(sock, target="/slow")
        timed_out = reader.read()
        elapsed = time.monotonic() - started
        assert_plain_error(timed_out, 504, [slow])
        assert elapsed < 1.5  # the read timeout, not the server's 2 s
        # The server answers requests on one connection in order: had Portico kept using the
        # connection that timed out, this request would get the late answer to /slow.
        send(sock, target="/next")
        following = reader.read()
    assert following.status == 200
    assert following.body == b"/next"


def test_read_timeout_on_a_pooled_connection_is_not_sent_again(backends, portico) -> None:
    # A timeout is not a stale connection: the server got the request and is working on it.
    def handler(seen):
        if seen.target == "/slow":
            return Reply(body=b"late", delay=2.0)
        return Reply(body=seen.target.encode())

    slow = backends("slow-server", handler)
    proxy = portico(simple_config([slow], extra_pool="    timeouts: {read: 300ms}\n"))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        send(sock, target="/warm-up")  # leaves a pooled connection to the server
        assert reader.read().status == 200
        started = time.monotonic()
        send(sock, target="/slow")  # goes out on that pooled connection
        response = reader.read()
        elapsed = time.monotonic() - started
    assert_plain_error(response, 504, [slow])
    assert [s.target for s in slow.heads].count("/slow") == 1
    assert elapsed < 0.55  # one read timeout, not two


# -- servers that break in the middle of an answer ---------------------------------------------


def _broken_or_ok(broken: Reply):
    def handler(seen):
        return broken if seen.target == "/broken" else Reply(body=seen.target.encode())

    return handler


def test_body_cut_short_closes_the_client_connection_before_content_length(
    backends, portico
) -> None:
    broken = Reply(body=[b"a" * 1000, b"b" * 1000], action="truncate")
    pool = [backends("b0", _broken_or_ok(broken)), backends("b1", _broken_or_ok(broken))]
    proxy = portico(simple_config(pool))
    with connect(proxy.port) as sock:
        send(sock, target="/broken")
        raw = read_until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 2000" in head.lower()
    assert len(body) < 2000  # the client can tell the body is incomplete
    after = request(proxy.port, target="/after")
    assert after.status == 200
    assert after.body == b"/after"


def test_chunked_body_cut_short_never_gets_its_last_chunk(backends, portico) -> None:
    broken = Reply(body=[b"a" * 100, b"b" * 100, b"c" * 100], framing="chunked", action="truncate")
    pool = [backends("b0", _broken_or_ok(broken)), backends("b1", _broken_or_ok(broken))]
    proxy = portico(simple_config(pool))
    with connect(proxy.port) as sock:
        send(sock, target="/broken")
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"0\r\n\r\n" not in raw  # no terminating chunk: the client knows it is incomplete
    after = request(proxy.port, target="/after")
    assert after.status == 200
    assert after.body == b"/after"


def test_truncated_response_is_followed_by_a_good_one_from_the_other_server(
    backends, portico
) -> None:
    breaker = backends("breaker", lambda seen: Reply(body=[b"x" * 500] * 2, action="truncate"))
    healthy = backends("healthy")
    proxy = portico(simple_config([breaker, healthy]))
    outcomes = []
    for _ in range(2):  # round robin: one request to each server
        with connect(proxy.port) as sock:
            send(sock)
            try:
                outcomes.append(ResponseReader(sock).read().header("X-Backend"))
            except EOFError:
                outcomes.append("cut")
    assert sorted(outcomes) == ["cut", "healthy"]


# -- servers that close without answering ------------------------------------------------------


def test_get_dropped_without_answer_on_a_fresh_connection_is_retried(backends, portico) -> None:
    dropper = backends("dropper", lambda seen: Reply(action="close"))
    healthy = backends("healthy")
    proxy = portico(simple_config([dropper, healthy], extra_pool="    retries: 1\n"))
    answers = [request(proxy.port, target=f"/{i}") for i in range(6)]
    assert [(r.status, r.header("X-Backend")) for r in answers] == [(200, "healthy")] * 6
    assert len(dropper.heads) >= 2  # round robin did send requests there first
    assert sorted(s.target for s in healthy.seen) == sorted(f"/{i}" for i in range(6))


def test_post_dropped_without_answer_gives_502_and_is_not_retried(backends, portico) -> None:
    def handler(seen):
        return Reply(action="close") if seen.method == "POST" else Reply(body=b"ok")

    pool = [backends("srv-a", handler), backends("srv-b", handler)]
    proxy = portico(simple_config(pool, extra_pool="    retries: 1\n"))
    response = request(proxy.port, "POST", "/orders", body=b"buy one")
    assert_plain_error(response, 502, pool)
    # exactly one server saw the POST: it is not idempotent, so it is never sent twice
    assert sum(len(b.heads) for b in pool) == 1


# -- keep-alive connections the server gave up on ----------------------------------------------


def test_server_silently_closing_after_each_response_does_not_fail_requests(
    backends, portico
) -> None:
    closer = backends("closer", lambda seen: Reply(body=seen.target.encode(), silent_close=True))
    proxy = portico(simple_config([closer]))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for i in range(20):
            send(sock, target=f"/{i}")
            response = reader.read()
            assert response.status == 200
            assert response.body == f"/{i}".encode()


def test_request_on_a_pooled_connection_the_server_dropped_is_sent_again(backends, portico) -> None:
    # The keep-alive race: the server closes an idle connection just as the next request
    # arrives on it. Here it drops every request that is not the first on its connection.
    first_on: set[int] = set()

    def handler(seen):
        if seen.connection in first_on:
            return Reply(action="close")
        first_on.add(seen.connection)
        return Reply(body=seen.target.encode())

    only = backends("only", handler)
    proxy = portico(simple_config([only]))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for i in range(10):
            send(sock, target=f"/{i}")
            response = reader.read()
            assert response.status == 200
            assert response.body == f"/{i}".encode()


# -- servers that answer garbage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not http\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # the head never finishes: the server closes
    ],
    ids=["not-http", "bad-status", "two-lengths", "bad-field-name", "head-cut"],
)
def test_malformed_response_head_gives_502(backends, portico, raw: bytes) -> None:
    broken = backends("broken-server", lambda seen: Reply(raw=raw))
    proxy = portico(simple_config([broken], extra_pool="    retries: 0\n"))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        send(sock)
        assert_plain_error(reader.read(), 502, [broken])
        send(sock)  # the client's connection is still usable
        assert_plain_error(reader.read(), 502, [broken])
