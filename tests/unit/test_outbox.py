"""The outbox holds a turn's small writes and sends them at its end: every transport still gets
its bytes in the order they were written, whatever mix of held and immediate writes, and
nothing is held while no worker loop runs it."""

from __future__ import annotations

import asyncio

from portico.outbox import DEFER_MAX, TURN_MAX, Outbox


class Recorder:
    """A transport that records what reaches it, in order (shared log for several)."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.closing = False

    def write(self, data: bytes | memoryview) -> None:
        self.log.append((self.name, bytes(data)))

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        self.log.append((self.name, b"".join(bytes(part) for part in parts)))

    def is_closing(self) -> bool:
        return self.closing


def run(body: object) -> None:
    async def main() -> None:
        await body()  # type: ignore[operator]

    asyncio.run(main())


def test_not_started_writes_at_once() -> None:
    log: list[tuple[str, bytes]] = []
    box, t = Outbox(), Recorder("t", log)
    box.write(t, b"a")  # type: ignore[arg-type]
    box.writelines(t, [b"b", b"c"], 2)  # type: ignore[arg-type]
    assert log == [("t", b"a"), ("t", b"bc")]


def test_small_writes_leave_together_at_the_turns_end_in_order() -> None:
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        a, b = Recorder("a", log), Recorder("b", log)
        box.write(a, b"1")  # type: ignore[arg-type]
        box.write(b, b"2")  # type: ignore[arg-type]
        box.writelines(a, [b"3", memoryview(b"45")], 3)  # type: ignore[arg-type]
        assert log == []  # held
        await asyncio.sleep(0)
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"345")]
        box.stop()

    run(body)


def test_an_immediate_write_goes_after_what_is_held() -> None:
    """Too big, or a buffer that may change (a view of a bytearray): written at once, and
    what was held goes first, so the transport's order is the order of the calls."""
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        t = Recorder("t", log)
        box.write(t, b"head")  # type: ignore[arg-type]
        shared = bytearray(b"view")
        box.write(t, memoryview(shared))  # type: ignore[arg-type]
        assert log == [("t", b"head"), ("t", b"view")]
        box.write(t, b"x")  # type: ignore[arg-type]
        big = b"y" * (DEFER_MAX + 1)
        box.writelines(t, [big], len(big))  # type: ignore[arg-type]
        assert log[2:] == [("t", b"x"), ("t", big)]
        box.stop()

    run(body)


def test_a_turn_holds_at_most_turn_max() -> None:
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        t = Recorder("t", log)
        piece = b"z" * DEFER_MAX
        count = TURN_MAX // DEFER_MAX
        for _ in range(count):
            box.write(t, piece)  # type: ignore[arg-type]
        assert log == []
        box.write(t, b"over")  # type: ignore[arg-type]  # the turn is full: all goes now
        assert [data for _, data in log] == [piece] * count + [b"over"]
        box.stop()

    run(body)


def test_a_transport_that_refuses_its_bytes_costs_the_others_nothing() -> None:
    """A transport closed within the turn may refuse what it held (uvloop raises on a closed
    handle): the writes held for the other transports still go, in order."""
    log: list[tuple[str, bytes]] = []

    class Closed(Recorder):
        def write(self, data: bytes | memoryview) -> None:
            raise RuntimeError("unable to perform operation; the handler is closed")

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        first, gone, last = Recorder("first", log), Closed("gone", log), Recorder("last", log)
        box.write(first, b"1")  # type: ignore[arg-type]
        box.write(gone, b"lost")  # type: ignore[arg-type]
        box.write(last, b"2")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert log == [("first", b"1"), ("last", b"2")]
        box.stop()

    run(body)


def test_a_loop_that_no_longer_runs_holds_nothing() -> None:
    """A worker's loop that ended (a test's) leaves nothing behind: the next writes, from
    another loop or none, go at once."""
    log: list[tuple[str, bytes]] = []
    box = Outbox()

    async def started() -> None:
        box.start(asyncio.get_running_loop())

    run(started)
    t = Recorder("t", log)
    box.write(t, b"after")  # type: ignore[arg-type]
    assert log == [("t", b"after")]

    async def other_loop() -> None:
        box.write(t, b"again")  # type: ignore[arg-type]
        assert log[-1] == ("t", b"again")

    run(other_loop)


def test_flush_to_one_transport_keeps_the_others_waiting() -> None:
    """Before a close: that transport's held bytes go, in order; the rest wait for the turn."""
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        a, b = Recorder("a", log), Recorder("b", log)
        box.write(a, b"1")  # type: ignore[arg-type]
        box.write(b, b"2")  # type: ignore[arg-type]
        box.writelines(a, [b"3", b"4"], 2)  # type: ignore[arg-type]
        box.flush_to(a)  # type: ignore[arg-type]
        assert log == [("a", b"1"), ("a", b"34")]
        box.write(a, b"5")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert log[2:] == [("b", b"2"), ("a", b"5")]
        box.stop()

    run(body)


def test_flush_to_a_transport_whose_one_write_is_the_last_held() -> None:
    """The usual close: a response's write, the turn's last, then its close. Only those bytes
    go; the others' wait in order, and the turn's bound counts only what is still held."""
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        a, b, c, d = (Recorder(name, log) for name in "abcd")
        box.write(a, b"1")  # type: ignore[arg-type]
        box.write(b, b"22")  # type: ignore[arg-type]
        box.writelines(c, [b"33", memoryview(b"3")], 3)  # type: ignore[arg-type]
        box.flush_to(d)  # type: ignore[arg-type]
        assert log == []  # nothing held for it
        box.flush_to(c)  # type: ignore[arg-type]
        assert log == [("c", b"333")]
        box.flush_to(c)  # type: ignore[arg-type]
        assert log == [("c", b"333")]
        assert box._size == 3
        box.write(b, b"4")  # type: ignore[arg-type]
        box.flush_to(a)  # type: ignore[arg-type]  (its write is the first of three)
        assert log[1:] == [("a", b"1")]
        await asyncio.sleep(0)
        assert log[2:] == [("b", b"22"), ("b", b"4")]
        box.stop()

    run(body)


def test_held_for_counts_one_transports_bytes_and_writes_nothing() -> None:
    """A body read asks how much its client has waiting from inside uvloop's buffer callback,
    where a write (one that paused the reader) would stop the stream mid-read: asking writes
    nothing."""
    log: list[tuple[str, bytes]] = []

    async def body() -> None:
        box = Outbox()
        box.start(asyncio.get_running_loop())
        a, b = Recorder("a", log), Recorder("b", log)
        assert box.held_for(a) == 0  # type: ignore[arg-type]
        box.write(a, b"12")  # type: ignore[arg-type]
        box.write(b, b"3")  # type: ignore[arg-type]
        box.writelines(a, [b"45", memoryview(b"678")], 5)  # type: ignore[arg-type]
        assert box.held_for(a) == 7  # type: ignore[arg-type]
        assert box.held_for(b) == 1  # type: ignore[arg-type]
        assert log == []
        await asyncio.sleep(0)
        assert box.held_for(a) == 0  # type: ignore[arg-type]
        box.stop()

    run(body)
