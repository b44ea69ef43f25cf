"""The accept path: what an accepted client socket is like once its protocol has it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Iterator

import pytest

from portico.listeners.acceptor import Acceptor


class _Recorder(asyncio.Protocol):
    def __init__(self, seen: asyncio.Future[tuple[int, bool, bytes]]) -> None:
        self.seen = seen
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if not self.seen.done():
            blocking = not fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
            self.seen.set_result((nodelay, blocking, data))
        self.transport.write(b"pong")


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_an_accepted_socket_is_non_blocking_with_nagle_off(loop_kind: str) -> None:
    """The acceptor leaves both to the loop's transport (one syscall each fewer per
    connection): a small answer must still go out at once, from a non-blocking socket."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main() -> tuple[tuple[int, bool, bytes], bytes]:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        seen: asyncio.Future[tuple[int, bool, bytes]] = loop.create_future()
        acceptor = Acceptor(loop, listener, "web", lambda _peer: _Recorder(seen))
        acceptor.start()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(b"ping")
            answer = await asyncio.wait_for(reader.readexactly(4), 5)
            result = await asyncio.wait_for(seen, 5)
            writer.close()
            await writer.wait_closed()
            return result, answer
        finally:
            acceptor.close()

    try:
        (nodelay, blocking, data), answer = loop.run_until_complete(main())
    finally:
        loop.close()
    assert data == b"ping"
    assert answer == b"pong"
    assert nodelay != 0
    assert blocking is False


def _new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


class _Answer(asyncio.Protocol):
    """Answers the first bytes with `pong`, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"pong")
        self.transport.close()


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_each_protocol_is_made_with_the_peer_address_accept_gave(loop_kind: str) -> None:
    """The factory gets the client's address from accept(2) itself (so a ClientConnection
    need not ask the transport for it), and the connection is served as before."""
    loop = _new_loop(loop_kind)
    peers: list[object] = []

    def factory(peer: object) -> asyncio.Protocol:
        peers.append(peer)
        return _Answer()

    async def main() -> tuple[object, bytes]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(loop, listener, "web", factory)
        acceptor.start()
        try:
            port = listener.getsockname()[1]
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(b"ping")
            answer = await asyncio.wait_for(reader.read(), 5)  # to the server's close
            own = writer.get_extra_info("sockname")
            writer.close()
            await writer.wait_closed()
            assert acceptor.handshaking == 0
            return own, answer
        finally:
            acceptor.close()

    try:
        own, answer = loop.run_until_complete(main())
    finally:
        loop.close()
    assert answer == b"pong"
    assert peers == [own]


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_connection_that_cannot_be_set_up_is_closed_logged_and_not_counted(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A protocol factory that raises (a bug): the client's connection is closed, the error
    logged with the listener's name, and the connection no longer counts toward max_conns;
    the next connection is served."""
    loop = _new_loop(loop_kind)
    made = 0

    def factory(peer: object) -> asyncio.Protocol:
        nonlocal made
        made += 1
        if made == 1:
            raise RuntimeError("a bug")
        return _Answer()

    async def exchange(port: int) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        try:
            writer.write(b"ping")
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def main() -> tuple[bytes, bytes, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(loop, listener, "web", factory, max_conns=1)
        acceptor.start()
        try:
            port = listener.getsockname()[1]
            first = await exchange(port)
            second = await exchange(port)  # accepted: the failed one left no slot taken
            return first, second, acceptor.handshaking
        finally:
            acceptor.close()

    with caplog.at_level("ERROR", logger="portico.accept"):
        try:
            first, second, handshaking = loop.run_until_complete(main())
        finally:
            loop.close()
    assert first == b""
    assert second == b"pong"
    assert handshaking == 0
    assert "listener web: a connection could not be set up" in caplog.text


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_every_accepted_descriptor_is_closed_once_its_connection_ends(loop_kind: str) -> None:
    """Served and closed connections, and ones whose protocol could not be made, leave no
    descriptor open behind them (uvloop's transports get the bare descriptor: a Handoff)."""
    loop = _new_loop(loop_kind)
    made = 0
    first_gone = loop.create_future()

    class _First(_Answer):
        def connection_lost(self, exc: Exception | None) -> None:
            first_gone.set_result(None)  # the loop closes the descriptor before the waiter runs

    def factory(peer: object) -> asyncio.Protocol:
        nonlocal made
        made += 1
        if made % 3 == 0:
            raise RuntimeError("a bug")
        return _First() if made == 1 else _Answer()

    async def main() -> tuple[list[bytes], int, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(loop, listener, "web", factory)
        acceptor.start()
        port = listener.getsockname()[1]
        answers = []
        before = 0
        try:
            for attempt in range(10):
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), 5
                    )
                    writer.write(b"ping")
                    answers.append(await asyncio.wait_for(reader.read(), 5))
                except ConnectionResetError:
                    answers.append(b"")
                else:
                    writer.close()
                    await writer.wait_closed()
                if attempt == 0:  # what the loop opens once (its resolver's) is open now
                    await asyncio.wait_for(first_gone, 5)
                    before = _open_descriptors()
            for _ in range(100):  # the server side's close runs on the loop's next turns
                if _open_descriptors() <= before:
                    break
                await asyncio.sleep(0.01)
            return answers, before, _open_descriptors()
        finally:
            acceptor.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("portico.listeners.acceptor.log.exception", lambda *args: None)
        try:
            answers, before, after = loop.run_until_complete(main())
        finally:
            loop.close()
    assert answers == [b"pong", b"pong", b""] * 3 + [b"pong"]
    assert after == before


