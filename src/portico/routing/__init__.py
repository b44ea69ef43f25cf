"""L7 routing of HTTP requests: the router that picks a request's route, the matchers it is
built from, and the actions a route applies. *pure*: no I/O, no event loop.

The proxy compiles one `Router` per listener and config (`Router.compile`), calls
`router.match(...)` once per request, and applies the chosen route's `actions` with the
functions of `portico.routing.actions`.
"""

from portico.routing.actions import (
    RouteActions,
    apply_request_headers,
    apply_response_headers,
    fixed_response,
    redirect_response,
    rewrite_path,
)
from portico.routing.router import Route, Router

__all__ = [
    "Route",
    "RouteActions",
    "Router",
    "apply_request_headers",
    "apply_response_headers",
    "fixed_response",
    "redirect_response",
    "rewrite_path",
]
