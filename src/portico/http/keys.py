"""Which bytes of a request identify "the same client" (or "the same thing") for hashing and
rate limiting: the client address, the path, a header or a cookie. *pure*

A request that lacks the configured header or cookie falls back to its client address, so a
client cannot escape a limit, or spread over servers, by leaving the header out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from portico.http.headers import Header

# A hash key from (headers, path, client address).
KeyFunction = Callable[[Sequence[Header], bytes, str], bytes]


def key_function(spec: str) -> KeyFunction:
    """Compile a `hash_key` setting (client_ip | path | header:NAME | cookie:NAME)."""
    if spec == "client_ip":
        return lambda headers, path, client_ip: client_ip.encode()
    if spec == "path":
        return lambda headers, path, client_ip: path.split(b"?", 1)[0]
    kind, _, name = spec.partition(":")
    wanted = name.lower().encode()
    if kind == "header":

        def by_header(headers: Sequence[Header], path: bytes, client_ip: str) -> bytes:
            for key, value in headers:
                if key.lower() == wanted:
                    return value
            return client_ip.encode()

        return by_header
    if kind == "cookie":
        cookie_name = name.encode()

        def by_cookie(headers: Sequence[Header], path: bytes, client_ip: str) -> bytes:
            for key, value in headers:
                if key.lower() == b"cookie":
                    for part in value.split(b";"):
                        k, _, v = part.strip().partition(b"=")
                        if k == cookie_name:
                            return v
            return client_ip.encode()

        return by_cookie
    raise ValueError(f"unknown hash key {spec!r}")
