"""Big response bodies spliced to the client in the kernel (portico.upstreams.splice) end to end:
they arrive whole and in order on reused connections, are counted in the access log and the
metrics, stay bounded for a reader that stops, and every way a body can fail mid-way (server
cut, server silent, client gone, client not reading) ends as on the copying path: the client
can tell the body is incomplete, the server connection is dropped, the worker goes on."""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import threading
import time
import zlib

import pytest

from conftest import simple_config
from fakes import (
    Reply,
    ResponseReader,
    Seen,
    client_bytes,
    connect,
    eventually,
    pipe_kib,
    request,
    rss_kib,
    settled,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="splice(2) is Linux's")

MIB = 1 << 20
KIB = 1 << 10
ADMIN = "admin:\n  bind: 127.0.0.1:0\n"


def pattern(tag: bytes, size: int) -> bytes:
    """`size` bytes in which every 16-byte line says which body and where."""
    return b"".join(b"%s%013d\n" % (tag, i) for i in range((size + 15) // 16))[:size]


SIZES = {"/a": MIB + 7, "/b": 3 * MIB, "/c": 200 * KIB + 1}
BODIES = {target: pattern(target[1:].encode() * 2, size) for target, size in SIZES.items()}


def bodies(seen: Seen) -> Reply:
    body = BODIES.get(seen.target)
    if body is None:
        return Reply(body=b"small")
    # in 256 KiB writes, as a server streams a file
    return Reply(body=[body[i : i + 256 * KIB] for i in range(0, len(body), 256 * KIB)])


def send(sock: socket.socket, target: str) -> int:
    raw = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    sock.sendall(raw)
    return len(raw)


class Counted:
    """A socket's reads, counted (what `ResponseReader` calls of it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.read = 0

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.read += len(data)
        return data


def test_big_bodies_arrive_whole_in_order_on_reused_connections_and_are_counted(
    backends, portico, tmp_path
) -> None:
    backend = backends("b", bodies)
    log = tmp_path / "access.log"
    proxy = portico(
        simple_config(
            [backend],
            top=ADMIN,
            extra_listener=f"    access_log: {{path: {log}, format: json}}\n",
        )
    )
    targets = ["/a", "/b", "/c", "/a", "/small"]
    written = 0
    with connect(proxy.port) as sock:
        counted = Counted(sock)
        reader = ResponseReader(counted)  # type: ignore[arg-type]
        for target in targets:  # one after another on one client connection
            written += send(sock, target)
            response = reader.read()
            assert response.status == 200
            assert response.body == BODIES.get(target, b"small"), target
    # the server connection was kept and reused after every spliced body
    assert [seen.connection for seen in backend.seen] == [1] * len(targets)
    # every byte the client read was counted as sent, spliced ones included
    eventually(
        lambda: client_bytes(proxy, "web") == (written, counted.read),
        f"{written} bytes in and {counted.read} out in /metrics",
    )
    assert proxy.stop(signal.SIGTERM) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["body_bytes_sent"] for entry in lines] == [
        len(BODIES.get(target, b"small")) for target in targets
    ]
    assert [entry["status"] for entry in lines] == [200] * len(targets)


def test_a_head_sent_alone_goes_out_before_the_body_then_the_body_whole(backends, portico) -> None:
    """A server that sends a big body's head, then the body later: the head is not held back
    until body bytes come (the splice starts from the head), and the body follows whole."""
    release = threading.Event()
    body = pattern(b"hh", 2 * MIB)
    backend = backends("b", lambda seen: Reply(body=[body], hold_last=release))
    proxy = portico(simple_config([backend]))
    try:
        with connect(proxy.port, timeout=10) as sock:
            send(sock, "/held")
            head = b""
            while b"\r\n\r\n" not in head:  # arrives while the server holds the body
                data = sock.recv(4096)
                assert data, "closed before the head"
                head += data
            assert head.startswith(b"HTTP/1.1 200")
            assert head.endswith(b"\r\n\r\n")  # the head alone
            release.set()
            rest = b""
            while len(rest) < len(body):
                data = sock.recv(MIB)
                assert data, f"closed after {len(rest)} body bytes"
                rest += data
    finally:
        release.set()
    assert rest == body


def test_a_reader_that_stops_leaves_at_most_the_response_buffer_in_the_workers_pipe(
    backends, portico
) -> None:
    size = 64 * MIB
    block = pattern(b"zz", MIB)
    backend = backends(
        "b",
        lambda seen: (
            Reply(body=(block for _ in range(64)), length=size)
            if seen.target == "/big"
            else Reply(body=b"small")
        ),
    )
    proxy = portico(simple_config([backend]))
    [worker] = proxy.worker_pids()
    assert request(proxy.port, target="/small").status == 200
    rss_before = rss_kib(worker)
    with connect(proxy.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        send(sock, "/big")
        first = sock.recv(64 * KIB)
        assert first.startswith(b"HTTP/1.1 200")
        assert backend.wait_stalled(quiet=0.5, timeout=15), "the server never had to stop"
        held = settled(lambda: pipe_kib(worker))
        sent = backend.body_bytes_sent
        # the rest waits in the worker's pipe: what the kernel took from the server and the
        # client has not taken, no more than `limits.response_buffer` (64 KiB)
        assert 0 < held <= 64, f"{held} KiB in the worker's pipes"
        assert sent < 32 * MIB  # the server was stopped long before the end
        assert rss_kib(worker) - rss_before < 2 * KIB  # and none of it in user space
        crc = zlib.crc32(first.partition(b"\r\n\r\n")[2])
        got = len(first.partition(b"\r\n\r\n")[2])
        while got < size:  # the reader goes on: the rest follows, in order
            data = sock.recv(MIB)
            assert data, f"closed after {got} body bytes"
            crc = zlib.crc32(data, crc)
            got += len(data)
    assert got == size
    assert crc == zlib.crc32(block * 64)
    assert pipe_kib(worker) == 0


def test_a_server_cut_mid_body_closes_the_client_before_its_content_length(
    backends, portico, tmp_path
) -> None:
    chunks = [b"a" * MIB, b"b" * MIB, b"c" * MIB]  # the third is never sent: the server aborts
    backend = backends("b", lambda seen: Reply(body=chunks, action="truncate"))
    log = tmp_path / "access.log"
    proxy = portico(
        simple_config([backend], extra_listener=f"    access_log: {{path: {log}, format: json}}\n")
    )
    with connect(proxy.port) as sock:
        send(sock, "/cut")
        raw = b""
        while True:
            data = sock.recv(MIB)
            if not data:
                break
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: 3145728" in head.lower()
    assert len(body) < 3 * MIB  # the client can tell the body is incomplete
    assert (b"a" * MIB + b"b" * MIB).startswith(body)  # what came is the server's, in order
    backend.handler = lambda seen: Reply(body=b"after")
    assert request(proxy.port, target="/after").body == b"after"
    assert proxy.stop(signal.SIGTERM) == 0
    cut, after = (json.loads(line) for line in log.read_text().splitlines())
    assert cut["body_bytes_sent"] == len(body)
    assert after["status"] == 200


def test_a_server_silent_mid_body_is_cut_after_the_read_timeout(backends, portico) -> None:
    release = threading.Event()
    chunks = [b"a" * MIB, b"b" * MIB, b"c" * MIB]
    backend = backends("b", lambda seen: Reply(body=chunks, hold_last=release))
    proxy = portico(simple_config([backend], extra_pool="    timeouts: {read: 0.5s}\n"))
    try:
        with connect(proxy.port, timeout=10) as sock:
            send(sock, "/slow")
            started = time.monotonic()
            got = 0
            while True:
                data = sock.recv(MIB)
                if not data:
                    break
                got += len(data)
            waited = time.monotonic() - started
    finally:
        release.set()
    assert got < 3 * MIB  # cut, never presented as complete
    assert 0.4 < waited < 5, f"cut after {waited:.2f} s"
    eventually(lambda: backend.open_connections == 0, "the server connection dropped")


def test_a_client_gone_mid_body_drops_the_server_connection(backends, portico) -> None:
    block = pattern(b"gg", MIB)
    backend = backends(
        "b",
        lambda seen: (
            Reply(body=(block for _ in range(256)), length=256 * MIB)
            if seen.target == "/big"
            else Reply(body=b"small")
        ),
    )
    proxy = portico(simple_config([backend]))
    sock = connect(proxy.port)
    send(sock, "/big")
    got = 0
    while got < 2 * MIB:
        got += len(sock.recv(MIB))
    # a reset, not a FIN: the worker's next splice to the socket fails
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    eventually(lambda: backend.open_connections == 0, "the server connection dropped")
    # dropped mid-body: the worker did not read the rest of the body for nobody
    assert backend.body_bytes_sent < 128 * MIB
    assert request(proxy.port, target="/small").body == b"small"  # the worker goes on


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(backends, portico) -> None:
    block = pattern(b"tt", MIB)
    backend = backends("b", lambda seen: Reply(body=(block for _ in range(64)), length=64 * MIB))
    proxy = portico(simple_config([backend], extra_listener="    timeouts: {send: 0.5s}\n"))
    with connect(proxy.port, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        send(sock, "/big")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        eventually(lambda: backend.open_connections == 0, "the server connection dropped")
        # cut: what was in flight, then the end, before the body's length
        assert drain(sock) < 64 * MIB


def drain(sock: socket.socket) -> int:
    """Read until the connection ends; the bytes read."""
    got = 0
    while True:
        data = sock.recv(MIB)
        if not data:
            return got
        got += len(data)
