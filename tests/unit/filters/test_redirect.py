"""`redirect_https`: where the 308 sends a plain-HTTP client."""

from __future__ import annotations

from typing import Any, cast

import pytest

from portico.config.schema import DEFER_REFERENCES, Config, check_references
from portico.filters.redirect import RedirectToHttps, host_without_port
from portico.http.headers import split_request_headers
from portico.http.local import http1_bytes
from portico.proxy.l7 import Exchange


class _Exchange:
    def __init__(self, host: bytes, target: bytes) -> None:
        self.head = split_request_headers([(b"Host", host)], True, True)
        self.target = target


def location(port: int | None, host: bytes, target: bytes = b"/pay?x=1") -> bytes:
    exchange = cast(Exchange, _Exchange(host, target))
    answer = RedirectToHttps(port).on_request(exchange)
    assert answer is not None
    raw = http1_bytes(answer)  # as the HTTP/1.1 edge writes it
    assert raw.startswith(b"HTTP/1.1 308 ")
    return next(
        line.split(b": ", 1)[1]
        for line in raw.split(b"\r\n")
        if line.lower().startswith(b"location:")
    )


@pytest.mark.parametrize(
    ("port", "host", "expected"),
    [
        (8443, b"shop.example.com:8080", b"https://shop.example.com:8443/pay?x=1"),
        (None, b"shop.example.com:8080", b"https://shop.example.com/pay?x=1"),
        (443, b"shop.example.com", b"https://shop.example.com/pay?x=1"),
        (8443, b"[::1]:8080", b"https://[::1]:8443/pay?x=1"),
        (None, b"[::1]", b"https://[::1]/pay?x=1"),
    ],
)
def test_redirect_keeps_the_https_port(port: int | None, host: bytes, expected: bytes) -> None:
    assert location(port, host) == expected


def test_host_without_port() -> None:
    assert host_without_port(b"a.example:80") == b"a.example"
    assert host_without_port(b"[2001:db8::1]:80") == b"[2001:db8::1]"
    assert host_without_port(b"a.example") == b"a.example"


def config(redirect: object, *https_binds: str) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = [
        {"name": "plain", "bind": "127.0.0.1:8080", "default_pool": "app"}
    ]
    if redirect is not None:
        listeners[0]["redirect_https"] = redirect
    for i, bind in enumerate(https_binds):
        listeners.append(
            {
                "name": f"tls{i}",
                "bind": bind,
                "default_pool": "app",
                "protocol": "https",
            }
        )
    return {
        "listeners": listeners,
        "pools": {"app": {"servers": [{"address": "127.0.0.1:9001"}]}},
    }


def with_https(data: dict[str, Any]) -> Config:
    # https listeners without certificates: the model only, references checked separately
    return Config.model_validate(data, context={DEFER_REFERENCES: True})


def test_true_means_the_port_of_the_https_listener() -> None:
    cfg = with_https(config(True, "0.0.0.0:8443"))
    assert cfg.https_port(cfg.listeners[0]) == 8443
    # bound to port 0 in the file: the port the worker's socket has
    cfg = with_https(config(True, "127.0.0.1:0"))
    assert cfg.https_port(cfg.listeners[0], {"tls0": 40123}) == 40123


def test_port_443_and_no_https_listener_leave_the_port_out() -> None:
    cfg = with_https(config(True, "0.0.0.0:443"))
    assert cfg.https_port(cfg.listeners[0]) is None
    cfg = with_https(config(True))
    assert cfg.https_port(cfg.listeners[0]) is None


def test_an_explicit_port_wins() -> None:
    cfg = with_https(config(9443, "0.0.0.0:8443", "0.0.0.0:8444"))
    assert cfg.https_port(cfg.listeners[0]) == 9443
    assert not [i for i in check_references(cfg) if i.loc[-1] == "redirect_https"]


def test_true_with_https_listeners_on_several_ports_is_a_config_error() -> None:
    cfg = with_https(config(True, "0.0.0.0:8443", "0.0.0.0:8444"))
    issues = [i for i in check_references(cfg) if i.loc[-1] == "redirect_https"]
    assert len(issues) == 1
    assert issues[0].loc == ("listeners", 0, "redirect_https")
    assert "8443, 8444" in issues[0].message
    assert "redirect_https: 8444" in issues[0].message


@pytest.mark.parametrize("bad", [0, 70000, -1, "x"])
def test_a_bad_port_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="port from 1 to 65535"):
        Config.model_validate(config(bad))
