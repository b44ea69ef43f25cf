"""HTTP/2 messages to and from the HTTP/1.1 shape (portico.http.h2), as pure functions: request
header blocks mapped (RFC 9113 §8.3.1, §8.2.3) or refused, Portico's own answers as HTTP/2
fields, response heads cleaned of connection-specific fields, and the flood guard's
arithmetic on an explicit clock."""

from __future__ import annotations

import pytest

from portico.http.errors import client_error, upstream_error
from portico.http.h2 import (
    FIELD_OVERHEAD,
    LOWERED_LIMIT,
    FloodGuard,
    H2Request,
    RequestLimits,
    map_request,
    response_fields,
)
from portico.http.headers import Header
from portico.http.local import LocalResponse, http1_bytes, local_response

LIMITS = RequestLimits(max_request_line=8192, max_header_size=32 * 1024, max_headers=100)


def fields(
    *regular: Header,
    method: bytes = b"GET",
    path: bytes | None = b"/index.html?q=1",
    authority: bytes | None = b"example.com",
    scheme: bytes | None = b"https",
) -> list[Header]:
    """A request header block as h2 hands it over: pseudo-headers first, names lower-case."""
    out: list[Header] = [(b":method", method)]
    if scheme is not None:
        out.append((b":scheme", scheme))
    if authority is not None:
        out.append((b":authority", authority))
    if path is not None:
        out.append((b":path", path))
    out.extend(regular)
    return out


def mapped(block: list[Header], limits: RequestLimits = LIMITS) -> H2Request:
    result = map_request(block, limits)
    assert isinstance(result, H2Request), f"refused with {result}"
    return result


# -- map_request: what a server is given -------------------------------------------------------


def test_authority_becomes_host_first_and_pseudo_headers_are_gone() -> None:
    request = mapped(fields((b"accept", b"*/*"), (b"user-agent", b"t")))
    assert request.method == b"GET"
    assert request.target == b"/index.html?q=1"
    assert request.headers == [
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"user-agent", b"t"),
    ]
    assert request.has_length is False


def test_a_host_field_naming_the_authority_is_kept_once() -> None:
    request = mapped(fields((b"accept", b"*/*"), (b"host", b"example.com")))
    assert request.headers == [(b"accept", b"*/*"), (b"host", b"example.com")]


def test_host_alone_names_the_origin() -> None:
    request = mapped(fields((b"host", b"example.com:8443"), authority=None))
    assert request.headers == [(b"host", b"example.com:8443")]


def test_host_and_authority_that_disagree_are_refused() -> None:
    assert map_request(fields((b"host", b"evil.example"), authority=b"example.com"), LIMITS) == 400


def test_two_host_fields_are_refused() -> None:
    block = fields((b"host", b"example.com"), (b"host", b"example.com"), authority=None)
    assert map_request(block, LIMITS) == 400


def test_nothing_naming_the_origin_is_refused() -> None:
    assert map_request(fields((b"accept", b"*/*"), authority=None), LIMITS) == 400


@pytest.mark.parametrize("authority", [b"user@example.com", b"user:pw@example.com:443", b""])
def test_authority_with_userinfo_or_empty_is_refused(authority: bytes) -> None:
    assert map_request(fields(authority=authority), LIMITS) == 400


def test_cookie_crumbs_are_joined_into_one_field_at_the_end() -> None:
    block = fields(
        (b"cookie", b"a=1"),
        (b"accept", b"*/*"),
        (b"cookie", b"b=2"),
        (b"cookie", b"c=3"),
    )
    request = mapped(block)
    assert request.headers == [
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"cookie", b"a=1; b=2; c=3"),
    ]


def test_a_single_cookie_passes_as_it_is() -> None:
    assert (b"cookie", b"sid=x") in mapped(fields((b"cookie", b"sid=x"))).headers


def test_content_length_is_noticed() -> None:
    request = mapped(fields((b"content-length", b"12"), method=b"POST"))
    assert request.has_length is True
    assert (b"content-length", b"12") in request.headers


def test_connect_is_refused_with_405() -> None:
    # an ordinary CONNECT as h2 lets it through: no :scheme, no :path (RFC 9113 §8.5)
    assert map_request(fields(method=b"CONNECT", path=None, scheme=None), LIMITS) == 405
    # and one carrying them (which h2 itself would refuse) is no better
    assert map_request(fields(method=b"CONNECT"), LIMITS) == 405


def test_extended_connect_protocol_is_refused() -> None:
    block = fields(method=b"CONNECT")
    block.insert(1, (b":protocol", b"websocket"))
    assert map_request(block, LIMITS) == 400


