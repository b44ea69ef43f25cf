"""The TCP relay (proxy/l4.py) through fake transports and a fake clock, without an event loop:
server choice and retries, the PROXY header, flow control, half-close, idle timeout and the
server's in-flight count."""

from __future__ import annotations

import contextlib
import importlib.util
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fakes import FakeLoop, tcp_pair
from portico.config.schema import PoolConfig
from portico.proxy import l4
from portico.proxy.l4 import IDLE_TICKS, Relay, RelayState
from portico.upstreams.backend import BackendState
from portico.upstreams.pool import Pool


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.protocol: object = None
        self.eof = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeOwner:
    def __init__(self) -> None:
        self.events: list[str] = []

    def upstream_ready(self) -> None:
        self.events.append("ready")

    def upstream_failed(self) -> None:
        self.events.append("failed")

    def relay_closed(self) -> None:
        self.events.append("closed")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[BackendState]:
    """The backends the relay started connecting to (no task is really spawned)."""
    started: list[BackendState] = []
    RELAYS.clear()

    def spawn(coro: Coroutine[Any, Any, Any]) -> None:
        # the relay spawns its connect right after choosing: the newest relay's backend (read
        # from the relay, not the coroutine's frame, which the compiled build does not have)
        backend = RELAYS[-1].backend
        assert backend is not None
        started.append(backend)
        coro.close()

    monkeypatch.setattr(l4.tasks, "spawn", spawn)
    return started


def make_pool(loop: FakeLoop, servers: int = 2, **config: Any) -> Pool:
    pool_config = PoolConfig(
        servers=[{"address": f"127.0.0.1:{1000 + i}", "name": f"s{i}"} for i in range(servers)],
        **config,
    )
    return Pool.from_config("app", pool_config, loop.time, random.Random(1))


RELAYS: list[Relay] = []  # every relay a test made, newest last


def make_relay(
    loop: FakeLoop, pool: Pool, send_proxy: dict[str, str] | None = None, idle: float = 4.0
) -> tuple[Relay, FakeOwner, FakeTransport]:
    owner = FakeOwner()
    client = FakeTransport()
    relay = Relay(
        owner,
        loop,  # type: ignore[arg-type]
        client,  # type: ignore[arg-type]
        pool,
        {"app": pool},
        send_proxy or {},
        ("203.0.113.7", 40001),
        ("198.51.100.1", 443),
        idle,
    )
    RELAYS.append(relay)
    return relay, owner, client


def connect(relay: Relay, spawned: list[BackendState]) -> FakeTransport:
    """Pick a server and complete the connection to it."""
    relay.connect()
    server = FakeTransport()
    relay.server.connection_made(server)  # type: ignore[arg-type]
    relay.connected(spawned[-1], server)  # type: ignore[arg-type]
    return server


def test_connect_counts_the_server_in_flight_for_the_connection_lifetime(
    spawned: list[BackendState],
) -> None:
    loop = FakeLoop()
    pool = make_pool(loop)
    relay, owner, _client = make_relay(loop, pool)
    server = connect(relay, spawned)
    backend = spawned[0]
    assert owner.events == ["ready"]
    assert backend.in_flight == 1
    relay.begin(b"", eof=False)
    relay.client.connection_lost(None)
    assert server.aborted  # the client went away while both ways were open
    assert backend.in_flight == 1
    relay.server.connection_lost(None)
    assert owner.events == ["ready", "closed"]
    assert backend.in_flight == 0
    assert relay.state is RelayState.DONE


def test_connect_failure_is_observed_and_retried_on_another_server(
    spawned: list[BackendState],
) -> None:
    loop = FakeLoop()
    pool = make_pool(loop, retries=1)
    relay, owner, _ = make_relay(loop, pool)
    relay.connect()
    first = spawned[0]
    relay.connect_failed(first)
    assert first.failures == 1
    assert first.in_flight == 0
    assert len(spawned) == 2
    assert spawned[1] is not first
    relay.connect_failed(spawned[1])  # retries used up
    assert owner.events == ["failed"]
    assert relay.state is RelayState.DONE
    assert all(b.in_flight == 0 for b in pool.backends)


