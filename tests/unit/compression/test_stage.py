"""The response-head step of compression (portico.compression.stage)."""

from __future__ import annotations

import zlib

from portico.compression.policy import CompressionSettings
from portico.compression.stage import compress_response, compression_settings
from portico.config.content import CompressionConfig
from portico.http.headers import Header
from portico.observe.stats import WorkerStats

HTML: list[Header] = [(b"Content-Type", b"text/html"), (b"Content-Length", b"4000")]


def test_config_to_settings() -> None:
    config = CompressionConfig(algorithms=("gzip",), min_size=10, levels={"gzip": 9})
    settings = compression_settings(config)
    assert settings.algorithms == ("gzip",)
    assert settings.min_size == 10
    assert settings.level("gzip") == 9
    assert "text/html" in settings.types


def test_a_compressed_response_counts_its_bytes() -> None:
    stats = WorkerStats()
    head, compressor = compress_response(
        CompressionSettings(algorithms=("gzip",)),
        stats.coding_bytes,
        b"GET",
        [(b"Accept-Encoding", b"gzip")],
        200,
        HTML,
        4000,
    )
    assert head == [
        (b"Content-Type", b"text/html"),
        (b"Content-Encoding", b"gzip"),
        (b"Vary", b"Accept-Encoding"),
    ]
    assert compressor is not None
    body = b"<p>hello</p>" * 400
    out = compressor.feed(body) + compressor.end()
    assert zlib.decompress(out, 31) == body
    counter = stats.coding_bytes("gzip")
    assert (counter.before, counter.after) == (len(body), len(out))
    rows = stats.snapshot()["counters"]
    assert rows["compression_in_bytes"] == [["gzip", len(body)]]


def test_identity_clients_get_vary_only() -> None:
    head, compressor = compress_response(CompressionSettings(), None, b"GET", [], 200, HTML, 4000)
    assert compressor is None
    assert head == [*HTML, (b"Vary", b"Accept-Encoding")]
    head, compressor = compress_response(CompressionSettings(), None, b"GET", [], 200, HTML, 10)
    assert compressor is None
    assert head == HTML
