"""A route's request actions as a named request-phase stage: redirect, respond, path rewrite,
request header edits. *pure*

Built once per route and listener by the worker (`portico.worker.route_action_stages`) only
for routes that have actions, so a route without any costs a request one attribute check. The
proxy runs it right after routing, before the route's static site and filters (the order
docs/architecture.md draws). The route's response header edits stay where they were (applied
by the proxy before the response-head stages; see docs/architecture.md for why), so the stage
only hands them over as `response_actions`.
"""

from __future__ import annotations

from typing import Final, Protocol

from portico.http.headers import RequestHead
from portico.http.local import LocalResponse
from portico.routing.actions import (
    RouteActions,
    apply_request_headers,
    fixed_response,
    redirect_response,
    rewrite_path,
)

__all__ = ["RouteActionStage", "RoutedRequest"]


class RoutedRequest(Protocol):
    """What the stage reads and changes of a request (`portico.proxy.l7.Exchange` is one)."""

    target: bytes  # rewritten in place by strip_prefix / replace_prefix

    @property
    def head(self) -> RequestHead: ...


class RouteActionStage:
    """One route's request actions. `on_request` answers (a redirect or a fixed response) or
    edits the request (target, headers) and returns None."""

    __slots__ = ("_actions", "_scheme", "response_actions")

    name: Final = "route_actions"
    asynchronous: Final = False

    def __init__(self, actions: RouteActions, scheme: bytes) -> None:
        self._actions = actions
        self._scheme = scheme  # the listener's: b"http" or b"https", for {scheme} in redirects
        # what the proxy applies to this route's response heads; None when nothing
        self.response_actions = actions if actions.response_headers is not None else None

    def on_request(self, exchange: RoutedRequest) -> LocalResponse | None:
        actions = self._actions
        if actions.respond is not None:
            return fixed_response(actions)
        if actions.redirect is not None:
            return redirect_response(actions, exchange.head.host, exchange.target, self._scheme)
        if actions.strip_prefix is not None:
            exchange.target = rewrite_path(exchange.target, actions)
        if actions.request_headers is not None:
            head = exchange.head
            head.headers = apply_request_headers(head.headers, actions)
        return None

    def __repr__(self) -> str:
        return f"<{self.name} stage {self._actions!r}>"