@pytest.mark.parametrize("missing", ["method", "path"])
def test_a_missing_method_or_path_is_refused(missing: str) -> None:
    block = [f for f in fields() if f[0] != f":{missing}".encode()]
    assert map_request(block, LIMITS) == 400


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        (b"OPTIONS", b"*", None),
        (b"OPTIONS", b"/x", None),
        (b"GET", b"*", 400),
        (b"GET", b"index.html", 400),
        (b"GET", b"http://example.com/", 400),
        (b"GET", b"", 400),
        (b"GET", b"/", None),
    ],
)
def test_path_must_be_origin_form_except_options_asterisk(
    method: bytes, path: bytes, expected: int | None
) -> None:
    result = map_request(fields(method=method, path=path), LIMITS)
    if expected is None:
        assert isinstance(result, H2Request)
        assert result.target == path
    else:
        assert result == expected


def test_a_long_path_is_414_from_just_past_the_request_line_limit() -> None:
    limits = RequestLimits(max_request_line=100, max_header_size=32 * 1024, max_headers=100)
    # the request line it would make: "GET " + path + " HTTP/1.1" + CRLF minus one
    fits = b"/" + b"a" * (100 - 10 - 3 - 1)  # len(method) + len(path) + 10 == 100
    assert isinstance(map_request(fields(path=fits), limits), H2Request)
    assert map_request(fields(path=fits + b"a"), limits) == 414


def _size(block: list[Header]) -> int:
    return sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in block)


def test_a_large_header_block_is_431_counting_32_octets_per_field() -> None:
    block = fields((b"x-pad", b"p" * 500))
    exact = _size(block)
    assert isinstance(map_request(block, RequestLimits(8192, exact, 100)), H2Request)
    assert map_request(block, RequestLimits(8192, exact - 1, 100)) == 431


def test_too_many_fields_is_431_and_cookie_crumbs_count() -> None:
    limits = RequestLimits(8192, 32 * 1024, max_headers=5)
    five = fields(*[(b"x-h%d" % i, b"v") for i in range(5)])
    assert isinstance(map_request(five, limits), H2Request)  # pseudo-headers do not count
    six = fields(*[(b"x-h%d" % i, b"v") for i in range(6)])
    assert map_request(six, limits) == 431
    crumbs = fields(*[(b"x-h%d" % i, b"v") for i in range(3)], (b"cookie", b"a"), (b"cookie", b"b"))
    assert isinstance(map_request(crumbs, limits), H2Request)
    crumbs.append((b"cookie", b"c"))
    assert map_request(crumbs, limits) == 431


# -- Portico's own answers (LocalResponse values) as HTTP/2 fields ----------------------------


def local_fields(answer: LocalResponse) -> tuple[int, list[Header], bytes]:
    """An answer as the HTTP/2 edge sends it: status, fields without :status, body."""
    fields = response_fields(answer.status, answer.headers)
    assert fields[0] == (b":status", b"%d" % answer.status)
    return answer.status, fields[1:], answer.body


@pytest.mark.parametrize("status", [400, 405, 408, 413, 414, 431])
def test_client_errors_as_fields_without_connection_close(status: int) -> None:
    answer = client_error(status)
    got_status, got_fields, body = local_fields(answer)
    assert got_status == status
    names = [name for name, _ in got_fields]
    assert b"connection" not in names
    assert all(name == name.lower() for name in names)
    assert (b"content-type", b"text/plain; charset=utf-8") in got_fields
    assert (b"content-length", b"%d" % len(body)) in got_fields
    assert body == http1_bytes(answer).partition(b"\r\n\r\n")[2]
    assert body.startswith(b"%d " % status)
    if status == 405:
        assert any(name == b"allow" and b"GET" in value for name, value in got_fields)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_upstream_errors_as_fields_keep_retry_after(status: int) -> None:
    got_status, got_fields, body = local_fields(upstream_error(status))
    assert got_status == status
    assert b"connection" not in [name for name, _ in got_fields]
    assert ((b"retry-after", b"1") in got_fields) is (status == 503)
    assert body == b"%d %s\n" % (status, body.split(b" ", 1)[1].rstrip(b"\n"))


def test_a_redirect_as_fields_without_a_body() -> None:
    answer = local_response(
        308, [(b"Location", b"https://example.com/x"), (b"Content-Length", b"0")]
    )
    assert local_fields(answer) == (
        308,
        [(b"location", b"https://example.com/x"), (b"content-length", b"0")],
        b"",
    )


# -- response_fields ----------------------------------------------------------------------------


