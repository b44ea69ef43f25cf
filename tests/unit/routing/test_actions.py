"""Route actions: path rewrite, header edits, redirects and fixed responses (as the HTTP/1.1
edge writes them)."""

from typing import Any

import pytest

from portico.http.headers import Header
from portico.http.local import http1_bytes
from portico.routing import (
    RouteActions,
    apply_request_headers,
    apply_response_headers,
    fixed_response,
    redirect_response,
    rewrite_path,
)
from tests.unit.routing.routes import router


def redirect(
    act: RouteActions, host: bytes | None, path: bytes, scheme: bytes, *, close: bool = False
) -> bytes:
    """The route's redirect as the HTTP/1.1 edge writes it."""
    return http1_bytes(redirect_response(act, host, path, scheme), close)


def fixed(act: RouteActions, *, close: bool = False, head: bool = False) -> bytes:
    """The route's fixed response as the HTTP/1.1 edge writes it (`head`: to a HEAD request)."""
    return http1_bytes(fixed_response(act), close, head)


def actions(**route: Any) -> RouteActions:
    """The compiled actions of one route (a pool route unless it redirects or responds)."""
    if "redirect" not in route and "respond" not in route:
        route.setdefault("pool", "p")
    found = router(route).routes[0].actions
    assert found is not None
    return found


def test_a_route_that_only_chooses_a_pool_has_no_actions() -> None:
    r = router({"match": {"path": "/a/"}, "pool": "a", "timeouts": {}})
    assert r.routes[0].actions is None
    assert r.routes[0].timeouts is None


def test_route_timeouts_are_kept_when_given() -> None:
    timeouts = router({"pool": "a", "timeouts": {"read": "5s"}}).routes[0].timeouts
    assert timeouts is not None
    assert (timeouts.connect, timeouts.read, timeouts.write) == (None, 5.0, None)


# ---------------------------------------------------------------------------------------------
# Path


@pytest.mark.parametrize(
    ("strip", "replace", "path", "out"),
    [
        ("/video", None, b"/video/clip.mp4?t=3", b"/clip.mp4?t=3"),
        ("/video", None, b"/video", b"/"),
        ("/video", None, b"/video?t=3", b"/?t=3"),
        ("/video/", None, b"/video/clip", b"/clip"),
        ("/video/", None, b"/video/", b"/"),
        ("/video", "/v2", b"/video/clip?a", b"/v2/clip?a"),
        ("/video", "/v2", b"/video", b"/v2"),
        ("/video/", "/", b"/video/a/b", b"/a/b"),
        ("/video", None, b"/other/x", b"/other/x"),  # not under the prefix: unchanged
    ],
)
def test_rewrite_path(strip: str, replace: str | None, path: bytes, out: bytes) -> None:
    act = actions(strip_prefix=strip, replace_prefix=replace)
    assert rewrite_path(path, act) == out


def test_rewrite_path_without_strip_is_identity() -> None:
    act = actions(request_headers={"add": {"X-A": "1"}})
    path = b"/a?b"
    assert rewrite_path(path, act) is path


# ---------------------------------------------------------------------------------------------
# Headers


def test_request_header_edits_remove_set_add() -> None:
    act = actions(
        request_headers={
            "set": {"X-Env": "prod", "Host": "internal.example"},
            "add": {"Via-Route": "video", "X-Multi": 2},
            "remove": ["x-secret"],
        }
    )
    headers: list[Header] = [
        (b"Host", b"example.com"),
        (b"X-Secret", b"s1"),
        (b"x-env", b"dev"),
        (b"Accept", b"*/*"),
        (b"X-SECRET", b"s2"),
        (b"X-Multi", b"1"),
        (b"X-ENV", b"qa"),
    ]
    original = list(headers)
    out = apply_request_headers(headers, act)
    assert out == [
        (b"Accept", b"*/*"),
        (b"X-Multi", b"1"),
        (b"X-Env", b"prod"),
        (b"Host", b"internal.example"),
        (b"Via-Route", b"video"),
        (b"X-Multi", b"2"),
    ]
    assert headers == original  # not mutated


def test_response_header_edits() -> None:
    act = actions(response_headers={"remove": ["Server"], "set": {"X-Frame-Options": "DENY"}})
    headers: list[Header] = [(b"server", b"nginx"), (b"Content-Type", b"text/html")]
    assert apply_response_headers(headers, act) == [
        (b"Content-Type", b"text/html"),
        (b"X-Frame-Options", b"DENY"),
    ]
    assert apply_request_headers(headers, act) is headers  # no request edits


def test_header_values_are_utf8_bytes() -> None:
    act = actions(request_headers={"set": {"X-Name": "café"}})
    assert apply_request_headers([], act) == [(b"X-Name", "café".encode())]


# ---------------------------------------------------------------------------------------------
# Redirects


def test_redirect_to_https_keeps_path_and_query() -> None:
    act = actions(redirect={"status": 301, "to": "https://{host}{path}{query}"})
    response = redirect(act, b"Example.com:8080", b"/a/b?x=1&y=2", b"http")
    assert response == (
        b"HTTP/1.1 301 Moved Permanently\r\n"
        b"Location: https://example.com/a/b?x=1&y=2\r\n"
        b"Content-Length: 0\r\n"
        b"Cache-Control: max-age=3600\r\n"
        b"\r\n"
    )


