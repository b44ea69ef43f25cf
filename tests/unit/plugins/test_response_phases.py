"""What plugins see of the response phases (portico.plugins, portico.filters.plugin): a
response head they may change, transforms and replacements, and the done hook."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from portico.filters.plugin import DoneHook, ResponseHooks
from portico.pipeline import ExchangeView, Outcome, ResponseEdit
from portico.plugins import Filter, Request, Response, ResponseHeaders
from portico.plugins.guard import Guard, PluginError


class _Exchange:
    method = b"GET"
    target = b"/x?y"
    headers: list[tuple[bytes, bytes]] = []
    version = "1.1"
    pool_name = "app"
    route = None


EXCHANGE = cast(ExchangeView, _Exchange())


class Upper:
    def feed(self, data: bytes | memoryview) -> bytes:
        return bytes(data).upper()

    def flush(self) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""

    def abort(self) -> None:
        pass


def make_edit(*, local: bool = False, has_body: bool = True) -> ResponseEdit:
    return ResponseEdit(
        200, b"OK", [(b"Server", b"x")], 10, EXCHANGE, local=local, has_body=has_body
    )


def test_a_hook_changes_status_headers_and_attaches_a_transform() -> None:
    edit = make_edit()
    response = ResponseHeaders.of(edit)
    response.status = 203
    response.set_header("X-Seen", "yes")
    response.transform(Upper())
    assert (edit.status, response.length, response.has_body, response.local) == (
        203,
        10,
        True,
        False,
    )
    assert edit.headers == [(b"Server", b"x"), (b"X-Seen", b"yes")]
    assert len(edit.transforms) == 1
    with pytest.raises(ValueError, match="200 to 599"):
        response.status = 101
    with pytest.raises(ValueError, match="set by Portico"):
        response.set_header("Content-Length", "3")


def test_replace_takes_a_response_and_stops_later_hooks() -> None:
    calls: list[str] = []

    def replacing(request: Request, response: ResponseHeaders) -> None:
        calls.append("first")
        response.replace(Response(410, "gone"))

    def later(request: Request, response: ResponseHeaders) -> None:
        calls.append("later")

    hooks = ResponseHooks([(replacing, Guard("a")), (later, Guard("b"))])
    edit = make_edit()
    hooks.run(EXCHANGE, edit)  # type: ignore[arg-type]
    assert calls == ["first"]
    assert edit.replacement is not None
    assert edit.replacement.status == 410
    assert edit.replacement.body == b"gone"
    with pytest.raises(TypeError, match="takes a Response"):
        ResponseHeaders.of(make_edit()).replace("gone")  # type: ignore[arg-type]


def test_local_answers_reach_only_hooks_that_asked() -> None:
    seen: list[str] = []
    hooks = ResponseHooks(
        [
            (lambda request, response: seen.append("server only"), Guard("a")),
            (lambda request, response: seen.append("local too"), Guard("b")),
        ],
        [False, True],
    )
    assert hooks.local
    hooks.run(EXCHANGE, make_edit(local=True))  # type: ignore[arg-type]
    assert seen == ["local too"]


def test_a_raising_hook_becomes_a_plugin_error() -> None:
    def broken(request: Request, response: ResponseHeaders) -> None:
        raise KeyError("x")

    with pytest.raises(PluginError):
        ResponseHooks([(broken, Guard("mod:Broken"))]).run(EXCHANGE, make_edit())  # type: ignore[arg-type]


def test_a_done_hook_sees_the_outcome_and_its_errors_are_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Counting(Filter):
        def __init__(self) -> None:
            self.outcomes: list[tuple[str, Outcome]] = []

        def on_done(self, request: Request, outcome: Outcome) -> None:
            self.outcomes.append((request.path, outcome))
            if not outcome.complete:
                raise RuntimeError("cannot count a cut one")

    plugin = Counting()
    hook = DoneHook(plugin, Guard("mod:Counting (listener web)"))
    assert hook.name == "mod:Counting (listener web)"
    whole = Outcome(200, True, 5, "a", "app", 0.01)
    hook.on_done(EXCHANGE, whole)
    with caplog.at_level(logging.ERROR, logger="portico.plugins"):
        hook.on_done(EXCHANGE, Outcome(200, False, 2, "a", "app", 0.01, error="server closed"))
    assert [path for path, _ in plugin.outcomes] == ["/x", "/x"]
    assert plugin.outcomes[0][1] is whole
    assert "failed in on_done: RuntimeError" in caplog.text
    assert "logged only" in caplog.text
