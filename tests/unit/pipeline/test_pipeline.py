"""The response phases' pure parts (portico.pipeline): a response head being edited, body
transforms chained in order, and what a failing transform does to the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import pytest

from portico.http.headers import RequestHead
from portico.http.local import local_response
from portico.pipeline import (
    BodyTransform,
    ExchangeView,
    Outcome,
    ResponseEdit,
    TransformChain,
    TransformFailed,
    TurnBudget,
)


class Recorder:
    """Wraps each piece in `tag`; holds back every second feed until flush."""

    def __init__(self, tag: bytes, hold: bool = False) -> None:
        self.tag = tag
        self.hold = hold
        self.held = b""
        self.calls: list[str] = []

    def feed(self, data: bytes | memoryview) -> bytes:
        self.calls.append("feed")
        piece = self.tag + bytes(data) + self.tag
        if self.hold:
            self.held += piece
            return b""
        return piece

    def flush(self) -> bytes:
        self.calls.append("flush")
        out, self.held = self.held, b""
        return out

    def end(self) -> bytes:
        self.calls.append("end")
        out, self.held = self.held, b""
        return out + b"<" + self.tag + b">"

    def abort(self) -> None:
        self.calls.append("abort")


class Raising(Recorder):
    def feed(self, data: bytes | memoryview) -> bytes:
        self.calls.append("feed")
        raise ValueError("no")


class _Request:
    method = b"GET"
    target = b"/x"
    headers: list[tuple[bytes, bytes]] = []
    head = cast(RequestHead, None)
    pool_name = "app"


def edit(**kwargs: object) -> ResponseEdit:
    return ResponseEdit(
        200,
        b"OK",
        [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")],
        5,
        cast(ExchangeView, _Request()),
        **kwargs,  # type: ignore[arg-type]
    )


def test_transforms_chain_in_the_order_attached() -> None:
    a, b = Recorder(b"a"), Recorder(b"b")
    chain = TransformChain([a, b])
    assert chain.feed(b"x") == b"bax" + b"ab"
    assert chain.end() == b"b<a>b<b>"  # a's last bytes went through b, then b's
    assert chain.end() == b""  # once


def test_flush_pushes_held_bytes_through_the_later_transforms() -> None:
    a, b = Recorder(b"a", hold=True), Recorder(b"b")
    chain = TransformChain([a, b])
    assert chain.feed(b"1") == b""  # held by a: b is not even called
    assert b.calls == []
    assert chain.flush() == b"ba1ab"
    assert chain.end() == b"b<a>b<b>"


def test_a_transform_that_raises_aborts_the_others_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, bad, c = Recorder(b"a"), Raising(b"x"), Recorder(b"c")
    chain = TransformChain([a, bad, c])
    with caplog.at_level(logging.ERROR, logger="portico.pipeline"), pytest.raises(TransformFailed):
        chain.feed(b"data")
    assert a.calls == ["feed", "abort"]
    assert c.calls == ["abort"]
    assert bad.calls == ["feed"]  # the one that failed is not told again
    assert "body transform Raising failed in feed: ValueError: no" in caplog.text
    chain.abort()  # after a failure: nothing more
    assert a.calls == ["feed", "abort"]


def test_abort_tells_every_transform_once() -> None:
    a, b = Recorder(b"a"), Recorder(b"b")
    chain = TransformChain([a, b])
    chain.abort()
    chain.abort()
    assert a.calls == ["abort"]
    assert b.calls == ["abort"]
    assert chain.end() == b""


def test_response_edit_headers_status_and_replace() -> None:
    response = edit()
    assert response.header(b"content-type") == b"text/html"
    response.set_header(b"Content-Type", b"text/plain")
    response.remove_header(b"SET-COOKIE")
    assert response.headers == [(b"Content-Type", b"text/plain")]
    response.status = 201
    answer = local_response(204)
    response.replace(answer)
    assert response.replacement is answer


def test_transform_is_ignored_without_a_body() -> None:
    transform = cast(BodyTransform, Recorder(b"a"))
    with_body, without = edit(), edit(has_body=False)
    with_body.transform(transform)
    without.transform(transform)
    assert with_body.transforms == [transform]
    assert without.transforms == []


def test_outcome_is_a_frozen_value() -> None:
    outcome = Outcome(200, True, 10, "a", "app", 0.01)
    assert outcome.error is None
    with pytest.raises(AttributeError):
        outcome.status = 500  # type: ignore[misc]


class _Loop:
    """What a TurnBudget needs of the event loop: call_soon, run by hand (`turn`)."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object], /) -> object:
        self.soon.append(callback)
        return None

    def turn(self) -> None:
        due, self.soon = self.soon, []
        for callback in due:
            callback()


def test_turn_budget_bounds_the_inline_work_of_one_turn_across_responses() -> None:
    budget, loop = TurnBudget(), _Loop()
    # eight responses each bring a piece of 40% of offload_min in the same turn: the first
    # two are transformed inline, the rest go to a thread (8 x 40% would hold the loop 3.2x)
    taken = [budget.take(40, 100, loop) for _ in range(8)]
    assert taken == [True, True, False, False, False, False, False, False]
    assert len(loop.soon) == 1  # one refill for the turn, not one per piece
    loop.turn()
    assert budget.take(40, 100, loop)  # a new turn: the budget is whole again


def test_turn_budget_never_takes_a_piece_of_offload_min_or_more() -> None:
    budget, loop = TurnBudget(), _Loop()
    assert not budget.take(100, 100, loop)
    assert not budget.take(1000, 100, loop)
    assert loop.soon == []  # nothing charged, nothing to refill
    assert budget.take(99, 100, loop)


def test_turn_budget_refills_on_a_new_loop_whose_predecessor_never_ran_the_refill() -> None:
    budget, first = TurnBudget(), _Loop()
    assert budget.take(90, 100, first)
    assert not budget.take(20, 100, first)
    second = _Loop()  # `first` closed without running its callbacks (a test's loop, say)
    assert budget.take(5, 100, second)  # charged, and a refill scheduled on the live loop
    second.turn()
    assert budget.take(90, 100, second)


def test_turn_budget_runs_waiting_pieces_first_come_first_served_one_call_each() -> None:
    budget, loop = TurnBudget(), _Loop()
    ran: list[str] = []
    assert budget.take(70, 100, loop)
    for name in "abcd":  # four pieces of 40% that did not fit this turn
        assert not budget.take(40, 100, loop)
        budget.wait(40, 100, loop, lambda name=name: ran.append(name))
    assert not budget.take(1, 100, loop)  # a newcomer never overtakes those waiting
    loop.turn()
    assert ran == ["a", "b"]  # 40% + 40% fit a turn, a third would not
    loop.turn()
    assert ran == ["a", "b", "c", "d"]
    loop.turn()  # the turn after a busy one: the whole budget, nothing left to run
    assert loop.soon == []
    assert budget.take(99, 100, loop)


def test_turn_budget_with_a_share_spends_that_fraction_of_offload_min_a_turn() -> None:
    budget, loop = TurnBudget(share=0.5), _Loop()
    assert budget.take(30, 100, loop)
    assert not budget.take(30, 100, loop)  # 60% of offload_min would pass the half
    ran: list[str] = []
    budget.wait(30, 100, loop, lambda: ran.append("a"))
    budget.wait(80, 100, loop, lambda: ran.append("big"))  # more than a turn's share
    loop.turn()
    assert ran == ["a"]  # 30% fits; the big piece does not fit beside it
    loop.turn()
    assert ran == ["a", "big"]  # a turn to itself
    loop.turn()
    assert budget.take(49, 100, loop)
