"""The byte relay of a TCP listener: one server connection per client connection, and every
byte copied both ways untouched.

Owns: picking a server (`Pool.select`, the client address as hash key), connecting with the
pool's timeout and retrying another server on failure, the server's in-flight count for the
connection's lifetime, the PROXY header to the server when the pool asks for one, and then the
copy itself: flow control (a side that cannot take more stops reading on the other), half-close
(an EOF one way is passed on as a shutdown of the write side, the other way keeps flowing) and
the idle timeout. Never looks into the bytes: the listener (`portico.listeners.tcp`) reads any
PROXY header and ClientHello first and decides the pool.

Two ways to copy, the same behaviour:

- The native engine (`portico.proxy._relay`, C, in the compiled build): the server is connected
  with a plain non-blocking socket (connect(2), the loop told to wake on writability); at
  `begin` the client's socket leaves its transport (its descriptor duplicated, the transport
  aborted: uvloop and asyncio only drop their descriptor, no shutdown, no reset) and both
  sockets go to the loop's `RelayEngine`: one epoll set of its own and a thread of its own
  that copies what every ready socket has, in C, without the GIL (no Python call and no loop
  turn per read, see _relay.c). The loop hears only of pairs that ended (an eventfd it
  watches with `add_reader`); `RelayEngine`'s sweep, every `SWEEP` seconds at most (less when
  an idle timeout is short), folds the bytes moved into the listener's counters (so they lag
  by at most that) and closes pairs silent both ways for their idle timeout (within +25%, as
  below).
- Two lean asyncio Protocols, one per socket (pure-Python build, `PORTICO_L4_ENGINE=python`, a
  relay `adopt`ed after an HTTP upgrade, or a client whose checks were pending when the server
  connected): `data_received` writes to the other transport and marks the connection busy,
  nothing else. The client's transport is switched to its relay protocol (`set_protocol`) only
  once the server connection is up and the listener's checks are done, so the per-chunk path
  never tests a phase; the idle timeout ticks every idle_timeout / 4 from those marks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from portico import tasks
from portico.observe.stats import ByteCounter
from portico.proxy import proxy_protocol
from portico.proxy.proxy_protocol import Address
from portico.timers import Deadline
from portico.upstreams.backend import BackendState, report_connect_failure, report_connected
from portico.upstreams.pool import Pool

if TYPE_CHECKING:
    from portico.proxy._relay import Engine, Pair

IDLE_TICKS: Final = 4  # the idle timeout is checked this often per period (closes within +25%)
SWEEP: Final = 2.0  # the native engine's longest sweep period: how far byte counters lag (s)
ENGINE_ENV: Final = "PORTICO_L4_ENGINE"  # "python": the Python copy even where C is built


class Owner(Protocol):
    """The client connection a relay serves (the TCP listener's protocol)."""

    def upstream_ready(self) -> None:
        """The server connection is up: call `Relay.begin` when the client's bytes may go."""

    def upstream_failed(self) -> None:
        """No server could be reached: close the client."""

    def relay_closed(self) -> None:
        """Both sockets are closed (after `upstream_ready`): the connection is over."""


class RelayState(Enum):
    CONNECTING = "connecting"  # picking a server, connecting (possibly again after a failure)
    CONNECTED = "connected"  # server to client flows; client to server waits for `begin`
    RELAYING = "relaying"  # both ways
    DONE = "done"


def _unset(data: bytes) -> object:
    raise AssertionError("a relay side read before the other side's transport was set")


class _Side(asyncio.Protocol):
    """One socket of the relay: what it reads goes to the other socket's transport."""

    __slots__ = ("heard", "lost", "other", "out", "read_done", "relay", "send", "transport")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None  # the other side's transport
        # ... and its bound `write`, looked up once: per chunk a plain call of the loop's
        # method instead of a method look-up by name (bench/relaypath.py --callgrind)
        self.send: Callable[[bytes], object] = _unset
        self.other: _Side = self
        self.heard = False  # read something since the last idle check
        self.read_done = False  # EOF received: nothing more will be read here
        self.lost = False  # connection_lost happened

    def send_to(self, transport: asyncio.Transport) -> None:
        """What this side reads goes to `transport` (set before its first read)."""
        self.out = transport
        self.send = transport.write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # only the server side is ever connected through this protocol
        self.transport = cast(asyncio.Transport, transport)
        if self.relay.state is RelayState.DONE:
            self.transport.abort()  # the client left while we connected

    def data_received(self, data: bytes) -> None:
        self.send(data)
        self.heard = True

    def eof_received(self) -> bool:
        return self.relay.side_eof(self)

    def pause_writing(self) -> None:
        # this socket's send buffer is full: stop reading what fills it
        other = self.other
        if not other.read_done and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if not other.read_done and other.transport is not None:
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.side_lost(self, exc)


class _ClientSide(_Side):
    """The client's socket: what it reads is counted as received from the client."""

    __slots__ = ("counter",)

    def __init__(self, relay: Relay, counter: ByteCounter) -> None:
        super().__init__(relay)
        self.counter = counter

    def data_received(self, data: bytes) -> None:
        self.send(data)
        self.heard = True
        self.counter.received += len(data)


class _ServerSide(_Side):
    """The server's socket: what it reads goes to the client, counted as sent to it."""

    __slots__ = ("counter",)

    def __init__(self, relay: Relay, counter: ByteCounter) -> None:
        super().__init__(relay)
        self.counter = counter

    def data_received(self, data: bytes) -> None:
        self.send(data)
        self.heard = True
        self.counter.sent += len(data)


class Relay:
    """One client connection's server side and the copy between the two; see the module
    docstring. Lifecycle: `connect` → (owner.upstream_ready) → `begin` → owner.relay_closed,
    or owner.upstream_failed when no server takes the connection."""

    def __init__(
        self,
        owner: Owner,
        loop: asyncio.AbstractEventLoop,
        client_transport: asyncio.Transport,
        pool: Pool,
        pools: Mapping[str, Pool],
        send_proxy: Mapping[str, str],
        source: Address,
        destination: Address,
        idle_timeout: float,
        counter: ByteCounter | None = None,
        engine: RelayEngine | None = None,
    ) -> None:
        self.owner = owner
        self.bytes = counter if counter is not None else ByteCounter()  # the client's side
        self.loop = loop
        self.pool = pool
        self.pools = pools  # for the fallback pool
        self.send_proxy = send_proxy  # pool name -> "v1" | "v2"
        self.source = source  # the real client (from a PROXY header if one came)
        self.destination = destination  # the address the client connected to
        self.state = RelayState.CONNECTING
        self.backend: BackendState | None = None
        self._tried: list[BackendState] = []
        self._fell_back = False
        # the two sockets
        self.client: _Side = _ClientSide(self, self.bytes)
        self.server: _Side = _ServerSide(self, self.bytes)
        self.client.transport = client_transport
        self.client.other, self.server.other = self.server, self.client
        self.server.send_to(client_transport)
        # the native copy (None: the Python protocols): the server's socket until `begin`, then
        # the pair of sockets the engine relays
        self.engine = engine
        self._sock: socket.socket | None = None
        self._pair: Pair | None = None
        # idle timeout: checked every tick from flags the reads set (no clock read per chunk)
        self.idle_timeout = idle_timeout
        self._tick = idle_timeout / IDLE_TICKS
        self._silent_ticks = 0
        self._idle = Deadline(loop, self._on_tick)

    # -- connecting ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Pick a server and connect to it (in a task)."""
        budget = self.pool.budget
        if budget is not None:
            budget.record_request(self.loop.time())
        self._pick()

    def _pick(self) -> None:
        pool = self.pool
        backend = pool.select((), b"", self.source[0], self._tried, self.loop.time())
        if backend is None:
            fallback = pool.fallback
            if fallback is not None and not self._tried and not self._fell_back:
                self._fell_back = True
                self.pool = self.pools[fallback]
                self._pick()
                return
            self._fail()
            return
        if isinstance(backend, str):  # FULL: every server is at max_conns; TCP does not queue
            self._fail()
            return
        self.backend = backend
        backend.in_flight += 1
        backend.requests += 1
        tasks.spawn(self._connect(backend))

    async def _connect(self, backend: BackendState) -> None:
        """Connect to `backend`: for the native engine a plain non-blocking socket, else a
        transport running `self.server`."""
        timeout = self.pool.settings.connect_timeout
        native = self.engine is not None
        try:
            async with asyncio.timeout(timeout):
                if native:
                    sock = await open_socket(self.loop, backend.host, backend.port)
                else:
                    transport, _ = await self.loop.create_connection(
                        lambda: self.server, backend.host, backend.port
                    )
        except (OSError, TimeoutError) as exc:
            report_connect_failure(self.pool.name, backend, exc, timeout, self.loop.time())
            self.connect_failed(backend)
            return
        if backend.connect_cause is not None:
            report_connected(self.pool.name, backend)
        if native:
            self.connected_socket(backend, sock)
        else:
            self.connected(backend, transport)

    def connected_socket(self, backend: BackendState, sock: socket.socket) -> None:
        """The native engine's `connected`: `sock` is connected to `backend`."""
        if self.state is not RelayState.CONNECTING or self.backend is not backend:
            sock.close()  # the client left meanwhile: already released
            return
        self.pool.observe(backend, False, self.loop.time())
        self._sock = sock
        self.state = RelayState.CONNECTED
        self.owner.upstream_ready()

    def connected(self, backend: BackendState, transport: asyncio.Transport) -> None:
        """The connection to `backend` is up (its transport already runs `self.server`)."""
        if self.state is not RelayState.CONNECTING or self.backend is not backend:
            transport.abort()  # the client left meanwhile: already released
            return
        self.pool.observe(backend, False, self.loop.time())
        self.state = RelayState.CONNECTED
        self._idle.set(self._tick)
        self.owner.upstream_ready()

    def adopt(self, backend: BackendState, transport: asyncio.Transport) -> None:
        """Take over a server connection that is already up, and already counted in
        `backend.in_flight` (an HTTP connection after `101 Switching Protocols`: a WebSocket
        becomes a relay like any TCP connection). `begin` follows."""
        self.backend = backend
        self.server.transport = transport
        transport.set_protocol(self.server)
        self.state = RelayState.CONNECTED
        self._idle.set(self._tick)

    def connect_failed(self, backend: BackendState) -> None:
        """Connecting to `backend` failed or timed out: another server, or give up."""
        if self.state is not RelayState.CONNECTING or self.backend is not backend:
            return  # the client left meanwhile: already released
        self._release(failed=True)
        self._tried.append(backend)
        pool = self.pool
        now = self.loop.time()
        budget = pool.budget
        if len(self._tried) <= pool.settings.retries and (budget is None or budget.can_retry(now)):
            if budget is not None:
                budget.record_retry(now)
            self._pick()
        else:
            self._fail()

    def _fail(self) -> None:
        self.state = RelayState.DONE
        self.owner.upstream_failed()

    # -- relaying ------------------------------------------------------------------------------

    def begin(self, pending: bytes, eof: bool) -> None:
        """Let the client's bytes go to the server: the PROXY header if the pool asks for one,
        then `pending` (what the listener read so far, less any PROXY header it took), then
        everything the client sends; `eof`: the client already shut its write side."""
        if self.state is not RelayState.CONNECTED:
            return
        if self.engine is not None:
            self._begin_native(self.engine, pending, eof)
            return
        self.state = RelayState.RELAYING
        client, server = self.client, self.server
        client_transport, server_transport = client.transport, server.transport
        assert client_transport is not None
        assert server_transport is not None
        client.send_to(server_transport)
        client_transport.set_protocol(client)
        if eof:
            client.read_done = True
        else:
            client_transport.resume_reading()  # the listener may have paused it
        version = self.send_proxy.get(self.pool.name)
        if version is not None:
            pending = proxy_protocol.encode(version, self.source, self.destination) + pending
        if pending:  # the client's bytes were counted by the listener that read them
            server_transport.write(pending)  # may pause the client's reading (flow control)
        if eof:
            self._shut(server_transport)
            if server.read_done:
                self._close_both()

    def _begin_native(self, engine: RelayEngine, pending: bytes, eof: bool) -> None:
        """`begin` for the native engine: both sockets go to it, the client's out of its
        transport."""
        sock, self._sock = self._sock, None
        transport = self.client.transport
        assert sock is not None
        assert transport is not None
        self.state = RelayState.RELAYING
        version = self.send_proxy.get(self.pool.name)
        if version is not None:
            pending = proxy_protocol.encode(version, self.source, self.destination) + pending
        try:
            client_fd = os.dup(transport.get_extra_info("socket").fileno())
        except (OSError, AttributeError):  # no descriptor to spare (EMFILE): end it here
            sock.close()
            transport.set_protocol(DETACHED)
            transport.abort()
            self._finish()
            return
        # The transport lets go of its descriptor: uvloop (libuv) and asyncio take it out of
        # their poller and close it, with no shutdown(2) and no SO_LINGER, so the socket lives
        # on in client_fd, unharmed (tests/unit/proxy/test_relay_engine.py checks). Its
        # connection_lost goes to a protocol that ignores it, not to the listener's.
        transport.set_protocol(DETACHED)
        transport.abort()
        pair = self._pair = engine.add(self, client_fd, sock.detach(), pending, eof)
        if pair.done:  # an error already (the server reset): reported by no one else
            self.ended()

    def fold(self) -> None:
        """Count the bytes the engine moved since the last fold (its sweep calls this)."""
        pair = self._pair
        if pair is not None:
            up, down = pair.take()
            counter = self.bytes
            counter.received += up
            counter.sent += down

    def ended(self) -> None:
        """The engine closed both sockets: called once per pair, by whoever ended it."""
        self.fold()
        self._pair = None
        self._finish()

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def side_eof(self, side: _Side) -> bool:
        """`side` read an EOF: shut the write side of the other socket once what is queued for
        it is sent (half-close); close both when both ways are done."""
        side.read_done = True
        if side.out is not None:
            self._shut(side.out)
        if side.other.read_done:
            self._close_both()
        return True  # keep the socket open for writing

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        """`side`'s socket is closed. The other goes too: gracefully when both ways had ended
        cleanly, at once (reset) otherwise, since nobody is left to read or send."""
        side.lost = True
        if self.state is RelayState.DONE:
            return
        other = side.other
        transport = other.transport
        if not other.lost and transport is not None:
            if exc is None and side.read_done and other.read_done:
                transport.close()
            else:
                transport.abort()
        if self.client.lost and (self.server.lost or self.server.transport is None):
            self._finish()

    def client_lost(self, exc: Exception | None) -> bool:
        """The client's socket closed while the listener still held it. False when the relay
        had not connected yet (it just lets the server go); True when the relay ends the
        connection itself and will call owner.relay_closed."""
        if self.state is RelayState.CONNECTING:
            self.state = RelayState.DONE
            self._release(failed=None)
            return False
        if self.state is RelayState.DONE:
            return False
        if self.engine is not None:
            # connected, not begun (after `begin` the transport is no longer the listener's)
            self._drop_socket()
            self._finish()
            return True
        self.client.connection_lost(exc)
        return True

    def client_writable(self, writable: bool) -> None:
        """Flow control while the listener still holds the client's transport."""
        if writable:
            self.client.resume_writing()
        else:
            self.client.pause_writing()

    def abort(self) -> None:
        """End now: reset both sockets (owner.relay_closed follows), or, still connecting,
        let the server go."""
        if self.state is RelayState.CONNECTING:
            self.state = RelayState.DONE
            self._release(failed=None)
            return
        if self.engine is not None:
            self._abort_native()
            return
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost:
                side.transport.abort()

    def _abort_native(self) -> None:
        if self.state is RelayState.DONE:
            return
        pair = self._pair
        if pair is not None:
            if pair.abort():
                self.ended()
            return  # else it ended already, and its report is on its way
        # connected, not begun: the client's transport is still the listener's
        self._drop_socket()
        transport = self.client.transport
        if transport is not None:
            transport.abort()
        self._finish()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _shut(transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _close_both(self) -> None:
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost:
                side.transport.close()  # after what is queued is sent

    def _on_tick(self) -> None:
        client, server = self.client, self.server
        if client.heard or server.heard:
            client.heard = server.heard = False
            self._silent_ticks = 0
        else:
            self._silent_ticks += 1
            if self._silent_ticks >= IDLE_TICKS:
                # silent both ways for the idle timeout: a clean close when nothing is queued
                # (a peer that stopped reading would hold a graceful close forever)
                for side in (client, server):
                    transport = side.transport
                    if transport is not None and not side.lost:
                        if transport.get_write_buffer_size():
                            transport.abort()
                        else:
                            transport.close()
                return
        self._idle.set(self._tick)

    def _finish(self) -> None:
        self.state = RelayState.DONE
        self._idle.cancel()
        self._release(failed=None)
        self.owner.relay_closed()

    def _release(self, *, failed: bool | None) -> None:
        """The connection is done with its server; `failed` feeds outlier detection (None: the
        outcome says nothing about the server)."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        backend.in_flight -= 1
        pool = self.pool
        if failed is not None:
            if failed:
                backend.failures += 1
            pool.observe(backend, failed, self.loop.time())
        if pool.queue:
            pool.released()


class _Detached(asyncio.Protocol):
    """The protocol of a client transport whose socket went to the native engine: that the
    transport closed says nothing (the listener's protocol would read it as the client gone)."""


DETACHED: Final = _Detached()


class RelayEngine:
    """One event loop's native engine (`portico.proxy._relay.Engine`, which copies on a thread
    of its own) and what it needs from the loop: its eventfd watched (`add_reader` ->
    `Engine.reap`), the pairs that ended finished (`Relay.ended`), and a sweep every `period`
    seconds while it has pairs: the idle timeout, and the bytes moved folded into the counters
    (`Relay.fold`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine) -> None:
        self.loop = loop
        self.engine = engine
        self.period = SWEEP  # a quarter of the shortest idle timeout seen, at most SWEEP
        self._sweeper = Deadline(loop, self._sweep)
        loop.add_reader(engine.fileno(), self._ready)

    def add(
        self, relay: Relay, client_fd: int, server_fd: int, to_server: bytes, eof: bool
    ) -> Pair:
        """Relay between the two sockets, which the engine now owns (see Engine.add)."""
        idle = relay.idle_timeout
        tick = idle / IDLE_TICKS
        sooner = 0 < tick < self.period
        if sooner:
            self.period = tick
        pair = self.engine.add(client_fd, server_fd, to_server, eof, idle, relay)
        if sooner or not self._sweeper.armed:
            self._sweeper.set(self.period)
        return pair

    def close(self) -> None:
        """Reset every pair (each relay ends) and stop watching: the loop is going away."""
        if not self.loop.is_closed():
            self.loop.remove_reader(self.engine.fileno())
        self._sweeper.cancel()
        for relay in self.engine.close():
            cast(Relay, relay).ended()

    def _ready(self) -> None:
        for relay in self.engine.reap():
            cast(Relay, relay).ended()

    def _sweep(self) -> None:
        engine = self.engine
        moved, ended = engine.sweep()
        for relay in moved:
            cast(Relay, relay).fold()
        for relay in ended:
            cast(Relay, relay).ended()
        if engine.pairs:
            self._sweeper.set(self.period)


# The native engine's class, looked up once: [] until then, [None] where there is none
_ENGINE_CLASS: Final[list[Callable[[], Engine] | None]] = []
# The last loop's RelayEngine (a worker has one loop): another loop gets one of its own
_LAST_ENGINE: Final[list[RelayEngine | None]] = [None]


def _engine_class() -> Callable[[], Engine] | None:
    if not _ENGINE_CLASS:
        found: Callable[[], Engine] | None = None
        if os.environ.get(ENGINE_ENV, "").strip().lower() != "python":
            try:
                from portico.proxy import _relay
            except ImportError:  # a pure-Python build
                pass
            else:
                found = _relay.Engine
        _ENGINE_CLASS.append(found)
    return _ENGINE_CLASS[0]


def engine_for(loop: asyncio.AbstractEventLoop) -> RelayEngine | None:
    """`loop`'s native engine, made on first use; None in a pure-Python build or when
    PORTICO_L4_ENGINE=python (then the relays copy in Python)."""
    last = _LAST_ENGINE[0]
    if last is not None and last.loop is loop:
        return last
    engine_class = _engine_class()
    if engine_class is None:
        return None
    engine = RelayEngine(loop, engine_class())
    _LAST_ENGINE[0] = engine
    return engine


# host -> its address family when it is an IP address, 0 for a name (looked up when connecting)
_FAMILIES: Final[dict[str, int]] = {}


def _family(host: str) -> int:
    family = _FAMILIES.get(host)
    if family is None:
        family = 0
        for candidate in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(candidate, host)
            except OSError:
                continue
            family = candidate
            break
        if len(_FAMILIES) < 4096:  # server addresses: a handful, unless names churn
            _FAMILIES[host] = family
    return family


async def open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to `host`:`port` (each address of a name in turn,
    as create_connection does), TCP_NODELAY set as the loops set it on their transports."""
    family = _family(host)
    targets: list[tuple[int, tuple[Any, ...]]]
    if family:
        targets = [(family, (host, port))]
    else:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(info[0], info[4]) for info in infos]
    error: OSError | None = None
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _connect(loop, sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()  # cancelled (the connect timeout): nothing left open
            raise
        return sock
    raise error if error is not None else OSError(f"{host}: no address to connect to")


async def _connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[Any, ...]
) -> None:
    """connect(2) `sock` (non-blocking) to `address`, an IP address: loop.sock_connect would
    do the same, but uvloop's asks getaddrinfo of the address first, in its thread pool (its
    own shortcut for an IP address takes only a given socket type), ~70 µs a connection."""
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        done = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _writable, done)
        try:
            await done
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))  # ConnectionRefusedError and kin, by errno


def _writable(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