def test_full_pool_fails_at_once(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    pool = make_pool(loop, servers=1, max_conns=1)
    pool.backends[0].in_flight = 1
    relay, owner, _ = make_relay(loop, pool)
    relay.connect()
    assert spawned == []
    assert owner.events == ["failed"]


def test_client_leaving_while_connecting_releases_the_server(
    spawned: list[BackendState],
) -> None:
    loop = FakeLoop()
    pool = make_pool(loop)
    relay, owner, _ = make_relay(loop, pool)
    relay.connect()
    assert relay.client_lost(None) is False
    assert spawned[0].in_flight == 0
    late = FakeTransport()
    relay.server.connection_made(late)  # type: ignore[arg-type]
    relay.connected(spawned[0], late)  # type: ignore[arg-type]
    assert late.aborted
    assert owner.events == []


@pytest.mark.parametrize(
    ("version", "header"),
    [
        ("v1", b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n"),
        (None, b""),
    ],
)
def test_begin_sends_the_proxy_header_then_what_the_client_sent(
    spawned: list[BackendState], version: str | None, header: bytes
) -> None:
    loop = FakeLoop()
    pool = make_pool(loop)
    relay, _, client = make_relay(loop, pool, {"app": version} if version else {})
    server = connect(relay, spawned)
    client.reading = False  # the listener had paused it
    relay.begin(b"hello", eof=False)
    assert bytes(server.written) == header + b"hello"
    assert client.protocol is relay.client
    assert client.reading
    relay.client.data_received(b" world")
    relay.server.data_received(b"answer")
    assert bytes(server.written) == header + b"hello world"
    assert bytes(client.written) == b"answer"


def test_flow_control_pauses_the_other_side(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, _, client = make_relay(loop, make_pool(loop))
    server = connect(relay, spawned)
    relay.begin(b"", eof=False)
    relay.client.pause_writing()  # the client's socket is full: stop reading the server
    assert not server.reading
    assert client.reading
    relay.client.resume_writing()
    assert server.reading
    relay.server.pause_writing()
    assert not client.reading
    relay.server.resume_writing()
    assert client.reading


def test_half_close_passes_eof_on_and_closes_when_both_ways_are_done(
    spawned: list[BackendState],
) -> None:
    loop = FakeLoop()
    relay, owner, client = make_relay(loop, make_pool(loop))
    server = connect(relay, spawned)
    relay.begin(b"request", eof=False)
    assert relay.client.eof_received() is True  # keep the socket open for the answer
    assert server.eof
    assert not client.closed
    relay.server.data_received(b"the whole answer")
    assert bytes(client.written) == b"the whole answer"
    relay.server.pause_writing()  # the client read its EOF: its socket is not paused again
    assert client.reading
    relay.server.resume_writing()
    assert relay.server.eof_received() is True
    assert client.eof
    assert client.closed
    assert server.closed
    relay.client.connection_lost(None)
    relay.server.connection_lost(None)
    assert owner.events == ["ready", "closed"]


def test_client_eof_before_begin_is_passed_on_after_the_pending_bytes(
    spawned: list[BackendState],
) -> None:
    loop = FakeLoop()
    relay, _, client = make_relay(loop, make_pool(loop))
    server = connect(relay, spawned)
    client.reading = False
    relay.begin(b"last words", eof=True)
    assert bytes(server.written) == b"last words"
    assert server.eof
    assert not client.reading  # an EOF'd socket is not read again


def test_a_reset_on_one_side_resets_the_other(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, owner, client = make_relay(loop, make_pool(loop))
    connect(relay, spawned)
    relay.begin(b"", eof=False)
    relay.server.connection_lost(ConnectionResetError())
    assert client.aborted
    relay.client.connection_lost(None)
    assert owner.events == ["ready", "closed"]


def test_server_closing_before_begin_closes_the_client(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, owner, client = make_relay(loop, make_pool(loop))
    connect(relay, spawned)
    relay.server.connection_lost(ConnectionResetError())
    assert client.aborted
    assert relay.client_lost(None) is True  # the listener's connection_lost, passed on
    assert owner.events == ["ready", "closed"]
    assert spawned[0].in_flight == 0


def test_idle_timeout_closes_only_a_silent_connection(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, _, client = make_relay(loop, make_pool(loop), idle=4.0)
    server = connect(relay, spawned)
    relay.begin(b"", eof=False)
    for _ in range(10):  # busy: one byte a second for 10 s
        loop.advance(1.0)
        relay.client.data_received(b".")
    assert not client.closed
    assert not server.closed
    loop.advance(4.0 - 0.01)
    assert not client.closed
    loop.advance(1.0 + 0.02)  # silent for the timeout (checked every quarter of it)
    assert client.closed
    assert server.closed
    assert IDLE_TICKS == 4


def test_idle_timeout_resets_a_side_that_has_unsent_bytes(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, _, client = make_relay(loop, make_pool(loop), idle=1.0)
    server = connect(relay, spawned)
    relay.begin(b"", eof=False)
    client.buffered = 1 << 16  # a client that stopped reading
    loop.advance(1.5)
    assert client.aborted
    assert server.closed


def test_abort_resets_both(spawned: list[BackendState]) -> None:
    loop = FakeLoop()
    relay, _, client = make_relay(loop, make_pool(loop))
    server = connect(relay, spawned)
    relay.begin(b"", eof=False)
    relay.abort()
    assert client.aborted
    assert server.aborted


# -- the native engine: the Relay's side of it (portico.proxy._relay itself has its own tests) --

NATIVE = importlib.util.find_spec("portico.proxy._relay") is not None
native_only = pytest.mark.skipif(not NATIVE, reason="the native engine is not built")


class ReaderLoop(FakeLoop):
    """FakeLoop that also takes the engine's add_reader (its callback run by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        del self.readers[fd]

    def is_closed(self) -> bool:
        return False


class SocketTransport(FakeTransport):
    """A client transport over a real socket, as far as `begin` looks at it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None

    def abort(self) -> None:
        super().abort()
        self.sock.close()  # as the loop does: its descriptor goes, the socket stays (dup'd)


class Native:
    """A relay with a native engine, its client (`client`) and server (`server`) ends."""

    def __init__(
        self, spawned: list[BackendState], send_proxy: dict[str, str] | None = None
    ) -> None:
        from portico.proxy import _relay

        self.loop = ReaderLoop()
        self.pool = make_pool(self.loop)
        self.engine = l4.RelayEngine(self.loop, _relay.Engine())  # type: ignore[arg-type]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client, client_end = tcp_pair(self.listener)
        server_end, self.server = tcp_pair(self.listener)
        self.owner = FakeOwner()
        self.transport = SocketTransport(client_end)
        self.relay = Relay(
            self.owner,
            self.loop,  # type: ignore[arg-type]
            self.transport,  # type: ignore[arg-type]
            self.pool,
            {"app": self.pool},
            send_proxy or {},
            ("203.0.113.7", 40001),
            ("198.51.100.1", 443),
            4.0,
            engine=self.engine,
        )
        RELAYS.append(self.relay)
        self.relay.connect()
        self.backend = spawned[-1]
        self.server_end = server_end

    def run(self, until: Callable[[], bool]) -> None:
        """Run the engine (as the loop would when its descriptor is readable) until `until()`."""
        deadline = time.monotonic() + 10.0
        while not until():
            assert time.monotonic() < deadline
            select.select([self.engine.engine.fileno()], [], [], 0.01)
            self.loop.readers[self.engine.engine.fileno()]()

    def read(self, sock: socket.socket, n: int) -> bytes:
        """`n` bytes from `sock` (b"" at its EOF), the engine run meanwhile."""
        out = b""
        deadline = time.monotonic() + 10.0
        while len(out) < n or not n:
            assert time.monotonic() < deadline
            fd = self.engine.engine.fileno()
            ready, _, _ = select.select([fd, sock], [], [], 0.01)
            if fd in ready:
                self.loop.readers[fd]()
            with contextlib.suppress(BlockingIOError):
                data = sock.recv(max(n - len(out), 1))
                if not data:
                    break
                out += data
        return out

    def close(self) -> None:
        self.engine.close()
        for sock in (self.client, self.server, self.listener, self.transport.sock):
            sock.close()


@native_only
def test_native_begin_hands_both_sockets_over_and_the_end_is_finished_once(
    spawned: list[BackendState],
) -> None:
    rig = Native(spawned, send_proxy={"app": "v1"})
    rig.relay.connected_socket(rig.backend, rig.server_end)
    assert rig.owner.events == ["ready"]
    rig.relay.begin(b"hello", eof=False)
    assert rig.relay.state is RelayState.RELAYING
    assert rig.transport.protocol is l4.DETACHED  # its closing is not the listener's business
    assert rig.transport.aborted
    header = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n"
    assert rig.read(rig.server, len(header) + 5) == header + b"hello"
    rig.client.sendall(b"more")
    rig.server.sendall(b"answer")
    assert rig.read(rig.client, 6) == b"answer"
    assert rig.read(rig.server, 4) == b"more"
    assert (rig.relay.bytes.received, rig.relay.bytes.sent) == (0, 0)  # not folded yet
    assert rig.backend.in_flight == 1
    rig.loop.advance(l4.SWEEP)  # the sweep folds what moved into the counters
    assert (rig.relay.bytes.received, rig.relay.bytes.sent) == (4, 6)
    rig.client.close()  # the client goes (FIN): passed on; the server ends too
    rig.server.shutdown(socket.SHUT_WR)
    rig.run(lambda: "closed" in rig.owner.events)
    assert rig.owner.events == ["ready", "closed"]
    assert rig.backend.in_flight == 0
    assert rig.relay.state is RelayState.DONE
    rig.relay.abort()  # late: nothing more happens
    assert rig.owner.events == ["ready", "closed"]
    rig.close()


@native_only
def test_native_abort_resets_both_and_finishes_at_once(spawned: list[BackendState]) -> None:
    rig = Native(spawned)
    rig.relay.connected_socket(rig.backend, rig.server_end)
    rig.relay.begin(b"", eof=False)
    rig.relay.abort()
    assert rig.owner.events == ["ready", "closed"]
    assert rig.backend.in_flight == 0
    select.select([rig.server], [], [], 10.0)
    with pytest.raises(ConnectionResetError):
        rig.server.recv(1)
    rig.relay.abort()
    assert rig.owner.events == ["ready", "closed"]
    rig.close()


@native_only
def test_native_client_gone_before_begin_closes_the_server_socket(
    spawned: list[BackendState],
) -> None:
    rig = Native(spawned)
    rig.relay.connected_socket(rig.backend, rig.server_end)
    assert rig.relay.client_lost(None)  # the relay ends it: relay_closed follows at once
    assert rig.owner.events == ["ready", "closed"]
    assert rig.backend.in_flight == 0
    assert rig.read(rig.server, 0) == b""  # the server's socket was closed
    rig.close()


@native_only
def test_native_connection_made_after_the_client_left_is_closed(
    spawned: list[BackendState],
) -> None:
    rig = Native(spawned)
    assert not rig.relay.client_lost(None)  # still connecting: the listener forgets it
    assert rig.backend.in_flight == 0
    rig.relay.connected_socket(rig.backend, rig.server_end)
    assert rig.owner.events == []
    assert rig.read(rig.server, 0) == b""  # closed at once
    rig.close()


@native_only
def test_native_a_server_reset_before_begin_finishes_the_relay_in_begin(
    spawned: list[BackendState],
) -> None:
    rig = Native(spawned)
    rig.relay.connected_socket(rig.backend, rig.server_end)
    rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.server.close()
    select.select([rig.server_end], [], [], 10.0)  # the reset has arrived
    rig.relay.begin(b"request", eof=False)  # sending it fails: the pair ends in add
    assert rig.owner.events == ["ready", "closed"]
    assert rig.backend.in_flight == 0
    rig.close()
