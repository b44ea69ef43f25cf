"""The HTTP cache's config: a route's `cache:` and the top-level `cache:`, errors at their key."""

from __future__ import annotations

import pytest

from portico.config.load import ConfigError, parse_config

CONFIG = """\
cache: {cache_storage}
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: app
    routes:
      - match: {{path_prefix: /}}
        {route}
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
"""


def load(route: str, storage: str = "{}"):  # type: ignore[no-untyped-def]
    return parse_config(CONFIG.format(route=route, cache_storage=storage), "portico.yaml")


def problems(route: str, storage: str = "{}") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(route, storage)
    return [str(problem) for problem in info.value.problems]


def test_defaults_and_values() -> None:
    config = load(
        "pool: app\n        cache: {ignore_query: [utm_source], key_headers: [X-Tenant],"
        " max_entry_size: 1MiB, collapse_timeout: 2s}",
        "{memory_size: 16MiB, disk_path: /var/cache/portico, disk_size: 2GiB}",
    )
    rules = config.listeners[0].routes[0].cache
    assert rules is not None
    assert rules.ignore_query == ("utm_source",)
    assert rules.key_headers == ("X-Tenant",)
    assert rules.max_entry_size == 1024 * 1024
    assert rules.collapse_timeout == 2.0
    assert rules.heuristic_fraction == 0.1
    assert config.cache.memory_size == 16 * 1024 * 1024
    assert config.cache.disk_path == "/var/cache/portico"
    assert config.cache.disk_size == 2 * 1024**3


def test_errors_carry_the_key_path() -> None:
    [found] = problems("pool: app\n        cache: {heuristic_fraction: 2}")
    assert "listeners[0].routes[0].cache.heuristic_fraction" in found
    assert "from 0 to 1" in found
    [found] = problems("pool: app\n        cache: {key_headers: ['bad header']}")
    assert "routes[0].cache.key_headers[0]" in found
    [found] = problems("pool: app\n        cache: {colapse: true}")
    assert "routes[0].cache.colapse" in found
    [found] = problems("pool: app", "{memory_size: 0}")
    assert "cache.memory_size" in found


def test_cache_on_a_route_that_answers_itself_is_refused() -> None:
    [found] = problems('respond: {status: 200, body: "x"}\n        cache: {}')
    assert '"cache" does nothing on a route with "respond"' in found
