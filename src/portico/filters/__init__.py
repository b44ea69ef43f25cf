"""Filters: hooks on a request's way through the proxy, each of which may answer it locally.

Each concern has its own module (`ratelimit` for request rate limits). Modules marked *pure*
never await, never touch sockets and never read the clock: the caller passes `now` in.
"""

from __future__ import annotations

from portico.plugins import Filter

__all__ = ["FILTERS"]

FILTERS: dict[str, type[Filter]] = {}
"""Built-in filters by the name a config's `filters: [{use: NAME}]` gives them; users' are
found by entry point (`portico.filters`) or ``module:Class``. The rate limit and
`redirect_https` keep their own keys until they move onto the request pipeline."""
