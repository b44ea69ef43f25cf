"""parse_request: what a person types becomes the bytes the proxy's decisions take."""

from __future__ import annotations

import pytest

from portico.explain import parse_request


def test_an_absolute_url_gives_scheme_host_port_and_target() -> None:
    r = parse_request("GET https://shop.example.com:8443/cart?x=1", ["Cookie: beta=1"])
    assert (r.method, r.scheme, r.port, r.target) == (b"GET", "https", 8443, b"/cart?x=1")
    assert r.host == b"shop.example.com:8443"
    assert r.headers == ((b"Host", b"shop.example.com:8443"), (b"Cookie", b"beta=1"))


def test_a_host_header_wins_over_the_urls_host() -> None:
    r = parse_request("POST http://a.example/x", ["host: b.example"])
    assert r.host == b"b.example"
    assert r.headers == ((b"Host", b"b.example"),)


def test_a_bare_path_is_a_get_without_a_host_unless_one_is_given() -> None:
    assert parse_request("/x").host is None
    r = parse_request("/x?y", ["Host: a.example"])
    assert (r.method, r.target, r.host, r.scheme) == (b"GET", b"/x?y", b"a.example", "")


def test_user_info_is_never_part_of_the_host() -> None:
    assert parse_request("GET http://me:pw@a.example/").host == b"a.example"


@pytest.mark.parametrize(
    ("line", "headers", "client", "message"),
    [
        ("GET", [], "127.0.0.1", "is not a request"),
        ("GET ftp://a/", [], "127.0.0.1", "is not an http\\(s\\) URL"),
        ("G(T /", [], "127.0.0.1", "is not an HTTP method"),
        ("GET /", ["no colon"], "127.0.0.1", "is not a header line"),
        ("GET /", [], "somewhere", "is not an IP address"),
        ("GET http://a:99999/", [], "127.0.0.1", "out of range"),
    ],
)
def test_mistakes_are_named(line: str, headers: list[str], client: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(line, headers, client)
