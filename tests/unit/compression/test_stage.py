"""The response-head step of compression (portico.compression.stage)."""

from __future__ import annotations

import zlib

from portico.compression.policy import CompressionSettings
from portico.compression.stage import compress_response, compression_settings
from portico.config.content import CompressionConfig
from portico.config.load import parse_config
from portico.config.schema import ListenerConfig
from portico.http.headers import Header
from portico.observe.stats import WorkerStats
from portico.worker import compression_by_route, compression_stage

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


def _listener(compression: str, routes: str) -> ListenerConfig:
    text = f"""
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: app
{compression}    routes:
{routes}pools:
  app:
    servers: [{{address: 127.0.0.1:9001}}]
"""
    return parse_config(text, "<test>").listeners[0]


ROUTES = """\
      - match: {path_prefix: /s/}
        static: {root: /tmp}
      - match: {path_prefix: /j/}
        pool: app
        compression: {algorithms: [gzip]}
"""


def test_the_compression_stage_runs_only_on_routes_that_compress() -> None:
    # a route that does not compress (a static site beside a compressing route) skips the
    # stage: its answers cost no ResponseEdit
    listener = _listener("", ROUTES)
    stages = compression_stage(listener, None)
    by_route = compression_by_route(listener, stages)
    assert by_route == ((), stages, ())  # /s/, /j/, the default route
    # the listener compresses: every route may
    listener = _listener("    compression: {algorithms: [br]}\n", ROUTES)
    stages = compression_stage(listener, None)
    assert compression_by_route(listener, stages) == (stages, stages, stages)
    # nothing compresses anywhere: no stage at all
    listener = _listener("", "      - match: {path_prefix: /s/}\n        static: {root: /tmp}\n")
    assert compression_by_route(listener, compression_stage(listener, None)) is None
