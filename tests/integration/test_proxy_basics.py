"""End-to-end: the real `portico run` in front of real sockets."""

from __future__ import annotations

from conftest import simple_config
from fakes import ResponseReader, connect, request


def test_round_robin_spreads_requests_over_backends(backends, portico) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(simple_config(pool))
    answered = [request(proxy.port).header("X-Backend") for _ in range(6)]
    assert sorted(answered) == ["b0", "b0", "b1", "b1", "b2", "b2"]
    assert answered[:3] != answered[1:4]  # rotates rather than repeating one backend


def test_keep_alive_connection_serves_many_requests_and_reuses_upstream(backends, portico) -> None:
    b = backends("only")
    proxy = portico(simple_config([b]))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for i in range(20):
            sock.sendall(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = reader.read()
            assert response.status == 200
            assert response.body == b"only"
    assert [s.target for s in b.seen] == [f"/{i}" for i in range(20)]
    assert b.connections == 1  # one pooled upstream connection carried all 20
