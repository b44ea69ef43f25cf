"""End-to-end overload protection: max_conns with a queue, per-client rate limit, per-client
connection limit.

The real `portico run` in front of real `FakeBackend`s over loopback sockets. Concurrent
clients are threads, each on its own connection; a slow backend (`Reply(delay=...)`) holds
server slots, and the test waits for requests to reach it (a handler that counts arrivals)
before sending more, never for a fixed time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from conftest import simple_config
from fakes import FakeBackend, Portico, Reply, Response, ResponseReader, Seen, connect, request

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]


class SlowBackend:
    """A handler answering every request after `delay` seconds, that lets the test wait until
    a number of requests have arrived."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived = 0
        self._changed = threading.Condition()

    def __call__(self, seen: Seen) -> Reply:
        with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        return Reply(delay=self.delay, body=b"slow")

    def wait_arrived(self, count: int, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.arrived >= count, timeout)


def timed_request(port: int, target: str) -> tuple[Response, float]:
    """One GET on its own connection, and the seconds until its response was complete."""
    started = time.monotonic()
    response = request(port, target=target)
    return response, time.monotonic() - started


def concurrently(port: int, targets: list[str]) -> list[tuple[Response, float]]:
    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(lambda t: timed_request(port, t), targets))


def max_conns_config(backend: FakeBackend, queue: str) -> str:
    return simple_config([backend], extra_pool=f"    max_conns: 2\n    queue: {queue}\n")


# -- max_conns and the queue ----------------------------------------------------------------------


