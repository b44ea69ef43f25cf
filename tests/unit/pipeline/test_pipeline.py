"""The response phases' pure parts (portico.pipeline): a response head being edited, body
transforms chained in order, and what a failing transform does to the others."""

from __future__ import annotations

import logging
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
