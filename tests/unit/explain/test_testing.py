"""portico.testing.assert_routes: what users call from their own test suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from portico.explain import ServerLive
from portico.testing import assert_routes

CONFIG = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: app
    routes:
      - {name: video, match: {path: /video/}, pool: video}
      - {name: old, match: {path: /old/}, redirect: {to: "/new/"}}
pools:
  app:
    servers: [{address: 127.0.0.1:9001, name: a1}, {address: 127.0.0.1:9002, name: a2}]
  video:
    servers: [{address: 127.0.0.1:9101, name: v1}]
"""


def test_a_matching_expectation_passes_and_returns_the_explanation(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    result = assert_routes(path, "GET http://a.example/video/1", pool="video", route="video")
    assert result.server == "v1"
    assert_routes(str(path), "GET http://a.example/", pool="app", route="default", server="a1")
    assert_routes(CONFIG, "GET http://a.example/old/x", answer="302 redirect to /new/")


def test_a_wrong_expectation_fails_with_the_whole_explanation() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_routes(CONFIG, "GET http://a.example/videos", pool="video")
    message = str(caught.value)
    assert message.startswith("expected pool 'video', got 'app'")
    assert 'path starts with "/video/": no, path is "/videos"' in message


def test_server_state_can_be_assumed() -> None:
    down = {("app", "a1"): ServerLive(up=False)}
    assert_routes(CONFIG, "GET http://a.example/", state=down, server="a2")
