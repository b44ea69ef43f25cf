"""Filters: hooks on a request's way through the proxy, each of which may answer it locally.

Each concern has its own module (`ratelimit` for request rate limits). Modules marked *pure*
never await, never touch sockets and never read the clock: the caller passes `now` in.
"""
