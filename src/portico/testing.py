"""Helpers for users' own test suites: assert that a config routes requests where intended.

    from portico.testing import assert_routes

    def test_video_goes_to_the_video_pool():
        assert_routes("portico.yaml", "GET https://video.example.com/watch/1", pool="video")

Each check runs the same router, filters, pools and policies that Portico runs (through
`portico.explain`), with every server up and idle unless `state` says otherwise; no process, no
socket. A failed check raises AssertionError with the whole explanation, so the test output
shows which route condition failed or why a server was not a candidate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from portico.config.load import parse_config
from portico.config.schema import Config
from portico.explain import Explanation, ServerLive, explain, parse_request, render_text

__all__ = ["assert_routes", "load_config"]


def load_config(config: Config | str | os.PathLike[str]) -> Config:
    """A `Config` as given, or read and validated from a path, or from YAML text (a string
    holding a newline). Raises `portico.config.load.ConfigError` for an invalid file."""
    if isinstance(config, Config):
        return config
    if isinstance(config, str) and "\n" in config:
        return parse_config(config, "<config>")
    path = Path(config)
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def assert_routes(
    config: Config | str | os.PathLike[str],
    request: str,
    *,
    headers: Sequence[str] = (),
    client_ip: str = "127.0.0.1",
    listener: str | None = None,
    state: Mapping[tuple[str, str], ServerLive] | None = None,
    route: str | None = None,
    pool: str | None = None,
    server: str | None = None,
    answer: str | None = None,
) -> Explanation:
    """Assert where `request` (``"GET https://host/path"``) goes under `config`.

    Checks each of `route` (the route's name; ``"default"`` for the listener's default_pool),
    `pool` (the pool that serves it, after any fallback), `server` (the server the policy
    picks) and `answer` (a substring of what Portico answers itself: ``"308"``, ``"301
    redirect to https://..."``) that is given. Returns the explanation for further checks.
    """
    result = explain(
        load_config(config),
        parse_request(request, headers, client_ip),
        listener=listener,
        state=state,
    )
    wrong: list[str] = []
    for what, expected, got in (
        ("route", route, result.route),
        ("pool", pool, result.pool),
        ("server", server, result.server),
    ):
        if expected is not None and got != expected:
            wrong.append(f"expected {what} {expected!r}, got {got!r}")
    if answer is not None and (result.answer is None or answer not in result.answer):
        wrong.append(f"expected Portico to answer {answer!r}, got {result.answer!r}")
    if wrong:
        raise AssertionError("; ".join(wrong) + "\n\n" + render_text(result))
    return result
