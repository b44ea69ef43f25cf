"""The `compression:` and `static:` config (portico.config.content): defaults, shorthands,
and every refusal with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from portico.config import ConfigError, parse_config

TEMPLATE = """
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
{listener}
    routes:
      - {route}
pools:
  app:
    servers: [{{address: 127.0.0.1:9001}}]
"""


def load(listener: str = "", route: str = "pool: app") -> object:
    return parse_config(TEMPLATE.format(listener=listener, route=route), "t.yaml")


def problems(listener: str = "", route: str = "pool: app") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(listener, route)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def test_compression_is_off_unless_set_and_true_means_the_defaults() -> None:
    config = parse_config(TEMPLATE.format(listener="", route="pool: app"), "t.yaml")
    assert config.listeners[0].compression is None
    config = parse_config(TEMPLATE.format(listener="    compression: true", route="pool: app"), "t")
    compression = config.listeners[0].compression
    assert compression is not None
    assert compression.algorithms == ("zstd", "br", "gzip")
    assert compression.min_size == 1024
    assert (compression.levels.gzip, compression.levels.br, compression.levels.zstd) == (5, 4, 3)
    assert "text/*" in compression.types


def test_compression_settings() -> None:
    listener = (
        "    compression: {algorithms: [gzip, zstd], min_size: 2KiB, types: [Text/HTML],"
        " levels: {gzip: 9}}"
    )
    config = parse_config(TEMPLATE.format(listener=listener, route="pool: app"), "t")
    compression = config.listeners[0].compression
    assert compression is not None
    assert compression.algorithms == ("gzip", "zstd")
    assert compression.min_size == 2048
    assert compression.types == ("text/html",)
    assert compression.levels.gzip == 9


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{algorithms: [lzma]}", "listeners[0].compression.algorithms[0]: "),
        ("{algorithms: [gzip, gzip]}", '"gzip" is listed twice'),
        ("{algorithms: []}", "listeners[0].compression.algorithms: "),
        ("{levels: {gzip: 0}}", "a gzip level is from 1 to 9, not 0"),
        ("{levels: {br: 11}}", "a br level is from 0 to 6, not 11"),
        ("{levels: {zstd: 19}}", "a zstd level is from 1 to 12, not 19"),
        ("{levels: {lz4: 1}}", "listeners[0].compression.levels.lz4"),
        ("{types: [video/*]}", "images, video and audio are never compressed"),
        ("{types: [image/png]}", "images, video and audio are never compressed"),
        ("{types: ['text/html; charset=utf-8']}", "is not a media type"),
        ("{min_size: lots}", "listeners[0].compression.min_size"),
    ],
)
def test_compression_refusals(section: str, message: str) -> None:
    found = problems(listener=f"    compression: {section}")
    assert any(message in line for line in found), found


def test_compression_on_a_tcp_listener_is_refused() -> None:
    text = """
listeners:
  - name: db
    bind: 127.0.0.1:0
    protocol: tcp
    default_pool: app
    compression: true
pools:
  app:
    servers: [{address: 127.0.0.1:9001}]
"""
    with pytest.raises(ConfigError, match="compression needs protocol: http or https"):
        parse_config(text, "t.yaml")


def test_a_static_route(tmp_path: Path) -> None:
    route = (
        f"static: {{root: {tmp_path}, index: [index.htm, index.html], autoindex: true,"
        " cache_control: {max_age: 1y, immutable: true}}\n        compression: {algorithms: [br]}"
    )
    config = parse_config(TEMPLATE.format(listener="", route=route), "t")
    static = config.listeners[0].routes[0].static
    assert static is not None
    assert static.root == str(tmp_path.resolve())
    assert static.index == ("index.htm", "index.html")
    assert static.autoindex
    assert static.follow_symlinks is False
    assert static.precompressed is True
    assert static.cache_control is not None
    assert static.cache_control.header() == "public, max-age=31536000, immutable"
    compression = config.listeners[0].routes[0].compression
    assert compression is not None
    assert compression.algorithms == ("br",)


def test_static_with_its_fallback_pool(tmp_path: Path) -> None:
    route = f"static: {{root: {tmp_path}, try_files: fallback}}\n        pool: app"
    config = parse_config(TEMPLATE.format(listener="", route=route), "t")
    assert config.listeners[0].routes[0].pool == "app"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("static: {root: www}", 'routes[0].static.root: "www" is not an absolute path'),
        ("static: {root: /nonexistent/dir}", "is not a directory"),
        ("static: {root: ROOT, index: [a/b]}", '"a/b" is not a file name'),
        ("static: {root: ROOT, index: [.hidden]}", "is a hidden file"),
        ("static: {root: ROOT, try_files: fallback}", 'needs "pool"'),
        ("static: {root: ROOT}\n        pool: app", '"pool" beside "static" is used only'),
        ("static: {root: ROOT}\n        respond: {status: 200}", "exclude each other"),
        ("static: {root: ROOT, cache_control: {max_age: forever}}", "is not a max_age"),
        ("static: {root: ROOT}\n        timeouts: {read: 1s}", '"timeouts" does nothing'),
        ("static: {root: ROOT}\n        response_headers: {set: {X-A: b}}", "does nothing"),
        ("static: {root: ROOT, autoindex: maybe}", "routes[0].static.autoindex"),
    ],
)
def test_static_refusals(tmp_path: Path, route: str, message: str) -> None:
    found = problems(route=route.replace("ROOT", str(tmp_path)))
    assert any(message in line for line in found), found
