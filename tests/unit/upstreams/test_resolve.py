"""`portico check`'s look-up of server host names: warnings at the servers' key paths."""

from __future__ import annotations

import socket
import threading
import time

from portico.config.schema import DEFER_REFERENCES, Config
from portico.upstreams.resolve import unresolved_servers


def config(*addresses: str) -> Config:
    return Config.model_validate(  # servers listed twice: references are not checked here
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:8080", "default_pool": "app"}],
            "pools": {
                "app": {"servers": [{"address": a} for a in addresses]},
                "other": {"servers": [{"address": "db.invalid:5432"}]},
            },
        },
        context={DEFER_REFERENCES: True},
    )


def fake(known: set[str], asked: list[str] | None = None):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> object:
        if asked is not None:
            asked.append(host)
        if host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [("127.0.0.1", port)]

    return resolve


def test_each_server_that_does_not_resolve_is_a_warning_at_its_key_path() -> None:
    cfg = config("a.example:80", "10.0.0.1:80", "gone.example:80", "gone.example:80")
    issues = unresolved_servers(cfg, fake({"a.example"}))
    assert [issue.loc for issue in issues] == [
        ("pools", "app", "servers", 2, "address"),
        ("pools", "app", "servers", 3, "address"),
        ("pools", "other", "servers", 0, "address"),
    ]
    assert issues[0].message.startswith(
        'warning: "gone.example" does not resolve here (Name or service not known)'
    )


def test_ip_addresses_are_not_looked_up_and_a_name_only_once() -> None:
    asked: list[str] = []
    cfg = config("10.0.0.1:80", "[::1]:80", "db.invalid:5432")
    assert unresolved_servers(cfg, fake({"db.invalid"}, asked)) == []
    assert asked == ["db.invalid"]


def test_a_resolver_that_does_not_answer_is_bounded() -> None:
    release = threading.Event()

    def hang(host: str, port: int) -> object:
        release.wait(5)
        return []

    started = time.monotonic()
    try:
        issues = unresolved_servers(config("slow.example:80"), hang, timeout=0.2)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert [issue.loc[1] for issue in issues] == ["app", "other"]
    assert "no answer from the resolver within 0.2 s" in issues[0].message


def test_a_name_under_invalid_does_not_resolve() -> None:
    # RFC 6761: .invalid never resolves; the system resolver says so at once
    started = time.monotonic()
    issues = unresolved_servers(config("backend.invalid:80"), timeout=5.0)
    assert time.monotonic() - started < 5
    assert issues[0].loc == ("pools", "app", "servers", 0, "address")
    assert '"backend.invalid" does not resolve here' in issues[0].message
