"""The native relay engine (portico.proxy._relay, C, copying on a thread of its own) over real
loopback TCP sockets, its reports taken by hand: `Engine.reap` whenever its eventfd is
readable, as the event loop does. Checked: bytes both ways with `to_server` first, a large
transfer through a slow reader (short sends, flow control: nothing lost or reordered, at most
one chunk held per way), half-close each way, reset propagation, abort, the idle close
(graceful, or a reset with bytes pending), the byte counts, exactly one report per pair, and
that no descriptor and no thread is left. Also the thread itself: started at the first pair,
signals blocked, stopped by close(), pairs ended from Python while it copies, and a forked
child's copy of an engine refused. And that a
loop's transport lets go of its socket without touching it (how a client's socket reaches the
engine). Skipped in a pure-Python build, which has no engine."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fakes import tcp_pair

relay = pytest.importorskip("portico.proxy._relay", reason="the native engine is not built")

WAIT = 10.0  # the longest any single wait may take
MiB = 1 << 20


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> set[str]:
    """The process's threads (task ids)."""
    return set(os.listdir("/proc/self/task"))


class Owner:
    """What the engine reports when a pair ends: counted, to see it happens once."""

    def __init__(self) -> None:
        self.reports = 0


class Rig:
    """One relayed connection: `client` (the client's own socket) -- engine -- `server` (the
    server's own socket)."""

    def __init__(
        self,
        engine: relay.Engine,
        listener: socket.socket,
        to_server: bytes = b"",
        client_eof: bool = False,
        idle: float = 0.0,
        small_buffers: bool = False,
    ) -> None:
        self.engine = engine
        self.client, client_end = tcp_pair(listener)
        server_end, self.server = tcp_pair(listener)
        if small_buffers:  # toward the client: the engine's sends come up short soon
            client_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        if client_eof:
            self.client.shutdown(socket.SHUT_WR)
        self.owner = Owner()
        self.pair = engine.add(
            client_end.detach(), server_end.detach(), to_server, client_eof, idle, self.owner
        )
        if self.pair.done:
            self.owner.reports += 1

    def close(self) -> None:
        self.client.close()
        self.server.close()


def run(
    engine: relay.Engine,
    until: Callable[[], bool],
    also: Callable[[], None] = lambda: None,
    watch: tuple[socket.socket, ...] = (),
) -> None:
    """Reap what the engine reports whenever its eventfd is readable, calling `also` each
    round, until `until()`; a round also starts when one of `watch` is readable (or after
    10 ms: the engine's thread copies meanwhile)."""
    deadline = time.monotonic() + WAIT
    while not until():
        assert time.monotonic() < deadline, "the engine did not get there in time"
        select.select([engine.fileno(), *watch], [], [], 0.01)
        for owner in engine.reap():
            owner.reports += 1
        also()


