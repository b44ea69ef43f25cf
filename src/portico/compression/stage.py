"""The compression step of a response head: decide, edit the head, make the compressor.

Owns `compression_settings` (a `compression:` section, ready), `compress_response` (for a
server's answer or one of Portico's own, a static file: the head as it goes out, and the body
transform to attach, if any) and `CompressionStage`, the response-head stage (see
`portico.pipeline`) a listener runs it in. Makes objects, touches no socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portico.compression.codecs import CodingBytes, Compressor
from portico.compression.policy import (
    CompressionSettings,
    TypeSet,
    decide,
    encoded_headers,
    merge_vary,
)
from portico.config.content import CompressionConfig
from portico.http.headers import Header

if TYPE_CHECKING:
    from portico.pipeline import ExchangeView, ResponseEdit

__all__ = ["CompressionStage", "compress_response", "compression_settings"]


def compression_settings(config: CompressionConfig) -> CompressionSettings:
    levels = config.levels
    return CompressionSettings(
        algorithms=tuple(config.algorithms),
        min_size=config.min_size,
        types=TypeSet.of(config.types),
        levels={"gzip": levels.gzip, "br": levels.br, "zstd": levels.zstd},
    )


def compress_response(
    settings: CompressionSettings,
    counter: Callable[[str], CodingBytes] | None,
    method: bytes,
    request_headers: Sequence[Header],
    status: int,
    headers: list[Header],
    length: int | None,
) -> tuple[list[Header], Compressor | None]:
    """The response head to send and the compressor of its body (None: sent as it is).
    `counter(coding)`: where the compressor counts its bytes (the worker's metrics)."""
    decision = decide(settings, method, request_headers, status, headers, length)
    coding = decision.coding
    if coding is None:
        return (merge_vary(headers) if decision.vary else headers), None
    compressor = Compressor(
        coding,
        settings.level(coding),
        streaming=decision.streaming,
        counter=counter(coding) if counter is not None else None,
    )
    return encoded_headers(headers, coding), compressor


class CompressionStage:
    """A listener's response-head stage compressing what its routes and itself ask for: a
    route's own `compression:` replaces the listener's for that route (None in `by_route`:
    the listener's, which may be None too). Runs on servers' answers and Portico's own (a
    static file) alike; what is already encoded (a precompressed file) is left alone."""

    __slots__ = ("_by_route", "_counter", "_listener")

    name = "compression"

    def __init__(
        self,
        listener: CompressionSettings | None,
        by_route: Sequence[CompressionSettings | None],
        counter: Callable[[str], CodingBytes] | None = None,
    ) -> None:
        self._listener = listener
        self._by_route = tuple(by_route)
        self._counter = counter

    def settings_for(self, route_index: int | None) -> CompressionSettings | None:
        if route_index is not None and 0 <= route_index < len(self._by_route):
            own = self._by_route[route_index]
            if own is not None:
                return own
        return self._listener

    def on_response_head(self, exchange: ExchangeView, edit: ResponseEdit) -> None:
        # the exchange's route (portico.proxy.l7.Exchange.route), which the pipeline's
        # ExchangeView does not name: read by attribute, None before routing or without routes
        route = getattr(exchange, "route", None)
        settings = self.settings_for(route.index if route is not None else None)
        if settings is None:
            return
        headers, compressor = compress_response(
            settings,
            self._counter,
            exchange.method,
            exchange.headers,
            edit.status,
            edit.headers,
            edit.length,
        )
        edit.headers = headers
        if compressor is not None:
            edit.transform(compressor)
            edit.length = None  # for the stages after this one
