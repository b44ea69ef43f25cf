"""Deadlines sharing one timer per loop: each fires once when due, never early, not after
`clear` or `cancel`; pushing one back costs no timer, and dropped ones do not pile up."""

from __future__ import annotations

import pytest

from fakes import FakeLoop
from portico.timers import Deadline, timers_of


def deadline(loop: FakeLoop, fired: list[str], name: str) -> Deadline:
    return Deadline(loop, lambda: fired.append(name))  # type: ignore[arg-type]


def test_a_deadline_fires_once_when_due_and_never_early() -> None:
    loop, fired = FakeLoop(), []
    d = deadline(loop, fired, "a")
    d.set(5.0)
    assert d.armed
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.1)
    assert fired == ["a"]
    assert not d.armed
    loop.advance(100)
    assert fired == ["a"]


def test_clear_and_cancel_disarm() -> None:
    loop, fired = FakeLoop(), []
    cleared, cancelled = deadline(loop, fired, "cleared"), deadline(loop, fired, "cancelled")
    cleared.set(1.0)
    cancelled.set(1.0)
    cleared.clear()
    cancelled.cancel()
    loop.advance(10)
    assert fired == []
    cleared.set(1.0)  # armed again after a clear
    loop.advance(1.0)
    assert fired == ["cleared"]


class _Owner:
    def __init__(self) -> None:
        self.timeouts = 0

    def on_timeout(self) -> None:
        self.timeouts += 1


def test_a_deadline_with_an_owner_calls_its_function_with_the_owner() -> None:
    """What a client connection's keep-alive or header timeout relies on: `Deadline(loop,
    Class.method, owner)` calls `method(owner)` when due, and not once cancelled (nor does it
    keep the owner then)."""
    loop = FakeLoop()
    owner, gone = _Owner(), _Owner()
    d = Deadline(loop, _Owner.on_timeout, owner)  # type: ignore[arg-type]
    cancelled = Deadline(loop, _Owner.on_timeout, gone)  # type: ignore[arg-type]
    d.set(2.0)
    cancelled.set(1.0)
    cancelled.cancel()
    loop.advance(1.9)
    assert owner.timeouts == 0
    loop.advance(0.1)
    assert owner.timeouts == 1
    assert gone.timeouts == 0
    assert cancelled._owner is None  # nothing keeps a connection that went away
    d.set(1.0)  # and again, as a connection's next idle time
    loop.advance(1.0)
    assert owner.timeouts == 2


def test_pushed_back_deadline_fires_at_its_latest_time_without_a_new_timer() -> None:
    loop, fired = FakeLoop(), []
    d = deadline(loop, fired, "a")
    d.set(5.0)
    handles = len(loop.handles)
    for _ in range(10):
        loop.advance(1.0)
        d.set(5.0)  # a read on a busy connection: later than the one scheduled
    assert len(loop.handles) == handles  # no timer made or cancelled per push
    assert fired == []
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.1)
    assert fired == ["a"]


def test_a_deadline_set_earlier_fires_at_the_earlier_time() -> None:
    loop, fired = FakeLoop(), []
    d = deadline(loop, fired, "a")
    d.set(75.0)
    d.set(10.0)
    loop.advance(10.0)
    assert fired == ["a"]
    loop.advance(100)
    assert fired == ["a"]


def test_deadlines_of_a_loop_share_one_timer_and_fire_in_order() -> None:
    loop, fired = FakeLoop(), []
    for name, seconds in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("d", 4.0)]:
        deadline(loop, fired, name).set(seconds)
    assert len(loop.pending()) == 1
    loop.advance(2.5)
    assert fired == ["a", "b"]
    loop.advance(10)
    assert fired == ["a", "b", "c", "d"]