def read_all(sock: socket.socket, into: bytearray) -> bool:
    """Read what `sock` has now into `into`; True once it read the EOF."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return False
        if not data:
            return True
        into += data


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield sock
    sock.close()


@pytest.fixture
def engine() -> Iterator[relay.Engine]:
    before, before_threads = fds(), threads()
    made = relay.Engine()
    yield made
    assert made.close() == []  # every pair ended, and was reported, in the test
    assert made.closed
    assert made.pairs == 0
    assert not made.running
    del made
    assert fds() == before  # the epoll descriptor, the eventfds and every socket are closed
    assert threads() == before_threads  # the copying thread was joined


def test_bytes_flow_both_ways_with_to_server_first(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener, to_server=b"PROXY TCP4 ...\r\n")
    rig.client.sendall(b"hello server")
    got = bytearray()
    run(engine, lambda: len(got) >= 28, lambda: read_all(rig.server, got))
    assert bytes(got) == b"PROXY TCP4 ...\r\nhello server"
    rig.server.sendall(b"hello client")
    back = bytearray()
    run(engine, lambda: len(back) >= 12, lambda: read_all(rig.client, back))
    assert bytes(back) == b"hello client"
    # what was read from each side; `to_server` is the caller's to count
    assert (rig.pair.up, rig.pair.down) == (12, 12)
    assert rig.pair.take() == (12, 12)
    assert rig.pair.take() == (0, 0)
    assert not rig.pair.done
    assert rig.pair.abort()
    rig.owner.reports += 1
    rig.close()


def test_a_large_transfer_through_a_slow_reader_is_intact_and_held_to_one_chunk(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener, small_buffers=True)
    total = 8 * MiB
    block = bytes(range(256)) * 256  # 64 KiB with a pattern: reordering would show
    sent = 0
    sent_digest = hashlib.sha256()
    got = 0
    got_digest = hashlib.sha256()
    held = [0]
    rounds = [0]

    def step() -> None:
        nonlocal sent, got
        rounds[0] += 1
        if sent < total:
            chunk = block[: min(len(block), total - sent)]
            try:
                n = rig.server.send(chunk)
            except BlockingIOError:
                n = 0
            sent_digest.update(chunk[:n])
            sent += n
        held[0] = max(held[0], rig.pair.pending)
        if rounds[0] % 2 == 0:  # the reader takes a little, every other round
            try:
                data = rig.client.recv(16 * 1024)
            except BlockingIOError:
                data = b""
            got_digest.update(data)
            got += len(data)

    run(engine, lambda: got >= total, step, watch=(rig.client,))
    assert got == total
    assert got_digest.digest() == sent_digest.digest()
    assert rig.pair.down == total
    assert 0 < held[0] <= relay.CHUNK  # short sends happened, and the engine held one chunk
    assert rig.pair.abort()
    rig.owner.reports += 1
    rig.close()


def test_both_ways_at_once_with_back_pressure(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener)
    total = 4 * MiB
    payload = os.urandom(total)
    out = {"client": 0, "server": 0}
    got = {"client": bytearray(), "server": bytearray()}

    def step() -> None:
        for name, sock in (
            ("client", rig.client),
            ("server", rig.server),
        ):
            if out[name] < total:
                with contextlib.suppress(BlockingIOError):
                    out[name] += sock.send(payload[out[name] : out[name] + 256 * 1024])
            read_all(sock, got[name])

    run(engine, lambda: len(got["client"]) == total and len(got["server"]) == total, step)
    assert bytes(got["server"]) == payload
    assert bytes(got["client"]) == payload
    assert (rig.pair.up, rig.pair.down) == (total, total)
    assert rig.pair.abort()
    rig.owner.reports += 1
    rig.close()


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_passes_the_eof_on_and_the_other_way_keeps_flowing(
    engine: relay.Engine, listener: socket.socket, first: str
) -> None:
    rig = Rig(engine, listener)
    closer, other = (rig.client, rig.server) if first == "client" else (rig.server, rig.client)
    closer.sendall(b"last words")
    closer.shutdown(socket.SHUT_WR)
    heard = bytearray()
    eof = [False]
    run(engine, lambda: eof[0], lambda: eof.__setitem__(0, read_all(other, heard)))
    assert bytes(heard) == b"last words"  # the bytes, then the EOF
    # the other way is still open: an answer after the EOF gets through
    other.sendall(b"the answer")
    answer = bytearray()
    run(engine, lambda: len(answer) >= 10, lambda: read_all(closer, answer))
    assert bytes(answer) == b"the answer"
    assert not rig.pair.done
    other.shutdown(socket.SHUT_WR)  # both ways ended: both sockets close, gracefully
    ended = [False]
    run(
        engine,
        lambda: rig.owner.reports == 1,
        lambda: ended.__setitem__(0, read_all(closer, answer)),
    )
    assert rig.pair.done
    assert rig.pair.clean
    run(engine, lambda: ended[0], lambda: ended.__setitem__(0, read_all(closer, answer)))
    assert engine.pairs == 0
    assert not rig.pair.abort()  # already ended: reported once, by reap()
    assert rig.owner.reports == 1
    rig.close()


def test_an_eof_the_client_sent_before_add_is_passed_on(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener, to_server=b"request", client_eof=True)
    heard = bytearray()
    eof = [False]
    run(engine, lambda: eof[0], lambda: eof.__setitem__(0, read_all(rig.server, heard)))
    assert bytes(heard) == b"request"
    rig.server.sendall(b"response")
    rig.server.shutdown(socket.SHUT_WR)
    back = bytearray()
    done = [False]
    run(engine, lambda: done[0], lambda: done.__setitem__(0, read_all(rig.client, back)))
    assert bytes(back) == b"response"
    run(engine, lambda: rig.owner.reports == 1)
    assert rig.pair.clean
    rig.close()


def linger_reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def waits_for_reset(sock: socket.socket) -> bool:
    """Whether `sock`'s peer reset the connection, once something arrives."""
    select.select([sock], [], [], WAIT)
    return sees_reset(sock)