def test_response_fields_lower_case_status_first_and_drop_connection_specific() -> None:
    head: list[Header] = [
        (b"Content-Type", b"text/html"),
        (b"Connection", b"close"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"trailers"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Backend", b"A"),
    ]
    assert response_fields(204, head) == [
        (b":status", b"204"),
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-backend", b"A"),
    ]


def test_response_fields_keep_values_as_they_are() -> None:
    assert response_fields(200, [(b"ETag", b'"AbC"')]) == [
        (b":status", b"200"),
        (b"etag", b'"AbC"'),
    ]


@pytest.mark.parametrize("status", [0, 99, 100, 200, 599, 999, 1000, 12345])
def test_response_fields_write_any_status_in_decimal(status: int) -> None:
    assert response_fields(status, [])[0] == (b":status", str(status).encode())


def test_response_fields_lower_names_a_server_invents_past_the_remembered_ones() -> None:
    """Names are lowered alike whether remembered or not (the memory of them is bounded)."""
    for round_ in range(2):
        for i in range(LOWERED_LIMIT + 50):
            fields = response_fields(200, [(b"X-Made-Up-%d" % i, b"v"), (b"Connection", b"x")])
            assert fields[1:] == [(b"x-made-up-%d" % i, b"v")], (round_, i)


# -- FloodGuard: control frames ----------------------------------------------------------------


def test_a_burst_is_allowed_and_the_next_control_frame_is_refused() -> None:
    guard = FloodGuard(0.0, burst=1000, rate=100.0)
    assert all(guard.control_frame(0.0) for _ in range(1000))
    assert guard.control_frame(0.0) is False


def test_the_bucket_refills_at_its_rate() -> None:
    guard = FloodGuard(10.0, burst=10, rate=4.0)
    assert all(guard.control_frame(10.0) for _ in range(10))
    assert guard.control_frame(10.0) is False  # 1 owed
    # half a second later: 2 tokens came back, one of them pays what was owed
    assert guard.control_frame(10.5) is True
    assert guard.control_frame(10.5) is False


def test_a_refused_frame_still_costs_so_a_flood_never_gets_through() -> None:
    guard = FloodGuard(0.0, burst=5, rate=1.0)
    for _ in range(5):
        guard.control_frame(0.0)
    for _ in range(20):
        assert guard.control_frame(0.0) is False
    # 21 owed: one second brings one token back, not enough
    assert guard.control_frame(1.0) is False


def test_an_idle_bucket_holds_no_more_than_the_burst() -> None:
    guard = FloodGuard(0.0, burst=3, rate=100.0)
    assert all(guard.control_frame(3600.0) for _ in range(3))
    assert guard.control_frame(3600.0) is False


def test_a_browser_pace_never_trips_the_guard() -> None:
    guard = FloodGuard(0.0)  # the defaults: 1000 at once, 100 per second
    now = 0.0
    for _ in range(10_000):  # 50 per second for 200 seconds
        now += 0.02
        assert guard.control_frame(now)


# -- FloodGuard: rapid reset ---------------------------------------------------------------


def test_rapid_reset_trips_at_the_hundredth_early_reset_when_half_the_streams() -> None:
    guard = FloodGuard(0.0, reset_min=100)
    for _ in range(200):
        guard.stream_opened()
    for _ in range(99):
        assert guard.early_reset() is True
    assert guard.early_reset() is False  # 100 resets, exactly half of 200 streams
    assert guard.early_resets == 100
    assert guard.opened == 200


def test_rapid_reset_needs_at_least_half_the_streams() -> None:
    guard = FloodGuard(0.0, reset_min=100)
    for _ in range(201):
        guard.stream_opened()
    for _ in range(100):
        assert guard.early_reset() is True  # 100 of 201: under half
    assert guard.early_reset() is False  # 101 of 201: half or more


def test_a_busy_connection_that_cancels_a_few_streams_is_fine() -> None:
    guard = FloodGuard(0.0, reset_min=100)
    for _ in range(1000):
        guard.stream_opened()
    for _ in range(499):
        assert guard.early_reset() is True


def test_rapid_reset_needs_the_minimum_count() -> None:
    guard = FloodGuard(0.0, reset_min=100)
    for _ in range(99):
        guard.stream_opened()
        assert guard.early_reset() is True  # every stream reset, but only 99
    guard.stream_opened()
    assert guard.early_reset() is False


# -- FloodGuard: window updates ------------------------------------------------------------


def test_window_updates_beyond_the_slack_without_data_are_refused() -> None:
    guard = FloodGuard(0.0)
    slack = FloodGuard.WINDOW_UPDATE_SLACK
    assert slack == 1000
    assert all(guard.window_update() for _ in range(slack))
    assert guard.window_update() is False


def test_each_data_frame_sent_earns_ten_window_updates() -> None:
    guard = FloodGuard(0.0)
    for _ in range(FloodGuard.WINDOW_UPDATE_SLACK):
        guard.window_update()
    guard.data_frame_sent(2)
    assert all(guard.window_update() for _ in range(20))
    assert guard.window_update() is False
    guard.data_frame_sent()
    # 1021 updates so far against 1000 + 30 allowed
    assert all(guard.window_update() for _ in range(9))
    assert guard.window_update() is False