def test_deadlines_armed_between_firings_fire_in_order_and_the_dropped_never() -> None:
    """New entries wait off the heap until the timer fires: armed out of order, between two
    firings, some cancelled or cleared and some pushed earlier before the timer fires, each
    live one still fires once, in order, when due."""
    loop, fired = FakeLoop(), []
    deadline(loop, fired, "first").set(1.0)
    armed = {name: deadline(loop, fired, name) for name in "abcdef"}
    for name, seconds in [("d", 6.0), ("a", 3.0), ("c", 5.0), ("b", 4.0), ("e", 7.0)]:
        armed[name].set(seconds)
    armed["f"].set(9.0)
    armed["f"].set(2.5)  # earlier: a second entry, the first dropped
    armed["c"].cancel()
    armed["e"].clear()
    loop.advance(1.0)
    assert fired == ["first"]
    deadline(loop, fired, "late").set(0.5)  # armed after a firing: due before the others
    loop.advance(10)
    assert fired == ["first", "late", "f", "a", "b", "d"]
    assert len(timers_of(loop)) == 0  # type: ignore[arg-type]


def test_a_callback_that_raises_is_reported_and_the_others_still_fire() -> None:
    loop, fired = FakeLoop(), []

    def boom() -> None:
        raise RuntimeError("boom")

    Deadline(loop, boom).set(1.0)  # type: ignore[arg-type]
    deadline(loop, fired, "after").set(1.0)
    loop.advance(1.0)
    assert fired == ["after"]
    assert [str(e) for e in loop.errors] == ["boom"]


def test_a_callback_may_arm_and_cancel_deadlines() -> None:
    loop, fired = FakeLoop(), []
    other = deadline(loop, fired, "other")
    other.set(1.5)
    again = deadline(loop, fired, "again")

    def first() -> None:
        fired.append("first")
        other.cancel()
        again.set(2.0)

    Deadline(loop, first).set(1.0)  # type: ignore[arg-type]
    loop.advance(1.0)
    assert fired == ["first"]
    loop.advance(5.0)
    assert fired == ["first", "again"]


def test_cancelled_deadlines_do_not_pile_up() -> None:
    """Short connections: each arms a long timeout and cancels it a moment later."""
    loop, fired = FakeLoop(), []
    for _ in range(10_000):
        d = deadline(loop, fired, "x")
        d.set(10.0)
        d.cancel()
    assert len(timers_of(loop)) <= 200  # type: ignore[arg-type]
    loop.advance(20)
    assert fired == []


@pytest.mark.parametrize("pushes", [1, 3])
def test_deadlines_pushed_earlier_many_times_do_not_pile_up(pushes: int) -> None:
    loop, fired = FakeLoop(), []
    live = [deadline(loop, fired, str(i)) for i in range(50)]
    for step in range(200):
        for d in live:
            for p in range(pushes):
                d.set(1000.0 - step - p)  # earlier each time: a new entry each
    assert len(timers_of(loop)) <= 4 * len(live) + 200  # type: ignore[arg-type]
    loop.advance(1000)
    assert sorted(fired) == sorted(str(i) for i in range(50))


def test_a_deadline_set_later_for_another_length_fires_at_the_later_time() -> None:
    """A connection's header timeout (short) followed by its keep-alive timeout (long): the
    deadline moves to the longer length's queue and does not fire at the shorter time."""
    loop, fired = FakeLoop(), []
    d = deadline(loop, fired, "a")
    d.set(2.0)
    d.set(10.0)
    loop.advance(9.9)
    assert fired == []
    loop.advance(0.1)
    assert fired == ["a"]


def test_a_callback_that_rearms_at_once_waits_for_the_next_round() -> None:
    """A callback arming its own deadline for 0 s does not run again within the same round (a
    round without end), but on the next one."""
    loop = FakeLoop()
    calls: list[float] = []

    def again() -> None:
        calls.append(loop.time())
        if len(calls) < 3:
            d.set(0.0)

    d = Deadline(loop, again)  # type: ignore[arg-type]
    d.set(1.0)
    loop.advance(1.0)
    assert calls == [101.0, 101.0, 101.0]


def test_many_connections_with_one_timeout_fire_in_the_order_they_were_armed() -> None:
    loop, fired = FakeLoop(), []
    armed = [deadline(loop, fired, str(i)) for i in range(100)]
    for d in armed:
        d.set(5.0)
        loop.advance(0.01)
    for d in armed[::2]:  # half of them busy again: pushed back
        d.set(5.0)
    loop.advance(4.995)  # to 105.995: the last unmoved one was due at 105.99, the moved at 106
    assert fired == [str(i) for i in range(1, 100, 2)]
    loop.advance(10)
    assert fired[50:] == [str(i) for i in range(0, 100, 2)]
