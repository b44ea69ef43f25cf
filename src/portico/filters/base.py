"""What a filter is: a hook on a request's way that may answer it locally.

Owns the filter interface only. Filters are built once per config (one object per listener or
route), so a request pays only for the hooks that exist; a listener without filters pays
nothing. Hooks are plain functions: a filter that must wait on I/O (a shared store) does so
with its own bounded timeout, never by blocking the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from portico.proxy.l7 import Exchange


class RequestFilter(Protocol):
    """Runs when a request head is complete, before a backend is chosen. An `asynchronous`
    filter (one that asks a shared store) is awaited through `check` instead."""

    asynchronous: bool

    def on_request(self, exchange: Exchange) -> bytes | None:
        """None to let the request go on; else the complete response to answer with."""
        ...

    async def check(self, exchange: Exchange) -> bytes | None:
        """`on_request` for an asynchronous filter."""
        ...
