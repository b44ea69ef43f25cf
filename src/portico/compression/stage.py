"""The compression step of a response head: decide, edit the head, make the compressor.

Owns `compression_settings` (a `compression:` section, ready) and `compress_response`, what
the proxy's response-head stage calls for a server's answer or one of Portico's own (a static
file): the head as it goes out, and the body transform to attach, if any. *pure*: makes
objects, touches no socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

__all__ = ["compress_response", "compression_settings"]


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