def sees_reset(sock: socket.socket) -> bool:
    """Whether `sock`'s peer reset the connection (after whatever was in flight)."""
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return False  # a plain EOF


@pytest.mark.parametrize("lost", ["client", "server"])
def test_a_reset_on_one_side_resets_the_other(
    engine: relay.Engine, listener: socket.socket, lost: str
) -> None:
    rig = Rig(engine, listener)
    gone, other = (rig.client, rig.server) if lost == "client" else (rig.server, rig.client)
    linger_reset(gone)
    reset = [False]
    run(engine, lambda: reset[0], lambda: reset.__setitem__(0, sees_reset(other)))
    run(engine, lambda: rig.owner.reports == 1)
    assert rig.pair.done
    assert not rig.pair.clean
    assert engine.pairs == 0
    other.close()


def test_abort_resets_both_and_is_reported_by_its_return_value(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener)
    assert rig.pair.abort()
    assert not rig.pair.abort()
    assert not rig.pair.close()
    client_reset, server_reset = [False], [False]

    def look() -> None:
        client_reset[0] = client_reset[0] or sees_reset(rig.client)
        server_reset[0] = server_reset[0] or sees_reset(rig.server)

    run(engine, lambda: client_reset[0] and server_reset[0], look)
    assert engine.reap() == ()  # not reported again
    assert rig.owner.reports == 0  # (the caller reports it: abort() said True)
    rig.close()


def test_the_idle_close_is_graceful_when_nothing_is_pending(
    engine: relay.Engine, listener: socket.socket
) -> None:
    rig = Rig(engine, listener, idle=0.2)
    rig.client.sendall(b"x")
    got = bytearray()
    run(engine, lambda: len(got) == 1, lambda: read_all(rig.server, got))
    moved, ended = engine.sweep()
    assert moved == [rig.owner]
    assert ended == []
    assert rig.pair.take() == (1, 0)
    start = time.monotonic()
    while True:  # the idle timeout is what is tested: time has to pass
        moved, ended = engine.sweep()
        if ended:
            break
        assert moved == []
        assert time.monotonic() - start < WAIT
        time.sleep(0.02)
    assert ended == [rig.owner]
    assert time.monotonic() - start >= 0.2
    assert rig.pair.done
    assert rig.pair.clean
    eof_client, eof_server = bytearray(), bytearray()
    assert read_all(rig.client, eof_client)  # FIN, no RST
    assert read_all(rig.server, eof_server)
    rig.close()


def test_close_resets_when_bytes_are_pending(engine: relay.Engine, listener: socket.socket) -> None:
    rig = Rig(engine, listener, small_buffers=True)
    block = b"y" * (256 * 1024)

    def fill() -> None:
        with contextlib.suppress(BlockingIOError):
            rig.server.send(block)

    run(engine, lambda: rig.pair.pending > 0, fill)  # the client reads nothing
    assert rig.pair.close()  # the idle timeout's close, from Python
    assert rig.pair.done
    assert not rig.pair.clean
    failure: OSError | None = None
    for _ in range(1000):
        try:
            rig.server.send(block)
        except OSError as exc:
            failure = exc
            break
    assert failure is not None
    assert failure.errno in (errno.ECONNRESET, errno.EPIPE)
    rig.close()


def test_a_server_gone_before_add_ends_the_pair_at_once(
    engine: relay.Engine, listener: socket.socket
) -> None:
    client, client_end = tcp_pair(listener)
    server_end, server = tcp_pair(listener)
    linger_reset(server)
    select.select([server_end], [], [], WAIT)  # the reset has arrived
    owner = Owner()
    pair = engine.add(client_end.detach(), server_end.detach(), b"request", False, 0.0, owner)
    assert pair.done  # the caller reports it
    assert not pair.clean
    assert engine.pairs == 0
    assert engine.reap() == ()
    assert waits_for_reset(client)
    client.close()


