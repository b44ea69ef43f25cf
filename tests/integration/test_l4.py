"""End-to-end: TCP (layer 4) listeners relay bytes untouched between clients and servers.

The real `portico run` (one worker) sits in front of small asyncio TCP servers run in a thread
(`StreamServers`): echo, a byte source, a sink, a summary-on-EOF server and real TLS servers (a
certificate from `trustme`). Clients are plain sockets. Checked: balancing, 64 MiB both ways
intact, back-pressure with bounded worker memory, half-close both ways, the idle timeout, the
PROXY protocol out (v1/v2) and in (trusted, untrusted, malformed), SNI passthrough routing, and
connect retries. Run with `-s` for the throughput and memory figures.

Every test runs once per copy the build has: the native engine (portico.proxy._relay, the
compiled build's) and the Python protocols (PORTICO_L4_ENGINE=python, and the pure build's).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import select
import signal
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from fakes import Portico

NATIVE = importlib.util.find_spec("portico.proxy._relay") is not None
MiB = 1 << 20
MEMORY_BUDGET = 64 * MiB
WAIT = 10.0  # the longest any single wait in these tests may take


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """One test server and what it saw, updated from the server thread."""

    name: str
    mode: str  # echo | greet-echo | summary | source | sink | tls
    total: int = 0  # source: bytes to send
    port: int = 0
    connections: int = 0
    heads: list[bytearray] = field(default_factory=list)  # first 64 KiB of each connection
    received: int = 0  # bytes, over all connections
    sink_totals: list[int] = field(default_factory=list)  # sink: bytes read per connection
    sent: int = 0  # source: bytes handed to the socket
    paused: bool = False  # source: writing held by flow control
    flow_changes: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def changed(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_stalled(self, quiet: float = 0.5, timeout: float = WAIT) -> bool:
        """Wait until the source's writing is held by flow control and stays held `quiet`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < deadline:
                if not self.cond.wait_for(lambda: self.paused, deadline - time.monotonic()):
                    return False
                seen = self.flow_changes
                if not self.cond.wait_for(lambda seen=seen: self.flow_changes != seen, quiet):
                    return True
        return False


class _Conn(asyncio.Protocol):
    def __init__(self, server: Server, block: bytes, live: set[_Conn]) -> None:
        self.server = server
        self.live = live
        self.block = block
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.count = 0
        self.crc = 0
        self.left = server.total
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.live.add(self)
        server = self.server
        server.connections += 1
        server.heads.append(self.head)
        if server.mode in ("greet-echo", "source", "sink", "tls"):
            transport.write(server.name.encode() + b"\n")  # type: ignore[attr-defined]
        if server.mode == "tls":
            transport.close()
        elif server.mode == "sink":
            transport.write_eof()  # type: ignore[attr-defined]
        elif server.mode == "source":
            self.produce()
        server.changed()

    def produce(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.left and not self.writing_paused:
            chunk = self.block[: min(self.left, len(self.block))]
            self.left -= len(chunk)
            self.server.sent += len(chunk)
            transport.write(chunk)
        if not self.left:
            transport.close()

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.received += len(data)
        if len(self.head) < 65536:
            self.head += data[: 65536 - len(self.head)]
        if server.mode in ("echo", "greet-echo"):
            assert self.transport is not None
            self.transport.write(data)
        self.count += len(data)
        self.crc = zlib.crc32(data, self.crc)
        server.changed()

    def eof_received(self) -> bool:
        server = self.server
        assert self.transport is not None
        if server.mode == "summary":
            self.transport.write(f"{server.name} {self.count} {self.crc}\n".encode())
        if server.mode == "sink":
            server.sink_totals.append(self.count)
        server.changed()
        return False  # close once what is queued is sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.server.mode in ("echo", "greet-echo") and self.transport is not None:
            self.transport.pause_reading()
        with self.server.cond:
            self.server.paused = True
            self.server.flow_changes += 1
            self.server.cond.notify_all()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.server.mode in ("echo", "greet-echo") and self.transport is not None:
            self.transport.resume_reading()
        with self.server.cond:
            self.server.paused = False
            self.server.flow_changes += 1
            self.server.cond.notify_all()
        if self.server.mode == "source" and self.left:
            self.produce()


class StreamServers:
    """Test servers on one event loop in a thread; `stop` closes every socket."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []
        self.live: set[_Conn] = set()  # open server-side connections
        self.block = bytes(range(256)) * 4096  # 1 MiB

    def start(
        self, name: str, mode: str = "greet-echo", total: int = 0, tls: ssl.SSLContext | None = None
    ) -> Server:
        server = Server(name, mode, total)

        async def listen() -> int:
            srv = await self.loop.create_server(
                lambda: _Conn(server, self.block, self.live), "127.0.0.1", 0, ssl=tls
            )
            self.servers.append(srv)
            return int(srv.sockets[0].getsockname()[1])

        server.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(WAIT)
        return server

    def stop(self) -> None:
        async def close() -> None:
            for srv in self.servers:
                srv.close()
            for conn in list(self.live):
                if conn.transport is not None:
                    conn.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture
def servers() -> Iterator[StreamServers]:
    made = StreamServers()
    yield made
    made.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening (connecting is refused) for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def config(listener: str, pools: dict[str, tuple[list[Server], str]]) -> str:
    """One TCP listener (`listener`: its extra YAML lines) in front of `pools`."""
    out = (
        "workers: 1\nshutdown_grace: 1s\nlisteners:\n"
        "  - name: l4\n    bind: 127.0.0.1:0\n    protocol: tcp\n"
        + "".join(f"    {line}\n" for line in listener.strip("\n").splitlines())
        + "pools:\n"
    )
    for name, (members, extra) in pools.items():
        out += f"  {name}:\n" + "".join(f"    {line}\n" for line in extra.strip().splitlines())
        out += "    servers:\n" + "".join(
            f"      - address: {s.address}\n        name: {s.name}\n" for s in members
        )
    return out


@pytest.fixture(params=["native", "python"] if NATIVE else ["python"])
def copy(request: pytest.FixtureRequest) -> str:
    """How the worker copies bytes: its native engine, or the Python protocols."""
    return str(request.param)


@pytest.fixture
def portico(portico: Callable[..., Portico], copy: str) -> Callable[..., Portico]:
    """conftest's `portico`, with the copy this run of the test is for."""

    def start(config: str, *args: Any, **options: Any) -> Portico:
        env = dict(options.pop("env", None) or {})
        if copy == "python":
            env["PORTICO_L4_ENGINE"] = "python"
        return portico(config, *args, env=env, **options)

    return start


# -- client helpers ---------------------------------------------------------------------------


def dial(proxy: Portico) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)


