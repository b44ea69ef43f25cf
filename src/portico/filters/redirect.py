"""`redirect_https`: a plain-HTTP listener that sends every client to the HTTPS URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portico.filters.base import FilterRequest


class RedirectToHttps:
    """Answers 308 with `Location: https://<host><target>` (308 keeps the method and body)."""

    asynchronous = False

    async def check(self, exchange: FilterRequest) -> bytes | None:
        return self.on_request(exchange)

    def on_request(self, exchange: FilterRequest) -> bytes | None:
        host = exchange.head.host or b"localhost"
        if b"\r" in host or b"\n" in host:
            host = b"localhost"  # a validated request has none; belt and braces
        return (
            b"HTTP/1.1 308 Permanent Redirect\r\n"
            b"Location: https://" + host.split(b":", 1)[0] + exchange.target + b"\r\n"
            b"Content-Length: 0\r\n"
            b"Cache-Control: max-age=3600\r\n\r\n"
        )