def test_many_pairs_end_each_reported_once_and_no_descriptor_is_left(
    engine: relay.Engine, listener: socket.socket
) -> None:
    before = fds()
    rigs = [Rig(engine, listener) for _ in range(40)]
    assert engine.pairs == 40
    for i, rig in enumerate(rigs):
        rig.client.sendall(b"ping %d" % i)
        if i % 3 == 0:
            linger_reset(rig.server)  # resets
        elif i % 3 == 1:
            rig.client.shutdown(socket.SHUT_WR)  # both ways end: graceful
            rig.server.shutdown(socket.SHUT_WR)
    run(engine, lambda: all(r.owner.reports for i, r in enumerate(rigs) if i % 3 != 2))
    for rig in rigs[2::3]:
        assert rig.pair.abort()
        rig.owner.reports += 1
    assert [r.owner.reports for r in rigs] == [1] * 40
    assert engine.pairs == 0
    for rig in rigs:
        rig.close()
    assert fds() == before


def test_closing_the_engine_resets_its_pairs_and_reports_them(listener: socket.socket) -> None:
    before = fds()
    engine = relay.Engine()
    rigs = [Rig(engine, listener) for _ in range(3)]
    owners = engine.close()
    assert sorted(map(id, owners)) == sorted(id(r.owner) for r in rigs)
    client, server = tcp_pair(listener)
    with pytest.raises(ValueError, match="closed"):
        engine.add(client.detach(), server.detach(), b"", False, 0.0, None)
    for rig in rigs:
        assert waits_for_reset(rig.client)
        rig.close()
    del engine
    assert fds() == before


def test_an_unreachable_engine_and_its_pairs_are_collected(listener: socket.socket) -> None:
    before = fds()
    engine = relay.Engine()
    rig = Rig(engine, listener)
    rig.owner.cycle = (engine, rig.pair)  # type: ignore[attr-defined]  # owner <-> pair, engine
    client, server = rig.client, rig.server
    del rig, engine
    gc.collect()
    assert waits_for_reset(client)
    client.close()
    server.close()
    assert fds() == before


# -- the thread ------------------------------------------------------------------------------


def blocked_signals(tid: str) -> int:
    """The signal mask of thread `tid` (bit n - 1 for signal n)."""
    with open(f"/proc/self/task/{tid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")


def test_the_thread_starts_at_the_first_pair_blocks_signals_and_stops_at_close(
    listener: socket.socket,
) -> None:
    before, before_threads = fds(), threads()
    engine = relay.Engine()
    assert not engine.running
    assert threads() == before_threads  # an engine that relays nothing costs no thread
    rig = Rig(engine, listener)
    assert engine.running
    (tid,) = threads() - before_threads
    # signals go to the main thread, where Python handles them
    blocked = blocked_signals(tid)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        assert blocked & (1 << (sig - 1)), sig
    assert blocked_signals(str(threading.get_native_id())) & (1 << (signal.SIGINT - 1)) == 0
    rig.client.sendall(b"still relayed")
    got = bytearray()
    run(engine, lambda: len(got) >= 13, lambda: read_all(rig.server, got))
    assert engine.close() == [rig.owner]  # reset, reported by close()
    assert not engine.running
    assert threads() == before_threads
    assert waits_for_reset(rig.client)
    rig.close()
    assert fds() == before  # close() closed the engine's descriptors