def test_redirect_without_query_field_drops_the_query() -> None:
    act = actions(redirect={"to": "https://{host}{path}"})
    response = redirect(act, b"a.com", b"/x?y", b"http")
    assert response.startswith(b"HTTP/1.1 302 Found\r\nLocation: https://a.com/x\r\n")
    assert b"Cache-Control" not in response  # only permanent redirects get one


def test_redirect_query_field_is_empty_without_a_query() -> None:
    act = actions(redirect={"status": 308, "to": "{scheme}://new.example.com{path}{query}"})
    assert b"Location: https://new.example.com/x\r\n" in redirect(act, None, b"/x", b"https")


def test_redirect_path_is_rewritten_first() -> None:
    act = actions(
        match={"path": "/old/"},
        strip_prefix="/old",
        replace_prefix="/new",
        redirect={"status": 301, "to": "{path}{query}"},
    )
    assert b"Location: /new/page?a=1\r\n" in redirect(act, b"h", b"/old/page?a=1", b"http")


@pytest.mark.parametrize(
    ("host", "path", "scheme"),
    [
        (b"a.com", b"/x\r\nSet-Cookie: evil=1", b"http"),
        (b"a.com\r\nSet-Cookie: evil=1", b"/x", b"http"),
        (b"a.com", b"/x?q=\r\nSet-Cookie:%20evil=1", b"http"),
        (b"a.com", b"/x", b"http\r\nSet-Cookie: evil=1"),
        (b"a.com", b"/x\n\nbody", b"http"),
    ],
)
def test_redirect_location_never_carries_cr_or_lf(host: bytes, path: bytes, scheme: bytes) -> None:
    act = actions(redirect={"status": 307, "to": "{scheme}://{host}{path}{query}"})
    response = redirect(act, host, path, scheme)
    head, _, body = response.partition(b"\r\n\r\n")
    assert body == b""
    lines = head.split(b"\r\n")
    assert [line.split(b":")[0] for line in lines[1:]] == [b"Location", b"Content-Length"]
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert b"\r" not in head.replace(b"\r\n", b"")
    assert b"%0A" in lines[1]


def test_redirect_percent_encodes_spaces_and_non_ascii_but_keeps_escapes() -> None:
    act = actions(redirect={"to": "https://a.com{path}"})
    response = redirect(act, None, b"/caf\xc3\xa9 x/%41", b"http")
    assert b"Location: https://a.com/caf%C3%A9%20x/%41\r\n" in response


def test_redirect_with_close_and_response_header_edits() -> None:
    act = actions(
        redirect={"status": 301, "to": "https://a.com/"},
        response_headers={"set": {"Cache-Control": "no-store"}, "add": {"X-Why": "moved"}},
    )
    assert act.response_headers is None  # baked into the redirect
    response = redirect(act, None, b"/", b"http", close=True)
    assert response == (
        b"HTTP/1.1 301 Moved Permanently\r\n"
        b"Location: https://a.com/\r\n"
        b"Content-Length: 0\r\n"
        b"Cache-Control: no-store\r\n"
        b"X-Why: moved\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )


def test_redirect_literal_braces() -> None:
    act = actions(redirect={"to": "/x?a={{b}}"})
    assert b"Location: /x?a=%7Bb%7D\r\n" in redirect(act, None, b"/", b"http")


def test_redirect_and_respond_refuse_the_wrong_route() -> None:
    act = actions(strip_prefix="/a")
    with pytest.raises(ValueError, match="does not redirect"):
        redirect_response(act, None, b"/", b"http")
    with pytest.raises(ValueError, match="does not respond"):
        fixed_response(act)


# ---------------------------------------------------------------------------------------------
# Fixed responses


def test_fixed_response_is_prebuilt() -> None:
    act = actions(respond={"status": 503, "body": "down for maintenance\n"})
    body = b"down for maintenance\n"
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 21\r\n"
    )
    assert fixed(act) == head + b"\r\n" + body
    assert fixed(act, close=True) == head + b"Connection: close\r\n\r\n" + body
    assert fixed(act, head=True) == head + b"\r\n"  # HEAD: same head, no body
    assert fixed_response(act) is fixed_response(act)  # no per-request building
    assert fixed(act) is fixed(act)  # ... nor serialising


def test_fixed_response_content_type_and_extra_headers() -> None:
    act = actions(
        respond={"status": 200, "body": '{"ok": true}', "content_type": "application/json"},
        response_headers={"add": {"Retry-After": 60}},
    )
    assert fixed(act) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b'Retry-After: 60\r\n\r\n{"ok": true}'
    )


def test_fixed_response_body_length_counts_utf8_bytes() -> None:
    act = actions(respond={"status": 200, "body": "é"})
    assert b"Content-Length: 2\r\n" in fixed(act)


def test_fixed_204_has_no_body_headers() -> None:
    act = actions(respond={"status": 204})
    assert fixed(act) == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_fixed_response_with_an_unregistered_status() -> None:
    act = actions(respond={"status": 299})
    assert fixed(act).startswith(b"HTTP/1.1 299 \r\n")