def read_line(sock: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            raise EOFError(f"closed after {out!r}")
        out += data
    return out


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def read_to_end(sock: socket.socket) -> bytes:
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def is_closed(sock: socket.socket) -> bool:
    """Whether the proxy closed `sock` (EOF or reset) without sending anything more."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def epoll_sets(proxy: Portico) -> int:
    """How many epoll descriptors the only worker holds (its loop's, and its engine's)."""
    (pid,) = proxy.worker_pids()
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return sum(link == "anon_inode:[eventpoll]" for link in links)


def worker_rss(proxy: Portico, field: str = "VmRSS") -> int:
    """The only worker's resident size (VmRSS) or its peak so far (VmHWM), in bytes."""
    (pid,) = proxy.worker_pids()
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- balancing and relaying -------------------------------------------------------------------


def test_round_robin_spreads_connections_over_three_servers(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    members = [servers.start(name) for name in ("a", "b", "c")]
    proxy = portico(config("default_pool: app", {"app": (members, "policy: round_robin")}))
    names = []
    for i in range(6):
        with dial(proxy) as sock:
            names.append(read_line(sock).strip().decode())
            sock.sendall(b"ping %d" % i)
            assert read_exactly(sock, 6) == b"ping %d" % i
    assert sorted(names) == ["a", "a", "b", "b", "c", "c"]
    assert names[:3] == names[3:]  # in turn


def test_the_copy_asked_for_is_the_one_that_runs(
    servers: StreamServers, portico: Callable[[str], Portico], copy: str
) -> None:
    echo = servers.start("echo", "echo")
    proxy = portico(config("default_pool: app", {"app": ([echo], "")}))
    loop_only = epoll_sets(proxy)
    with dial(proxy) as sock:
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        # the native engine watches its sockets in an epoll set of its own, made at first use
        assert epoll_sets(proxy) == loop_only + (copy == "native")


def test_large_transfer_both_ways_is_intact(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    proxy = portico(config("default_pool: app", {"app": ([echo], "")}))
    total = 64 * MiB
    block = bytes(range(256)) * 4096
    sent_crc = 0
    failures: list[BaseException] = []
    rss_before = worker_rss(proxy)

    with dial(proxy) as sock:

        def send() -> None:
            nonlocal sent_crc
            try:
                for index in range(total // MiB):
                    chunk = index.to_bytes(8, "big") + block[8:]
                    sent_crc = zlib.crc32(chunk, sent_crc)
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)

        started = time.monotonic()
        sender = threading.Thread(target=send)
        sender.start()
        got = 0
        got_crc = 0
        while data := sock.recv(1 << 18):
            got += len(data)
            got_crc = zlib.crc32(data, got_crc)
        elapsed = time.monotonic() - started
        sender.join(WAIT)
    assert not failures
    assert got == total
    assert got_crc == sent_crc
    growth = worker_rss(proxy, "VmHWM") - rss_before  # the peak during the transfer
    print(
        f"\nL4 echo: {total / MiB:.0f} MiB each way in {elapsed:.2f} s "
        f"= {2 * total / MiB / elapsed:.0f} MiB/s through the worker, RSS growth "
        f"{growth / MiB:.1f} MiB"
    )
    assert growth < MEMORY_BUDGET


def test_slow_reader_holds_the_server_back_with_bounded_memory(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    total = 128 * MiB
    source = servers.start("source", "source", total=total)
    proxy = portico(config("default_pool: app", {"app": ([source], "")}))
    rss_before = worker_rss(proxy)
    with dial(proxy) as sock:
        assert read_line(sock) == b"source\n"
        # the client reads nothing more: the server must be held back by flow control
        assert source.wait_stalled(), "the source was never held back"
        growth = worker_rss(proxy, "VmHWM") - rss_before
        print(
            f"\nL4 stalled reader: server sent {source.sent / MiB:.0f} of {total / MiB:.0f} MiB"
            f" before stalling, worker RSS growth {growth / MiB:.1f} MiB"
        )
        assert source.sent < 64 * MiB
        assert growth < MEMORY_BUDGET
        # the client reads again: everything arrives
        assert len(read_to_end(sock)) == total


def test_client_half_close_still_gets_the_whole_answer(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    summary = servers.start("sum", "summary")
    proxy = portico(config("default_pool: app", {"app": ([summary], "")}))
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    with dial(proxy) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server answers only after this EOF
        answer = read_to_end(sock)
    assert answer == f"sum {len(payload)} {zlib.crc32(payload)}\n".encode()


def test_server_half_close_still_gets_the_client_bytes(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    sink = servers.start("sink", "sink")  # sends its name, shuts its write side, reads on
    proxy = portico(config("default_pool: app", {"app": ([sink], "")}))
    payload = b"x" * (2 * MiB)
    with dial(proxy) as sock:
        assert read_to_end(sock) == b"sink\n"  # EOF from the server, passed on
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert sink.wait(lambda: sink.sink_totals == [len(payload)])
        assert is_closed(sock)  # both ways done: closed


def test_idle_timeout_closes_a_silent_connection(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "greet-echo")
    proxy = portico(config("default_pool: app\nidle_timeout: 300ms", {"app": ([echo], "")}))
    with dial(proxy) as sock:
        assert read_line(sock) == b"echo\n"
        # busy for longer than the idle timeout: the connection stays
        busy_until = time.monotonic() + 0.7
        while time.monotonic() < busy_until:
            sock.sendall(b".")
            assert read_exactly(sock, 1) == b"."
            silent_since = time.monotonic()  # the last byte either way: silence starts here
            readable, _, _ = select.select([sock], [], [], 0.1)  # nothing may arrive (no EOF)
            assert not readable
        assert is_closed(sock)
        silent = time.monotonic() - silent_since
    assert 0.25 < silent < 3.0, silent


def test_shutdown_resets_a_relayed_connection_once_the_grace_time_is_over(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    proxy = portico(config("default_pool: app", {"app": ([echo], "")}))  # shutdown_grace: 1s
    with dial(proxy) as sock:
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        # a TCP stream has no request boundary to stop at: it runs on through the grace time
        sock.sendall(b"still")
        assert read_exactly(sock, 5) == b"still"
        assert is_closed(sock)  # then the worker ends it, and exits
        assert time.monotonic() - started >= 0.9
    assert proxy.stop() == 0


def test_a_reload_keeps_relaying_until_the_grace_time_and_new_connections_go_on(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    proxy = portico(config("default_pool: app", {"app": ([echo], "")}))  # shutdown_grace: 1s
    (old_worker,) = proxy.worker_pids()
    with dial(proxy) as old:
        old.sendall(b"before")
        assert read_exactly(old, 6) == b"before"
        proxy.proc.send_signal(signal.SIGHUP)
        assert "generation 1" in proxy.wait_stdout("portico: reloaded")
        reloaded = time.monotonic()
        with dial(proxy) as new:  # the new worker's (its own engine, its own thread)
            new.sendall(b"new")
            assert read_exactly(new, 3) == b"new"
            # the old worker's connection runs on through its grace time
            old.sendall(b"during")
            assert read_exactly(old, 6) == b"during"
            assert is_closed(old)  # then the old worker ends it, and exits
            assert time.monotonic() - reloaded >= 0.5
            new.sendall(b"after")
            assert read_exactly(new, 5) == b"after"
        deadline = time.monotonic() + WAIT
        while old_worker in proxy.worker_pids():
            assert time.monotonic() < deadline, "the old worker did not exit"
            time.sleep(0.05)
    assert proxy.stop() == 0


def test_dead_server_connect_is_retried_on_another(
    servers: StreamServers, portico: Callable[[str], Portico], dead_port: int
) -> None:
    live = servers.start("live")
    dead = Server("dead", "echo", port=dead_port)
    proxy = portico(
        config(
            "default_pool: app",
            {"app": ([dead, live], "retries: 1\nhealth:\n  passive:\n    enabled: false")},
        )
    )
    for _ in range(4):
        with dial(proxy) as sock:
            assert read_line(sock) == b"live\n"
    assert live.connections == 4


def test_no_server_reachable_closes_the_client(
    portico: Callable[[str], Portico], dead_port: int
) -> None:
    dead = Server("dead", "echo", port=dead_port)
    proxy = portico(config("default_pool: app", {"app": ([dead], "retries: 0")}))
    with dial(proxy) as sock:
        assert is_closed(sock)


def test_limits_at_accept_and_max_conns(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo")
    proxy = portico(config("default_pool: app\nmax_conns_per_client: 1", {"app": ([echo], "")}))
    with dial(proxy) as first:
        assert read_line(first) == b"echo\n"
        with dial(proxy) as second:
            assert is_closed(second)  # one connection per client address
    full = servers.start("full")
    proxy = portico(config("default_pool: app", {"app": ([full], "max_conns: 1")}))
    with dial(proxy) as first:
        assert read_line(first) == b"full\n"
        with dial(proxy) as second:
            assert is_closed(second)  # the only server is at max_conns: no queue for TCP
    # the slot is free again once the first connection is over (polled: its end is async)
    deadline = time.monotonic() + WAIT
    while True:
        with dial(proxy) as third, contextlib.suppress(EOFError, ConnectionResetError):
            assert read_line(third) == b"full\n"
            break
        assert time.monotonic() < deadline, "the server slot was never released"


# -- PROXY protocol ---------------------------------------------------------------------------


def v2_header(src: tuple[str, int], dst: tuple[str, int], tlvs: bytes = b"") -> bytes:
    body = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    body += tlvs
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, 0x11)) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_sent_to_the_server(
    servers: StreamServers, portico: Callable[[str], Portico], version: str
) -> None:
    echo = servers.start("echo", "echo")
    proxy = portico(config("default_pool: app", {"app": ([echo], f"proxy_protocol: {version}")}))
    with dial(proxy) as sock:
        client = sock.getsockname()
        sock.sendall(b"hello")
        if version == "v1":
            expected = f"PROXY TCP4 127.0.0.1 127.0.0.1 {client[1]} {proxy.port}\r\n".encode()
        else:
            expected = v2_header(("127.0.0.1", client[1]), ("127.0.0.1", proxy.port))
        assert read_exactly(sock, len(expected) + 5) == expected + b"hello"
    assert bytes(echo.heads[0]) == expected + b"hello"


def test_proxy_header_from_a_trusted_peer_gives_the_real_client(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    listener = "default_pool: app\nproxy_protocol:\n  trusted: [127.0.0.0/8]"
    proxy = portico(config(listener, {"app": ([echo], "proxy_protocol: v1")}))
    src, dst = ("203.0.113.7", 40001), ("198.51.100.1", 443)
    incoming = [
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
        v2_header(src, dst),
        v2_header(src, dst, tlvs=b"\x04\x00\x04noop"),  # a TLV, skipped
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 443\r\n",
    ]
    expected = [
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 443\r\n",
    ]
    for header, out in zip(incoming, expected, strict=True):
        with dial(proxy) as sock:
            sock.sendall(header + b"data")
            assert read_exactly(sock, len(out) + 4) == out + b"data"


def test_ip_hash_follows_the_address_in_the_proxy_header(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    members = [servers.start(name) for name in ("a", "b", "c")]
    listener = "default_pool: app\nproxy_protocol:\n  trusted: [127.0.0.1]"
    proxy = portico(config(listener, {"app": (members, "policy: ip_hash")}))
    chosen: dict[str, set[str]] = {}
    for i in range(12):
        source = f"192.0.2.{i % 6 + 1}"
        with dial(proxy) as sock:
            sock.sendall(f"PROXY TCP4 {source} 192.0.2.200 5000 80\r\n".encode())
            chosen.setdefault(source, set()).add(read_line(sock).strip().decode())
    assert all(len(names) == 1 for names in chosen.values())  # one server per client
    assert len(set().union(*chosen.values())) >= 2  # spread by the header's address


def test_proxy_header_from_an_untrusted_peer_is_refused(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    listener = "default_pool: app\nproxy_protocol:\n  trusted: [10.0.0.0/8, '::1']"
    proxy = portico(config(listener, {"app": ([echo], "")}))
    for header in (
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n",
        v2_header(("203.0.113.7", 40001), ("198.51.100.1", 443)),
    ):
        with dial(proxy) as sock:
            sock.sendall(header + b"data")
            assert is_closed(sock)
    assert echo.received == 0
    with dial(proxy) as sock:  # without a header the same peer is served as itself
        sock.sendall(b"plain")
        assert read_exactly(sock, 5) == b"plain"


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
    b"PROXY TCP4 1.2.3.4\r\n",  # fields missing
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",  # family mismatch
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY " + b"A" * 200,  # no CRLF within 107 bytes
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),  # version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + bytes(12),  # command 2
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4),  # address block too short
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x41\x00\x00",  # family 4
]


def test_malformed_proxy_header_is_refused(
    servers: StreamServers, portico: Callable[[str], Portico]
) -> None:
    echo = servers.start("echo", "echo")
    listener = "default_pool: app\nproxy_protocol:\n  trusted: [127.0.0.0/8]"
    proxy = portico(config(listener, {"app": ([echo], "")}))
    for garbage in MALFORMED:
        with dial(proxy) as sock:
            sock.sendall(garbage)
            assert is_closed(sock), garbage
    with dial(proxy) as sock:  # cut short by the client: refused, never relayed
        sock.sendall(b"PROXY TCP4 1.2.3.4 5.6")
        sock.shutdown(socket.SHUT_WR)
        assert is_closed(sock)
    assert echo.connections == 0


# -- TLS passthrough --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a.example.com, b.example.com and other.test."""
    ca = trustme.CA()
    cert = ca.issue_cert("a.example.com", "b.example.com", "other.test")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def tls_name(proxy: Portico, client: ssl.SSLContext, server_name: str | None) -> bytes:
    """Connect through the proxy with TLS (verifying the certificate) and read the line the
    server sends: its name."""
    if server_name is None:
        client = ssl.create_default_context(cafile=None)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    with dial(proxy) as raw, client.wrap_socket(raw, server_hostname=server_name) as sock:
        return read_line(sock)


def test_tls_passthrough_routes_by_server_name(
    servers: StreamServers,
    portico: Callable[[str], Portico],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    a = servers.start("A", "tls", tls=server_ctx)
    b = servers.start("B", "tls", tls=server_ctx)
    fallback = servers.start("D", "tls", tls=server_ctx)
    listener = (
        "default_pool: default\n"
        "sni_routes:\n"
        "  a.example.com: pool_a\n"  # exact beats the wildcard below
        "  '*.example.com': pool_b\n"
    )
    pools = {"default": ([fallback], ""), "pool_a": ([a], ""), "pool_b": ([b], "")}
    proxy = portico(config(listener, pools))
    assert tls_name(proxy, client_ctx, "a.example.com") == b"A\n"
    assert tls_name(proxy, client_ctx, "b.example.com") == b"B\n"
    assert tls_name(proxy, client_ctx, "other.test") == b"D\n"
    assert tls_name(proxy, client_ctx, None) == b"D\n"  # no SNI at all


@pytest.mark.parametrize("on_bad_hello", ["default", "close"])
def test_garbage_instead_of_a_client_hello(
    servers: StreamServers, portico: Callable[[str], Portico], on_bad_hello: str
) -> None:
    echo = servers.start("echo", "echo")
    other = servers.start("other", "echo")
    listener = (
        f"default_pool: default\non_bad_hello: {on_bad_hello}\n"
        "sni_routes:\n  a.example.com: routed\n"
    )
    proxy = portico(config(listener, {"default": ([echo], ""), "routed": ([other], "")}))
    with dial(proxy) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if on_bad_hello == "default":
            assert read_exactly(sock, 18) == b"GET / HTTP/1.0\r\n\r\n"  # bytes kept untouched
        else:
            assert is_closed(sock)
    assert echo.connections == (1 if on_bad_hello == "default" else 0)
    assert other.connections == 0
