"""What a filter is: a hook on a request's way that may answer it locally.

Owns the filter interface. Filters see a request as `FilterRequest` (a protocol the proxy's
`Exchange` satisfies), so that filters never import the proxy that runs them. Filters are
built once per config (one object per listener or route), so a request pays only for the hooks
that exist; a listener without filters pays nothing. Hooks are plain functions: a filter that
must wait on I/O (a shared store) does so with its own bounded timeout, never by blocking the
loop. Users' filters (`portico.plugins.Filter`) reach this chain through `filters.plugin`.
"""

from __future__ import annotations

from typing import Protocol

from portico.http.local import LocalResponse
from portico.plugins import ProxiedRequest

FilterRequest = ProxiedRequest
"""What a filter may read and change of one request (`portico.proxy.l7.Exchange` satisfies
it; users' filters see it through `portico.plugins.Request`)."""


class RequestFilter(Protocol):
    """Runs when a request head is complete, before a backend is chosen. An `asynchronous`
    filter (one that asks a shared store) is awaited through `check` instead."""

    name: str  # the stage's name ("rate_limit", "redirect_https", a plugin's "mod:Class ...")
    asynchronous: bool

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        """None to let the request go on; else the response to answer with (made by
        `portico.http.local.local_response`)."""
        ...

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        """`on_request` for an asynchronous filter."""
        ...