class _Rules:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_the_access_check_is_skipped_only_while_its_rules_are_empty(loop_kind: str) -> None:
    """`rules` with no entries: `allows` cannot deny anyone and is not asked; once an entry
    appears, every new peer is judged again (and a denied one gets no answer)."""
    loop = _new_loop(loop_kind)
    rules = _Rules()
    asked: list[str] = []

    def allows(ip: str) -> bool:
        asked.append(ip)
        return False

    async def exchange(port: int) -> bytes:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except ConnectionResetError:
            return b""  # reset as soon as accepted
        try:
            writer.write(b"ping")
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def main() -> tuple[bytes, bytes, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(
            loop, listener, "web", lambda _peer: _Answer(), allows=allows, rules=rules
        )
        acceptor.start()
        try:
            port = listener.getsockname()[1]
            first = await exchange(port)
            rules.entries["deny"] = "127.0.0.1/32"
            second = await exchange(port)
            return first, second, acceptor.counters.denied
        finally:
            acceptor.close()

    try:
        first, second, denied = loop.run_until_complete(main())
    finally:
        loop.close()
    assert first == b"pong"
    assert second == b""
    assert asked == ["127.0.0.1"]
    assert denied == 1


class _Slots:
    """Stands for a loop: what gc.get_referents finds in it is what its slots hold."""

    __slots__ = ("first", "second")

    def __init__(self, *held: object) -> None:
        self.first, self.second = [*held, None, None][:2]


class _Owner:
    """Something a weak reference can point to, standing for a transport."""


def test_the_lightened_registry_reads_as_uvloops_own() -> None:
    """A transport added is found by its descriptor while it lives; once it has gone, its
    descriptor reads as free (a KeyError, as uvloop's check expects), and adding another
    transport on the same descriptor replaces the entry (one per descriptor number)."""
    import weakref

    from portico.listeners.acceptor import lighten_transport_registry

    registry: weakref.WeakValueDictionary[int, _Owner] = weakref.WeakValueDictionary()
    loop = _Slots(registry)
    assert lighten_transport_registry(loop)  # type: ignore[arg-type]
    assert type(registry) is not weakref.WeakValueDictionary
    assert lighten_transport_registry(loop)  # type: ignore[arg-type]  # once is enough
    owner = _Owner()
    registry[7] = owner
    assert registry[7] is owner
    del owner
    with pytest.raises(KeyError):
        registry[7]
    again = _Owner()
    registry[7] = again
    assert registry[7] is again
    assert len(vars(registry)["data"]) == 1


@pytest.mark.parametrize("held", [0, 2])
def test_an_unknown_loop_layout_keeps_its_own_registry(held: int) -> None:
    """No WeakValueDictionary, or more than one: which is the registry is not known, and
    nothing is changed."""
    import weakref

    from portico.listeners.acceptor import lighten_transport_registry

    registries = [weakref.WeakValueDictionary[int, _Owner]() for _ in range(held)]
    assert not lighten_transport_registry(_Slots(*registries))  # type: ignore[arg-type]
    assert all(type(each) is weakref.WeakValueDictionary for each in registries)


def test_uvloop_still_refuses_a_transports_descriptor_to_add_reader() -> None:
    """With the registry lightened, uvloop's check still holds: add_reader and add_writer on
    a descriptor a live transport owns raise; and many connections one after another leave
    at most one entry per descriptor number (no entry per connection)."""
    uvloop = pytest.importorskip("uvloop")
    import gc
    import weakref

    loop = uvloop.new_event_loop()
    refused: list[str] = []

    class _Probe(_Answer):
        def data_received(self, data: bytes) -> None:
            fd = self.transport.get_extra_info("socket").fileno()
            for add in (loop.add_reader, loop.add_writer):
                try:
                    add(fd, lambda: None)
                except RuntimeError as exc:
                    refused.append(str(exc).split(" is used")[0])
            super().data_received(data)

    async def main() -> list[bytes]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(loop, listener, "web", lambda _peer: _Probe())
        acceptor.start()
        port = listener.getsockname()[1]
        answers = []
        try:
            for _ in range(30):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
                writer.write(b"ping")
                answers.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
                await writer.wait_closed()
            return answers
        finally:
            acceptor.close()

    try:
        answers = loop.run_until_complete(main())
        (registry,) = [
            held for held in gc.get_referents(loop) if isinstance(held, weakref.WeakValueDictionary)
        ]
    finally:
        loop.close()
    assert answers == [b"pong"] * 30
    assert len(refused) == 60
    assert all(message.startswith("File descriptor") for message in refused)
    assert type(registry) is not weakref.WeakValueDictionary  # lightened
    assert len(vars(registry)["data"]) < 10  # by descriptor number, not one per connection


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_connections_accepted_in_one_batch_are_all_handed_over(loop_kind: str) -> None:
    """Clients that queued up before the acceptor started are accepted in one wake-up; each
    hand-over waits for its connection_made, and all are resumed after the batch (one loop
    callback for the batch): every one is served, and none is left counted as handshaking.
    Each protocol is made with its own client's address, and gets its own descriptor."""
    loop = _new_loop(loop_kind)
    parked_seen: list[int] = []
    made_for: list[object] = []
    connected_to: list[object] = []
    acceptor: Acceptor | None = None

    class _Counting(_Answer):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert acceptor is not None
            parked_seen.append(len(acceptor._parked))
            connected_to.append(transport.get_extra_info("peername"))
            super().connection_made(transport)

    def factory(peer: object) -> asyncio.Protocol:
        made_for.append(peer)
        return _Counting()

    async def main() -> tuple[list[bytes], int, list[object]]:
        nonlocal acceptor
        listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        port = listener.getsockname()[1]
        acceptor = Acceptor(loop, listener, "web", factory)
        clients = [
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5) for _ in range(6)
        ]  # the kernel completes each handshake: all six wait in the backlog
        for _, writer in clients:
            writer.write(b"ping")
        acceptor.start()
        try:
            answers = [await asyncio.wait_for(reader.read(), 5) for reader, _ in clients]
            own = [writer.get_extra_info("sockname") for _, writer in clients]
            for _, writer in clients:
                writer.close()
            return answers, acceptor.handshaking, own
        finally:
            acceptor.close()

    try:
        answers, handshaking, own = loop.run_until_complete(main())
    finally:
        loop.close()
    assert answers == [b"pong"] * 6
    assert handshaking == 0
    assert parked_seen == [6] * 6  # all six in one batch, resumed after it
    assert sorted(made_for) == sorted(own)  # each client's address, once
    assert connected_to == made_for  # and the transport it got is that client's


def test_a_parked_hand_over_whose_wait_is_not_over_is_resumed_when_it_is() -> None:
    """Should a loop not have finished a parked hand-over's wait by the end of the batch,
    that hand-over is resumed by its future instead, not dropped nor resumed early."""
    loop = asyncio.new_event_loop()
    steps: list[str] = []

    def setup(wait: asyncio.Future[None]) -> Iterator[object]:
        steps.append("started")
        yield wait
        steps.append("resumed")

    async def main() -> list[str]:
        listener = socket.create_server(("127.0.0.1", 0))
        acceptor = Acceptor(loop, listener, "web", lambda _peer: _Answer())
        try:
            wait: asyncio.Future[None] = loop.create_future()
            acceptor._parking = True
            acceptor._step(setup(wait))
            acceptor._parking = False
            acceptor._resume_parked()
            before = list(steps)
            wait.set_result(None)
            await wait  # after the callbacks added before this one: the hand-over's
            return before
        finally:
            acceptor.close()

    try:
        before = loop.run_until_complete(main())
    finally:
        loop.close()
    assert before == ["started"]
    assert steps == ["started", "resumed"]
