"""Whether the servers' host names resolve here: the warnings of `portico check`.

Owns asking the system resolver (`getaddrinfo`, as connecting will) about every server address
that is a name, a few at once and each bounded in time, and wording what did not resolve. A
name that does not resolve is a warning, never an error: DNS where Portico runs (a container
network, a split-horizon zone) may well differ from DNS where the file is checked. Never
decides validity (`config/` does) and never connects.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Final

from portico.config.schema import Config, ReferenceIssue

__all__ = ["RESOLVE_TIMEOUT", "unresolved_servers"]

RESOLVE_TIMEOUT: Final = 5.0  # seconds for all the look-ups together
_AT_ONCE: Final = 8

Resolver = Callable[[str, int], object]


def _getaddrinfo(host: str, port: int) -> object:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def unresolved_servers(
    config: Config, resolve: Resolver = _getaddrinfo, timeout: float = RESOLVE_TIMEOUT
) -> list[ReferenceIssue]:
    """One issue per server whose host name does not resolve here (or not within `timeout`),
    at the server's ``address`` key path, in file order. IP addresses are not looked up; a
    name used by several servers is looked up once."""
    names = {
        (server.address.host, server.address.port)
        for pool in config.pools.values()
        for server in pool.servers
        if not _is_ip(server.address.host)
    }
    if not names:
        return []
    reasons: dict[tuple[str, int], str] = {}
    executor = ThreadPoolExecutor(max_workers=min(_AT_ONCE, len(names)))
    try:
        futures = {key: executor.submit(resolve, *key) for key in names}
        wait(futures.values(), timeout=timeout)
        for key, future in futures.items():
            if not future.done():
                reasons[key] = f"no answer from the resolver within {timeout:g} s"
                continue
            exc = future.exception()
            if isinstance(exc, socket.gaierror):
                reasons[key] = exc.strerror or str(exc)
            elif exc is not None:
                reasons[key] = str(exc) or type(exc).__name__
    finally:
        executor.shutdown(wait=False, cancel_futures=True)  # a hung look-up must not hold us
    issues = []
    for pool_name, pool_config in config.pools.items():
        for i, server in enumerate(pool_config.servers):
            host, port = server.address
            reason = reasons.get((host, port))
            if reason is not None:
                issues.append(
                    ReferenceIssue(
                        ("pools", pool_name, "servers", i, "address"),
                        f'warning: "{host}" does not resolve here ({reason}): requests sent '
                        "to this server fail (502) unless it resolves where Portico runs",
                    )
                )
    return issues
