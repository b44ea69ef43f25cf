"""Access logs end to end: one line per request, with timings, backend, route and request id."""

from __future__ import annotations

import json
import signal

from conftest import simple_config
from fakes import request


def test_json_access_log_has_one_line_per_request_with_its_fields(
    backends, portico, tmp_path
) -> None:
    b = backends("b1")
    log = tmp_path / "access.log"
    proxy = portico(
        simple_config([b], extra_listener=f"    access_log: {{path: {log}, format: json}}\n")
    )
    first = request(
        proxy.port, target="/a?x=1", headers={"User-Agent": "curl/8", "X-Request-Id": "abc-123"}
    )
    second = request(proxy.port, target="/b", headers={"X-Request-Id": "bad id with spaces"})
    assert first.status == second.status == 200
    assert proxy.stop(signal.SIGTERM) == 0  # the log is flushed on the way out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["target"] for entry in lines] == ["/a?x=1", "/b"]
    one, two = lines
    assert one["status"] == 200
    assert one["backend"] == "b1"
    assert one["pool"] == "app"
    assert one["user_agent"] == "curl/8"
    assert one["request_id"] == "abc-123"  # a sane id is passed through
    assert one["duration"] >= 0
    assert one["upstream_connect"] is not None  # the first request opened the connection
    assert two["upstream_connect"] is None  # the second reused it
    assert two["request_id"] != "bad id with spaces"
    assert len(two["request_id"]) == 32
    # the server saw the same ids
    assert b.seen[0].header("X-Request-Id") == "abc-123"
    assert b.seen[1].all("X-Request-Id") == [two["request_id"]]


def test_combined_access_log_reads_like_nginx(backends, portico, tmp_path) -> None:
    log = tmp_path / "access.log"
    proxy = portico(
        simple_config([backends("b1")], extra_listener=f"    access_log: {{path: {log}}}\n")
    )
    request(proxy.port, target="/x", headers={"Referer": "http://r/", "User-Agent": 'evil"agent'})
    proxy.stop(signal.SIGTERM)
    (line,) = log.read_text().splitlines()
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /x HTTP/1.1" 200 2 "http://r/" "evil\\x22agent"' in line
    assert "backend=b1" in line
