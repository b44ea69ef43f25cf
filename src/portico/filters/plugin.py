"""Users' filters (`portico.plugins.Filter`) in the proxy's filter chain.

Owns the adapters between a plugin's hooks and what the proxy runs: `PluginFilter` (an
`on_request` hook as a `RequestFilter`: its `Response` turned into a `LocalResponse`, a
failure into a 500), `ResponseHooks` (the `on_response` hooks of a listener or route, run on
each server response head), `DoneHook` (an `on_done` hook as a done-phase stage) and
`RouteChain` (one route's filters and stages). Each hook runs behind its
plugin's `Guard`: timed, its exceptions contained. Only hooks a plugin overrides are ever
called, so a filter with only `on_request` costs nothing on responses, and a listener without
plugin filters pays nothing at all (its settings hold no adapters).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import cast

from portico.filters.base import FilterRequest, RequestFilter
from portico.http.errors import upstream_error
from portico.http.local import LocalResponse
from portico.pipeline import DoneStage, ExchangeView, Outcome, ResponseEdit, ResponseStage
from portico.plugins import Filter, Request, Response, ResponseHeaders
from portico.plugins.guard import Guard

__all__ = [
    "DoneHook",
    "PluginFilter",
    "ResponseHook",
    "ResponseHooks",
    "RouteChain",
    "RouteFilters",
    "overrides",
]

_FAILED = upstream_error(500)

RequestHook = Callable[[Request], Response | Awaitable[Response | None] | None]
ResponseHook = Callable[[Request, ResponseHeaders], None]
DoneCallback = Callable[[Request, Outcome], None]


class _NoRequest:
    """What a reusable view points at between calls: nothing a plugin could use."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("a Request is valid only during the hook call it was given to")


_NO_REQUEST = cast(FilterRequest, _NoRequest())


def overrides(plugin: Filter, hook: str) -> bool:
    """Whether `plugin`'s class defines `hook` itself (else the base's does nothing)."""
    return getattr(type(plugin), hook) is not getattr(Filter, hook)


class PluginFilter:
    """A plugin's `on_request` in the proxy's request filter chain. A plain function hook is
    called inline and timed; an ``async def`` one is awaited (the exchange spawns it) within
    `timeout`. A `Response` is answered; an exception or a timeout answers 500."""

    __slots__ = ("_hook", "_view", "asynchronous", "budget", "guard", "name", "timeout")

    def __init__(self, plugin: Filter, guard: Guard, timeout: float) -> None:
        self._hook: RequestHook = plugin.on_request
        self.guard = guard
        self.name = guard.name
        self.budget = guard.budget
        self._view = Request(_NO_REQUEST)
        self.timeout = timeout
        self.asynchronous = inspect.iscoroutinefunction(plugin.on_request)

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        # the hot path of every request on a listener with this filter: kept to one call of
        # the hook, one allocation (the view) and two clock reads
        view = self._view  # one per filter, re-aimed: a view is valid during its call only
        view._exchange = exchange
        started = perf_counter()
        try:
            answer = self._hook(view)
        except Exception as exc:
            self.guard.timed(started)  # before logging: the log's own time is not the plugin's
            view._exchange = _NO_REQUEST
            self.guard.failed(exc, "on_request")
            return _FAILED
        if perf_counter() - started > self.budget:
            self.guard.timed(started)
        view._exchange = _NO_REQUEST
        return None if answer is None else self._answer(answer)

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        if not self.asynchronous:
            return self.on_request(exchange)
        guard = self.guard
        try:
            async with asyncio.timeout(self.timeout):
                answer = await cast(Awaitable[Response | None], self._hook(Request(exchange)))
        except TimeoutError as exc:
            guard.failed(exc, f"on_request (no answer within {self.timeout:g}s)")
            return _FAILED
        except Exception as exc:
            guard.failed(exc, "on_request")
            return _FAILED
        return self._answer(answer)

    def _answer(self, answer: object) -> LocalResponse | None:
        if answer is None:
            return None
        if not isinstance(answer, Response):
            error = TypeError(f"on_request returned {type(answer).__name__}, not Response or None")
            self.guard.failed(error, "on_request")
            return _FAILED
        return answer.to_local()


class ResponseHooks:
    """The `on_response` hooks of one listener or route, in the order they run; `local`:
    some want Portico's own answers too (`Filter.local_answers`)."""

    __slots__ = ("_hooks", "_local", "local")

    def __init__(
        self, hooks: Sequence[tuple[ResponseHook, Guard]], local: Sequence[bool] = ()
    ) -> None:
        self._hooks = tuple(hooks)
        self._local = tuple(local) or (False,) * len(self._hooks)
        self.local = any(self._local)

    def run(self, exchange: FilterRequest, edit: ResponseEdit) -> None:
        """Every hook on `edit`, until one replaces the response; raises PluginError (logged)
        when one raised: the exchange then answers 500 instead of the server's response."""
        request = Request(exchange)
        response = ResponseHeaders.of(edit)
        local = edit.local
        for (hook, guard), wants_local in zip(self._hooks, self._local, strict=True):
            if local and not wants_local:
                continue
            started = perf_counter()
            try:
                hook(request, response)
            except Exception as exc:
                guard.timed(started)
                raise guard.failed(exc, "on_response") from exc
            guard.timed(started)
            if edit.replacement is not None:
                return


class DoneHook:
    """A plugin's `on_done` as a done-phase stage: timed; what it raises is logged (the
    request is over: nothing fails)."""

    __slots__ = ("_hook", "guard", "name")

    def __init__(self, plugin: Filter, guard: Guard) -> None:
        self._hook: DoneCallback = plugin.on_done
        self.guard = guard
        self.name = guard.name

    def on_done(self, exchange: ExchangeView, outcome: Outcome) -> None:
        started = perf_counter()
        try:
            self._hook(Request(cast(FilterRequest, exchange)), outcome)
        except Exception as exc:
            self.guard.timed(started)
            self.guard.failed(exc, "on_done", "logged only: the request was over")
            return
        self.guard.timed(started)


@dataclass(frozen=True, slots=True)
class RouteChain:
    """One route's filters and stages: request filters run after the listener's (and after
    routing); response hooks and stages, and done stages, before the listener's."""

    request: tuple[RequestFilter, ...] = ()
    response: ResponseHooks | None = None  # users' on_response hooks (servers' responses)
    response_stages: tuple[ResponseStage, ...] = ()  # every response head, local ones too
    done_stages: tuple[DoneStage, ...] = ()


RouteFilters = tuple[RouteChain | None, ...]
"""By route index; the last entry is the default route's (index -1)."""