def test_a_forked_child_refuses_to_use_its_parents_engine(
    engine: relay.Engine, listener: socket.socket
) -> None:
    """The child has no copy of the thread (and maybe a mutex locked forever): every call
    answers without waiting, and new pairs are refused, their sockets closed."""
    rig = Rig(engine, listener)
    spare_client, spare_server = tcp_pair(listener)
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit status
        status = 1
        try:
            with contextlib.suppress(RuntimeError):
                engine.add(spare_client.fileno(), spare_server.fileno(), b"", False, 0.0, None)
                os._exit(2)  # accepted: wrong
            for fd in (spare_client.fileno(), spare_server.fileno()):
                with contextlib.suppress(OSError):
                    os.fstat(fd)
                    os._exit(3)  # not closed: wrong
            if rig.pair.abort() or engine.pairs != 0 or engine.reap() != ():
                os._exit(4)
            if engine.close() != []:
                os._exit(5)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's engine is untouched: it still relays
    rig.client.sendall(b"after the fork")
    got = bytearray()
    run(engine, lambda: len(got) >= 14, lambda: read_all(rig.server, got))
    assert bytes(got) == b"after the fork"
    assert rig.pair.abort()
    rig.owner.reports += 1
    rig.close()
    spare_client.close()
    spare_server.close()


def test_pairs_ended_from_python_while_the_thread_copies_are_each_reported_once(
    engine: relay.Engine, listener: socket.socket
) -> None:
    """Aborts, idle closes and sweeps race the thread's copying: every pair is reported exactly
    once, by whichever call ended it, and the bytes of the pairs left alone all arrive."""
    rigs = [Rig(engine, listener, idle=60.0) for _ in range(24)]
    total = 512 * 1024
    payload = os.urandom(total)
    sent = [0] * len(rigs)
    got = [bytearray() for _ in rigs]
    ended_by_us: set[int] = set()
    folded = [0] * len(rigs)
    index = {id(rig.owner): i for i, rig in enumerate(rigs)}

    def step() -> None:
        for i, rig in enumerate(rigs):
            if i in ended_by_us:
                continue
            if sent[i] < total:
                with contextlib.suppress(BlockingIOError):
                    sent[i] += rig.client.send(payload[sent[i] : sent[i] + 16 * 1024])
                if sent[i] == total:
                    rig.client.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                if read_all(rig.server, got[i]):
                    with contextlib.suppress(OSError):
                        rig.server.shutdown(socket.SHUT_WR)
        # while bytes flow: end every fourth pair from Python, by abort or by the idle close
        for i in range(0, len(rigs), 4):
            if i not in ended_by_us and sent[i] >= (1 + i % 3) * 64 * 1024:
                ended_by_us.add(i)
                pair = rigs[i].pair
                assert pair.abort() if i % 8 == 0 else pair.close()
                rigs[i].owner.reports += 1
        moved, ended = engine.sweep()
        for owner in moved:
            up, _ = rigs[index[id(owner)]].pair.take()
            folded[index[id(owner)]] += up
        for owner in ended:
            owner.reports += 1

    run(engine, lambda: all(r.owner.reports for r in rigs), step)
    assert [r.owner.reports for r in rigs] == [1] * len(rigs)
    assert engine.pairs == 0
    for i, rig in enumerate(rigs):
        up, down = rig.pair.take()
        assert down == 0
        assert folded[i] + up == rig.pair.up  # every byte counted once, by sweeps or at the end
        if i not in ended_by_us:
            assert bytes(got[i]) == payload
            assert rig.pair.up == total
            assert rig.pair.clean
        else:
            assert len(got[i]) <= rig.pair.up
        rig.close()


# -- how a client's socket leaves its transport (portico.proxy.l4.Relay._begin_native) ------


class _Quiet(asyncio.Protocol):
    """A protocol that only says when its transport let go of the socket."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_transport_aborted_after_a_dup_leaves_the_socket_unharmed(loop_kind: str) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        listener.close()
        conn.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(_Quiet, conn)
        fd = os.dup(transport.get_extra_info("socket").fileno())
        quiet = _Quiet()
        transport.set_protocol(quiet)
        transport.abort()
        await asyncio.wait_for(quiet.lost, WAIT)  # the loop has closed its descriptor
        dup = socket.socket(fileno=fd)
        # no shutdown(2) happened (the send would fail) and no reset (the peer would see it)
        dup.sendall(b"ping")
        peer.settimeout(WAIT)
        assert peer.recv(16) == b"ping"
        peer.sendall(b"pong")
        dup.settimeout(WAIT)
        assert dup.recv(16) == b"pong"
        dup.close()
        assert peer.recv(16) == b""  # now the socket closes: a plain FIN
        peer.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
