"""The opt-in explanation response header (a listener's `debug_header`): its short form. *pure*

Owns `short_form`, the one-line summary of where a request went (listener, route, pool,
policy, how many servers were candidates, the server, the attempt), and `DebugHeader`, the
resolved setting the proxy consults once per proxied response. `portico explain` prints the
same short form, so a header seen in production can be compared with an explanation.

Never decides whether a client is trusted by itself (the caller gives it the check, built from
the listener's CIDR list) and never reads anything but names and counts: computing the header
costs a few string operations, and only for trusted clients on listeners that turn it on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from portico.routing.router import DEFAULT_ROUTE_NAME

if TYPE_CHECKING:
    from portico.routing import Route
    from portico.upstreams.pool import Pool

__all__ = ["DebugHeader", "short_form"]

# Config names are tokens already; a server name may hold anything, so it is percent-encoded
# (a header value never gets a control character, a ";" or a "=" from it).
_SAFE = "-._~:/[]()@!$&'*+,"


def short_form(
    listener: str,
    route: str | None,
    pool: str | None,
    policy: str | None,
    candidates: int,
    servers: int,
    server: str | None,
    attempt: int,
) -> str:
    """``listener=web; route=cart; pool=shop; policy=least_conn; candidates=2/3; server=s2;
    attempt=1``: `candidates` of the pool's `servers` were fit for traffic; `attempt` counts
    retries on other servers (1: the first try). An absent value is ``-``."""
    return (
        f"listener={_value(listener)}; route={_value(route)}; pool={_value(pool)}; "
        f"policy={_value(policy)}; candidates={candidates}/{servers}; "
        f"server={_value(server)}; attempt={attempt}"
    )


def _value(name: str | None) -> str:
    return "-" if name is None else quote(name, safe=_SAFE)


@dataclass(frozen=True, slots=True)
class DebugHeader:
    """A listener's `debug_header` setting, resolved once per config.

    `trusts(client_ip)` says whether a client may see it (the listener's `trusted` networks);
    `policies` maps each pool name to its policy's config name.
    """

    name: bytes
    trusts: Callable[[str], bool]
    policies: Mapping[str, str]

    def field(
        self, listener: str, route: Route | None, pool: Pool, server: str | None, attempt: int
    ) -> tuple[bytes, bytes]:
        """The header field for one proxied response."""
        value = short_form(
            listener,
            route.name if route is not None else DEFAULT_ROUTE_NAME,  # a listener with no routes
            pool.name,
            self.policies.get(pool.name),
            len(pool.available),
            len(pool.backends),
            server,
            attempt,
        )
        return (self.name, value.encode("ascii"))
