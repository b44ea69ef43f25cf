"""`redirect_https`: a plain-HTTP listener that sends every client to the HTTPS URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from portico.http.local import LocalResponse, local_response

if TYPE_CHECKING:
    from portico.filters.base import FilterRequest


def host_without_port(host: bytes) -> bytes:
    """The name in a Host value: ``example.com:8080`` -> ``example.com``, ``[::1]:80`` ->
    ``[::1]`` (an IPv6 literal keeps its brackets)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.split(b":", 1)[0]


class RedirectToHttps:
    """Answers 308 with `Location: https://<host>[:<port>]<target>` (308 keeps the method and
    body). `port`: the https port, None for the default (443, left out of the URL)."""

    name = "redirect_https"  # the request phase's stage name
    asynchronous = False

    def __init__(self, port: int | None = None) -> None:
        self.port_suffix = b"" if port is None or port == 443 else b":%d" % port

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        return self.on_request(exchange)

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        host = exchange.head.host or b"localhost"
        if b"\r" in host or b"\n" in host:
            host = b"localhost"  # a validated request has none; belt and braces
        location = b"https://" + host_without_port(host) + self.port_suffix + exchange.target
        return local_response(
            308,
            [
                (b"Location", location),
                (b"Content-Length", b"0"),
                (b"Cache-Control", b"max-age=3600"),
            ],
        )