def test_max_conns_holds_a_server_to_two_requests_and_the_queue_serves_all_the_rest(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app", SlowBackend(0.2))
    proxy = portico(max_conns_config(backend, "{size: 20, timeout: 5s}"))
    results = concurrently(proxy.port, [f"/r{i}" for i in range(10)])
    assert [r.status for r, _ in results] == [200] * 10
    assert backend.max_in_flight == 2  # the limit was reached and never passed
    assert sorted(s.target for s in backend.seen) == sorted(f"/r{i}" for i in range(10))


def test_full_queue_answers_the_excess_503_at_once_with_retry_after(
    backends: MakeBackend, portico: MakePortico
) -> None:
    slow = SlowBackend(0.6)
    backend = backends("app", slow)
    proxy = portico(max_conns_config(backend, "{size: 2, timeout: 5s}"))
    with ThreadPoolExecutor(2) as holders:
        held = [holders.submit(timed_request, proxy.port, f"/held{i}") for i in range(2)]
        assert slow.wait_arrived(2)  # both slots taken
        results = concurrently(proxy.port, [f"/more{i}" for i in range(8)])
        assert [f.result()[0].status for f in held] == [200, 200]

    statuses = sorted(r.status for r, _ in results)
    assert statuses == [200] * 2 + [503] * 6  # 2 waited in the queue, 6 found it full
    for response, elapsed in results:
        if response.status == 503:
            assert elapsed < 0.3  # at once: not after a slot freed (0.6s) or the queue timeout
            assert int(response.header("Retry-After") or "0") >= 1
    assert backend.max_in_flight == 2
    assert len(backend.seen) == 4  # refused requests never reached the server


def test_queued_requests_time_out_with_503_after_the_queue_timeout(
    backends: MakeBackend, portico: MakePortico
) -> None:
    slow = SlowBackend(1.0)
    backend = backends("app", slow)
    proxy = portico(max_conns_config(backend, "{size: 20, timeout: 100ms}"))
    with ThreadPoolExecutor(2) as holders:
        held = [holders.submit(timed_request, proxy.port, f"/held{i}") for i in range(2)]
        assert slow.wait_arrived(2)
        results = concurrently(proxy.port, [f"/queued{i}" for i in range(8)])
        assert [f.result()[0].status for f in held] == [200, 200]

    for response, elapsed in results:
        assert response.status == 503
        assert int(response.header("Retry-After") or "0") >= 1
        # about 100ms in the queue: well before a slot would free (1s)
        assert 0.09 <= elapsed < 0.6, elapsed
    assert len(backend.seen) == 2
    assert backend.max_in_flight == 2


# -- rate limit on the listener -------------------------------------------------------------------

# 5 at once, then one per 200ms: a refused request is told Retry-After: 1 (second)
RATE_LIMIT = "    rate_limit:\n      rate: 5/s\n      burst: 5\n      key: header:X-Api-Key\n"


def send_pipelined(sock: socket.socket, targets: list[str], key: str | None) -> None:
    field = f"X-Api-Key: {key}\r\n" if key is not None else ""
    sock.sendall(b"".join(f"GET {t} HTTP/1.1\r\nHost: t\r\n{field}\r\n".encode() for t in targets))


def read_all(sock: socket.socket, count: int) -> list[Response]:
    reader = ResponseReader(sock)
    return [reader.read() for _ in range(count)]


def assert_limited(response: Response) -> None:
    assert response.status == 429
    assert response.header("Retry-After") == "1"  # whole seconds, at least 1
    assert response.header("RateLimit-Limit") == "5"
    assert response.header("RateLimit-Remaining") == "0"
    assert response.header("RateLimit-Reset") == "1"  # the burst is back within the 1s window
    assert response.header("X-Backend") is None  # answered by Portico itself


def test_rate_limit_allows_a_burst_per_key_then_answers_429_with_retry_after(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app")
    proxy = portico(simple_config([backend], extra_listener=RATE_LIMIT))
    with connect(proxy.port) as a, connect(proxy.port) as b:
        send_pipelined(a, [f"/a{i}" for i in range(10)], "A")
        send_pipelined(b, [f"/b{i}" for i in range(5)], "B")  # in the same moment
        from_a = read_all(a, 10)
        from_b = read_all(b, 5)
    assert [r.status for r in from_a] == [200] * 5 + [429] * 5
    for response in from_a[5:]:
        assert_limited(response)
    assert [r.status for r in from_b] == [200] * 5  # another key is not affected
    # a 429 never reaches the backend
    assert sorted(s.target for s in backend.seen) == sorted(
        [f"/a{i}" for i in range(5)] + [f"/b{i}" for i in range(5)]
    )


def test_rate_limited_key_is_allowed_again_after_waiting_retry_after(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app")
    proxy = portico(simple_config([backend], extra_listener=RATE_LIMIT))
    with connect(proxy.port) as sock:
        send_pipelined(sock, [f"/a{i}" for i in range(7)], "A")
        answers = read_all(sock, 7)
        assert [r.status for r in answers] == [200] * 5 + [429] * 2
        retry_after = int(answers[-1].header("Retry-After") or "0")
        assert retry_after == 1
        # the refill is time-based: waiting Retry-After is the behaviour under test
        time.sleep(retry_after)
        send_pipelined(sock, ["/again"], "A")
        assert read_all(sock, 1)[0].status == 200
    assert [s.target for s in backend.seen][-1] == "/again"


def test_request_without_the_key_header_is_limited_by_its_client_address(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app")
    proxy = portico(simple_config([backend], extra_listener=RATE_LIMIT))
    with connect(proxy.port) as anonymous, connect(proxy.port) as keyed:
        send_pipelined(anonymous, [f"/n{i}" for i in range(10)], None)
        answers = read_all(anonymous, 10)
        send_pipelined(keyed, ["/keyed"], "B")
        keyed_answer = read_all(keyed, 1)[0]
    assert [r.status for r in answers] == [200] * 5 + [429] * 5
    for response in answers[5:]:
        assert_limited(response)
    assert keyed_answer.status == 200  # the address's bucket is not shared with key B
    assert len(backend.seen) == 6


# -- connections per client -----------------------------------------------------------------------


def get(sock: socket.socket, reader: ResponseReader, target: str = "/") -> Response:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return reader.read()


def is_refused(sock: socket.socket) -> bool:
    """True when the connection is closed (EOF or reset) without any response byte."""
    try:
        sock.sendall(b"GET /refused HTTP/1.1\r\nHost: t\r\n\r\n")
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


def test_connection_over_max_conns_per_client_is_closed_at_accept_and_a_freed_slot_is_reused(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app")
    proxy = portico(simple_config([backend], extra_listener="    max_conns_per_client: 2\n"))
    with connect(proxy.port) as second:
        second_reader = ResponseReader(second)
        with connect(proxy.port) as first:
            first_reader = ResponseReader(first)
            assert get(first, first_reader, "/first").status == 200
            assert get(second, second_reader, "/second").status == 200
            with connect(proxy.port) as third:
                assert is_refused(third)
            # the two first still work
            assert get(first, first_reader, "/first-again").status == 200
            assert get(second, second_reader, "/second-again").status == 200
        # the first one closed: a new connection is accepted (bounded: Portico may see the new
        # connection a moment before the close of the old one)
        accepted = False
        deadline = time.monotonic() + 5.0
        while not accepted and time.monotonic() < deadline:
            with connect(proxy.port) as fourth:
                try:
                    accepted = get(fourth, ResponseReader(fourth), "/fourth").status == 200
                except (ConnectionError, EOFError):
                    accepted = False
        assert accepted
        assert get(second, second_reader, "/second-last").status == 200
    assert "/refused" not in [s.target for s in backend.seen]
