"""Accepting connections on one listening socket, with the checks that come before any byte.

Owns the accept loop of a listener in one worker: the listener's IP access list (a denied peer
is closed straight after accept(2): no TLS handshake, no byte read), `max_conns` (past it the
worker stops accepting and the kernel's backlog holds the rest, as HAProxy's `maxconn`; it
resumes as connections close), and running out of file descriptors or memory (EMFILE, ENFILE,
ENOBUFS, ENOMEM): accepting pauses for a moment instead of spinning on a socket that stays
readable, counted, and logged at most once a second. Accepted sockets go to the event loop's
own transports (`connect_accepted_socket`, with TLS when the listener has it); each protocol
is made with the peer's address as accept(2) gave it, so that it need not ask the transport
(which formats the address again). Never parses anything: the protocol objects it creates do.

What a new connection costs here is what bench/run's `Connection: close` row measures, so the
hand-over to uvloop takes no interpreted frame and no exception: a plain connection's descriptor
goes to uvloop in a `Handoff` (no socket.socket, whose making asks getsockname(2) and runs
interpreted code, as does its detach() when the transport closes), and the loop's coroutine is
stepped by hand (no task) through a compiled coroutine whose `await` sees it finish without a
StopIteration (a raised one cost a traceback per connection), resumed with the rest of its
accept batch from one loop callback (`Acceptor._step`). uvloop's own registry of transports
is given a compiled `__setitem__` once per loop (`lighten_transport_registry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final, final

from portico import tasks
from portico.listeners.accepted import AcceptedSocket
from portico.upstreams.connections import CLIENT_HIGH_WATER

log = logging.getLogger("portico.accept")

ACCEPT_BATCH: Final = 64  # connections accepted per wake-up before others get the loop
RETRY_AFTER_EXHAUSTED: Final = 0.1  # EMFILE and friends: try again after this long
FULL_POLL: Final = 0.02  # at max_conns: how often to look whether a slot freed
LOG_INTERVAL: Final = 1.0  # at most one log line per cause per this many seconds
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# the peer gave up between the queue and accept(2): nothing to do but take the next one
_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
# what a hand-over may fail with that is no bug: a failed handshake or a peer gone
_QUIET: Final = (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError, EOFError)
_DONE: Final = object()  # what `next` gives back once a hand-over's coroutine has ended


@final
class Handoff:
    """An accepted descriptor as uvloop's connect_accepted_socket takes it: all it reads is
    `family`, `type` and `fileno()` (once, as its transport adopts the descriptor), and
    it calls `close()` once the transport has closed the descriptor itself. A socket.socket
    would cost a getsockname(2) (its check that the descriptor is a socket: accept(2) just
    said so) and interpreted code when made and when uvloop detaches it. asyncio's own loop
    needs a real socket (AcceptedSocket), and so does the TLS hand-over (see `_accepted`).

    One per acceptor, aimed at each accepted descriptor in turn (`Acceptor._accepted`): the
    loop's hand-over either adopts the descriptor or fails (and closes it here) before its
    first wait, which is before the next one is accepted; after that `fd` is -1, and the
    `close()` of a transport that keeps it (every one does, for as long as it is open) is a
    no-op. One object per connection was 72 bytes kept by every idle connection (#18)."""

    def __init__(self, fd: int, family: int, kind: int) -> None:
        self.fd = fd
        self.family = family
        self.type = kind
        self.adopted = False  # the transport owns the descriptor: never closed here

    def fileno(self) -> int:
        self.adopted = True  # uvloop asks only to hand the descriptor to its transport
        return self.fd

    def close(self) -> None:
        """Close the descriptor unless a transport took it (then the transport closes it,
        and this is its call once done)."""
        if not self.adopted and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class AcceptCounters:
    """What an acceptor counts for /metrics (per listener and worker)."""

    __slots__ = ("denied", "exhausted", "paused_full")

    def __init__(self) -> None:
        self.denied = 0  # closed at accept by the access list
        self.exhausted = 0  # accept(2) failed for want of descriptors or memory
        self.paused_full = 0  # times accepting paused at max_conns


class Acceptor:
    """Accepts on `sock` for one listener of this worker.

    `allows(ip)`: the listener's access check on the peer address (None: everyone), not
    called while `rules` (if given) has no `entries` (`ListenerGuards.open_rules`);
    `active()`: the listener's open connections in this worker (for `max_conns`, 0 = no
    limit); `factory(peer)`: the protocol of each connection, given the peer's address as
    accept(2) returned it; `ssl_context`: TLS, handshaken by the loop's transport after the
    checks.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        name: str,
        factory: Callable[[Any], asyncio.Protocol],
        *,
        allows: Callable[[str], bool] | None = None,
        max_conns: int = 0,
        active: Callable[[], int] = lambda: 0,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        write_high: int = CLIENT_HIGH_WATER,
        rules: Any = None,
    ) -> None:
        self.loop = loop
        # each connection's write buffer high-water mark, set once the loop hands it over;
        # 0: its protocol sets its own in connection_made (HTTP: a call less a connection)
        self.write_high = write_high
        self.sock = sock
        # accept(2) without socket.accept's interpreted wrapper (its family and type look-ups)
        self._accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        self.name = name
        self.factory = factory
        # without TLS, the peer of the connection being handed over, for `_make` (made once)
        self._peer: Any = None
        self._make: Callable[[], asyncio.Protocol] = self._protocol_for_peer
        self.allows = allows
        # while `rules.entries` is empty, `allows` is known to let everyone in (it is not
        # called: an interpreted frame per connection); None: always ask `allows`
        self.rules = rules
        self.max_conns = max_conns
        self.active = active
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.counters = AcceptCounters()
        self._uvloop = type(loop).__module__.startswith("uvloop")  # see `_accepted`
        # uvloop without TLS: what each accepted descriptor is handed over in
        self._handoff: Handoff | None = None
        if self._uvloop:
            lighten_transport_registry(loop)
            if ssl_context is None:
                self._handoff = Handoff(-1, self._kind[0], self._kind[1])
        # state
        self.reading = False
        self.closed = False
        self.handshaking = 0  # accepted, not yet handed to a protocol (TLS handshakes)
        self._retry: asyncio.TimerHandle | None = None
        self._logged: dict[str, float] = {}
        # hand-overs of this accept batch waiting for their connection_made (see `_step`)
        self._parked: list[tuple[Iterator[Any], Any]] = []
        self._parking = False  # in an accept batch: `_step` parks a hand-over's wait

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def close(self) -> None:
        """Stop accepting (drain) and close this worker's copy of the listening socket, as
        the loop's own server does: the socket itself lives on in the supervisor and in the
        other workers (a reload's new ones), and once all have closed theirs, new connections
        are refused at once rather than left in a queue nobody serves."""
        self.closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.sock.close()

    # -- the loop --------------------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if self.closed or self.reading:
            return
        if self._is_full():
            self._retry = self.loop.call_later(FULL_POLL, self._resume)
            return
        self.reading = True
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _pause(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _is_full(self) -> bool:
        limit = self.max_conns
        return limit > 0 and self.active() + self.handshaking >= limit

    def _on_readable(self) -> None:
        self._parking = True
        try:
            self._accept_batch()
        finally:
            self._parking = False
            if self._parked:
                # after every connection_made this batch scheduled (see `_step`)
                self.loop.call_soon(self._resume_parked)

    def _accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._is_full():
                self.counters.paused_full += 1
                self._say("full", "max_conns (%d) reached: accepting paused", self.max_conns)
                self._pause()
                self._retry = self.loop.call_later(FULL_POLL, self._resume)
                return
            try:
                fd, address = self._accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self.counters.exhausted += 1
                    self._say(
                        "exhausted",
                        "accept failed (%s): pausing accepting for %.1fs",
                        exc.strerror or exc,
                        RETRY_AFTER_EXHAUSTED,
                    )
                    self._pause()
                    self._retry = self.loop.call_later(RETRY_AFTER_EXHAUSTED, self._resume)
                    return
                if exc.errno in _GONE:
                    continue
                self._say("error", "accept failed: %s", exc)
                return
            self._accepted(fd, address)

    def _accepted(self, fd: int, address: Any) -> None:
        family, kind, proto = self._kind
        allows = self.allows
        if allows is not None:
            rules = self.rules
            if rules is None or rules.entries:
                ip = address[0] if isinstance(address, tuple) else ""
                if not allows(ip):
                    self.counters.denied += 1
                    _reset(AcceptedSocket(family, kind, proto, fd))
                    return
        conn: Any
        handoff = self._handoff
        if handoff is not None:
            # no setblocking(False) nor TCP_NODELAY here: uvloop's transport (uv_tcp_open)
            # does both; doing either again cost a syscall per connection. With TLS, a real
            # socket: its task may be cancelled before its first step (a shutdown), and then
            # only the socket object, once collected, would close the descriptor
            handoff.fd = fd
            handoff.adopted = False
            conn = handoff
        elif self._uvloop:
            conn = AcceptedSocket(family, kind, proto, fd)
        else:
            conn = AcceptedSocket(family, kind, proto, fd)
            # asyncio's loop makes the socket non-blocking but skips TCP_NODELAY on an
            # accepted socket (its proto reads 0, not IPPROTO_TCP)
            if family == socket.AF_INET or family == socket.AF_INET6:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.handshaking += 1
        if self.ssl_context is not None:
            # a task, which the worker's shutdown cancels (closing the half-made connection)
            # while a handshake is under way; on the loop held: asyncio.get_running_loop() is
            # a getpid(2) on CPython 3.11
            factory = partial(self.factory, address)
            tasks.spawn_on(self.loop, self._hand_over(conn, factory))
        else:
            # no task per connection (its making, asyncio's interpreted registry of tasks,
            # a loop turn before its first step, our done callback): the coroutine is
            # stepped from here, and once more when its one wait (for the protocol's
            # connection_made) is over. Both loops make the protocol before that wait, so
            # from here: `_make` reads the peer off the acceptor (no partial per connection)
            self._peer = address
            self._step(self._hand_over(conn, self._make).__await__())
            self._peer = None
            if handoff is not None:
                # adopted by its transport, or closed: the next connection's (see Handoff)
                handoff.fd = -1

    def _protocol_for_peer(self) -> asyncio.Protocol:
        """The protocol of the connection `_accepted` is handing over now (without TLS), as
        the loop's hand-over asks for it before its first wait."""
        return self.factory(self._peer)

    def _step(self, setup: Iterator[Any], _: object = None) -> None:
        """Run `setup` (`_hand_over` without TLS) to its next wait, as a task's step would:
        a future it waits on resumes it when done; a bare yield, the next turn. `next`
        ends it without an exception reaching compiled code (`_hand_over` catches what it
        may raise).

        The loop's hand-over waits once, for its protocol's connection_made, which the loop
        has scheduled (call_soon) before its coroutine yields: such a wait is parked, and
        `_resume_parked`, scheduled once per accept batch after all of them, resumes every
        parked hand-over whose future is done by then. A callback per future instead cost
        each connection a partial, a done callback and the loop handle that the future's
        set_result schedules for it: 4,400 instructions of a new connection's 83,400
        (bench/relaypath.py --close --callgrind, where a batch holds several connections)."""
        waiting: Any = next(setup, _DONE)
        if waiting is _DONE:
            return
        if waiting is None:
            self.loop.call_soon(self._step, setup)
        elif self._parking:
            self._parked.append((setup, waiting))
        else:
            waiting.add_done_callback(partial(self._step, setup))

    def _resume_parked(self) -> None:
        """Resume the hand-overs parked by the last accept batch: those whose future is done
        (all, as both loops order their callbacks), and any other once its future is."""
        parked, self._parked = self._parked, []
        for setup, waiting in parked:
            if waiting.done():
                self._step(setup)  # not parking: a wait after this one gets a callback
            else:
                waiting.add_done_callback(partial(self._step, setup))

    async def _hand_over(self, conn: Any, factory: Callable[[], asyncio.Protocol]) -> None:
        """The hand-over of `conn` (a Handoff, or with TLS or asyncio's loop a socket) to the
        loop's transport: with TLS the handshake runs in the loop's coroutine, in a task;
        without, `_step` runs it."""
        try:
            if self.ssl_context is None:
                transport, _ = await self.loop.connect_accepted_socket(factory, conn)
            else:
                transport, _ = await self.loop.connect_accepted_socket(
                    factory,
                    conn,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.handshake_timeout,
                )
            if self.write_high:
                self._handed_over(transport)
        except _QUIET:
            conn.close()  # a failed handshake or a peer gone: as the loop's own server does
        except Exception:
            conn.close()
            log.exception("listener %s: a connection could not be set up", self.name)
        finally:
            self.handshaking -= 1

    def _handed_over(self, transport: asyncio.BaseTransport) -> None:
        if not transport.is_closing():
            # a slow reader makes Portico hold at most twice this (the listener's
            # `limits.response_buffer`) beyond the socket buffers
            # (upstreams.connections.client_read_size)
            # (`high` by position: the loops' and the TLS transport's first parameter, and a
            # call with a keyword is not specialised by CPython 3.11)
            transport.set_write_buffer_limits(self.write_high)  # type: ignore[attr-defined]

    def _say(self, cause: str, message: str, *args: object) -> None:
        """Log `message` for this listener, at most once a second per cause."""
        now = self.clock()
        if now - self._logged.get(cause, -LOG_INTERVAL) < LOG_INTERVAL:
            return
        self._logged[cause] = now
        log.warning("listener %s: " + message, self.name, *args)


@final
class TransportRegistry:
    """What uvloop's loop does with each new transport, `registry[fd] = transport`, without
    an interpreted frame: `track` stores a plain weak reference in the registry's own dict."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self.data = data

    def track(self, fd: Any, transport: object) -> None:
        self.data[fd] = weakref.ref(transport)


def lighten_transport_registry(loop: asyncio.AbstractEventLoop) -> bool:
    """Make uvloop's registry of transports cheap to add to; True once it is (or was).

    A documented workaround of a uvloop internal (written against uvloop 0.23.0, the version
    requirements/test.txt pins; pyproject.toml allows 0.19 on): its loop keeps every
    transport in a `weakref.WeakValueDictionary` keyed by descriptor (`Loop._transports`,
    which `_ensure_fd_no_transport` reads so that add_reader, add_writer and the sock_* calls
    refuse a descriptor a transport owns). Adding to it runs interpreted code for every
    connection, `__setitem__` and a `KeyedRef`, and `KeyedRef`'s callback when a transport
    goes: about 5,500 instructions of a new connection's 88,300 (bench/relaypath.py --close
    --callgrind: 88,339 before, 83,447 with this). This gives that one instance a subclass
    whose `__setitem__` is `TransportRegistry.track` (compiled): a plain `weakref.ref`, no
    callback. Reading is unchanged (the dictionary's own `__getitem__`: a dead reference is a
    KeyError, as a removed entry was), so uvloop's check still works; an entry whose
    transport has gone stays until its descriptor is reused, so at most one per descriptor
    number ever open.

    Nothing is changed unless the loop holds exactly one WeakValueDictionary that is a plain
    one with its `data` dict (the layout this was written against): on any other layout this
    returns False and the loop keeps its own registry.
    """
    registries = [
        held for held in gc.get_referents(loop) if isinstance(held, weakref.WeakValueDictionary)
    ]
    if len(registries) != 1:
        return False
    registry: Any = registries[0]
    kind = type(registry)
    if kind is not weakref.WeakValueDictionary:
        return bool(getattr(kind, "lightened", False))  # this loop's, lightened already
    data = getattr(registry, "data", None)
    if type(data) is not dict:
        return False
    tracker = TransportRegistry(data)
    registry.__class__ = type(
        "LightTransportRegistry",
        (weakref.WeakValueDictionary,),
        {"__slots__": (), "__setitem__": tracker.track, "lightened": True},
    )
    return True


def _reset(conn: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): no FIN handshake, no TIME_WAIT kept for a refused
    peer, and nothing it sent is read."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()
