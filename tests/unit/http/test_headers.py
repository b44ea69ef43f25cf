"""Header rules of a proxy as pure functions: hop-by-hop removal (RFC 9110 §7.6.1), message
framing (RFC 9112 §6.3), forwarding headers (RFC 7239) and head serialisation."""

from __future__ import annotations

import random

import httptools
import pytest

from portico.http.headers import (
    FORWARDING_NAMES,
    HOP_BY_HOP,
    BodyKind,
    Header,
    RequestHead,
    RequestLineMemo,
    ResponseHead,
    format_forwarded_for,
    forwarding_headers,
    response_body_kind,
    serialize_fields,
    serialize_head,
    split_request_headers,
    split_response_headers,
)

HOP_NAMES = [b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade"]


def spellings(name: bytes) -> list[bytes]:
    return [name, name.lower(), name.upper()]


def request(headers: list[Header], *, replace: bool = True) -> list[Header]:
    """The request headers a proxy forwards (before its own forwarding and framing headers)."""
    return split_request_headers(
        headers, replace_x_forwarded=replace, replace_forwarded=replace
    ).headers


def response(
    headers: list[Header],
    *,
    method: bytes = b"GET",
    status: int = 200,
    http11: bool = True,
    hide: frozenset[bytes] = frozenset(),
) -> ResponseHead:
    return split_response_headers(headers, method=method, status=status, http11=http11, hide=hide)


def test_hop_by_hop_set_is_lower_case_and_covers_rfc_9110() -> None:
    assert all(name == name.lower() for name in HOP_BY_HOP)
    assert {name.lower() for name in HOP_NAMES} <= HOP_BY_HOP


# split_request_headers: what goes to the server


@pytest.mark.parametrize("name", HOP_NAMES)
def test_request_hop_by_hop_header_is_not_forwarded_whatever_its_case(name: bytes) -> None:
    for spelled in spellings(name):
        headers = [(b"Host", b"a"), (spelled, b"x"), (b"Accept", b"*/*")]
        assert request(headers) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_request_names_listed_in_connection_are_not_forwarded() -> None:
    headers: list[Header] = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"secret"),
        (b"x-private", b"again"),
        (b"connection", b" x-other "),
        (b"X-OTHER", b"1"),
        (b"X-Public", b"ok"),
    ]
    assert request(headers) == [(b"Host", b"a"), (b"X-Public", b"ok")]


def test_request_connection_options_are_recorded_lower_case() -> None:
    head = split_request_headers(
        [(b"Connection", b"Close, X-A"), (b"Connection", b"Keep-Alive")],
        replace_x_forwarded=True,
        replace_forwarded=True,
    )
    assert {b"close", b"x-a", b"keep-alive"} <= head.connection


def test_request_end_to_end_headers_keep_order_duplicates_and_spelling() -> None:
    headers: list[Header] = [
        (b"Host", b"a.example"),
        (b"x-dup", b"one"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Accept", b"text/html"),
        (b"X-Dup", b"two"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
    ]
    assert request(headers) == [
        (b"Host", b"a.example"),
        (b"x-dup", b"one"),
        (b"Accept", b"text/html"),
        (b"X-Dup", b"two"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
    ]


def test_request_split_leaves_its_input_alone() -> None:
    headers = [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"Accept", b"*/*")]
    request(headers)
    assert headers == [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"Accept", b"*/*")]


def test_request_without_body_headers_has_no_body() -> None:
    head = split_request_headers(
        [(b"Host", b"a")], replace_x_forwarded=True, replace_forwarded=True
    )
    assert head.kind is BodyKind.NONE


def test_request_content_length_is_recorded_and_left_for_the_proxy_to_write() -> None:
    head = split_request_headers(
        [(b"Host", b"a"), (b"content-length", b"1234")],
        replace_x_forwarded=True,
        replace_forwarded=True,
    )
    assert (head.kind, head.length) == (BodyKind.LENGTH, 1234)
    assert head.headers == [(b"Host", b"a")]


def test_request_chunked_coding_is_recorded_and_left_for_the_proxy_to_write() -> None:
    head = split_request_headers(
        [(b"Transfer-Encoding", b"chunked"), (b"Host", b"a")],
        replace_x_forwarded=True,
        replace_forwarded=True,
    )
    assert (head.kind, head.te) == (BodyKind.CHUNKED, b"chunked")
    assert head.headers == [(b"Host", b"a")]


def test_request_host_is_recorded_counted_and_forwarded_in_place() -> None:
    head = split_request_headers(
        [(b"Accept", b"*/*"), (b"host", b"a.example:8080")],
        replace_x_forwarded=True,
        replace_forwarded=True,
    )
    assert (head.host, head.hosts) == (b"a.example:8080", 1)
    assert head.headers == [(b"Accept", b"*/*"), (b"host", b"a.example:8080")]


def test_request_with_two_hosts_counts_both() -> None:
    head = split_request_headers(
        [(b"Host", b"a"), (b"Host", b"b")], replace_x_forwarded=True, replace_forwarded=True
    )
    assert head.hosts == 2


def test_request_without_host_has_none() -> None:
    head = split_request_headers([], replace_x_forwarded=True, replace_forwarded=True)
    assert (head.host, head.hosts) == (None, 0)


def test_client_forwarding_headers_are_taken_out_when_the_proxy_sets_its_own() -> None:
    headers: list[Header] = [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"203.0.113.7, 198.51.100.2"),
        (b"X-Forwarded-Proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"Forwarded", b"for=198.51.100.1"),
        (b"x-forwarded-for", b"198.51.100.9"),
        (b"forwarded", b"for=198.51.100.3"),
    ]
    head = split_request_headers(headers, replace_x_forwarded=True, replace_forwarded=True)
    assert head.headers == [(b"Host", b"a")]
    # the prior lists are kept, in order, for this hop to append to
    assert head.x_forwarded_for == [b"203.0.113.7, 198.51.100.2", b"198.51.100.9"]
    assert head.forwarded == [b"for=198.51.100.1", b"for=198.51.100.3"]


def test_client_forwarding_headers_pass_untouched_when_the_proxy_sets_none() -> None:
    headers: list[Header] = [
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"Host", b"a"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"Forwarded", b"for=198.51.100.1"),
    ]
    head = split_request_headers(headers, replace_x_forwarded=False, replace_forwarded=False)
    assert head.headers == headers
    assert not head.x_forwarded_for
    assert not head.forwarded


def test_only_the_replaced_family_of_forwarding_headers_is_taken_out() -> None:
    headers: list[Header] = [
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Forwarded", b"for=198.51.100.1"),
    ]
    x_only = split_request_headers(headers, replace_x_forwarded=True, replace_forwarded=False)
    assert x_only.headers == [(b"Forwarded", b"for=198.51.100.1")]
    forwarded_only = split_request_headers(
        headers, replace_x_forwarded=False, replace_forwarded=True
    )
    assert forwarded_only.headers == headers[:2]


# split_response_headers: what goes back to the client


@pytest.mark.parametrize("name", HOP_NAMES)
def test_response_hop_by_hop_header_is_not_forwarded_whatever_its_case(name: bytes) -> None:
    for spelled in spellings(name):
        headers = [(b"Content-Type", b"text/plain"), (spelled, b"x"), (b"Content-Length", b"0")]
        assert response(headers).headers == [(b"Content-Type", b"text/plain")]


def test_response_framing_headers_are_left_for_the_proxy_to_write() -> None:
    assert response([(b"Date", b"d"), (b"Content-Length", b"3")]).headers == [(b"Date", b"d")]
    assert response([(b"Transfer-Encoding", b"chunked"), (b"Date", b"d")]).headers == [
        (b"Date", b"d")
    ]


def test_response_names_listed_in_connection_are_not_forwarded() -> None:
    headers: list[Header] = [
        (b"Connection", b"X-Private"),
        (b"X-Private", b"secret"),
        (b"X-Public", b"ok"),
        (b"x-PRIVATE", b"again"),
        (b"Content-Length", b"0"),
    ]
    assert response(headers).headers == [(b"X-Public", b"ok")]


def test_response_end_to_end_headers_keep_order_duplicates_and_spelling() -> None:
    headers: list[Header] = [
        (b"set-cookie", b"a=1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Cache-Control", b"no-store"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"0"),
    ]
    assert response(headers).headers == [
        (b"set-cookie", b"a=1"),
        (b"Cache-Control", b"no-store"),
        (b"Set-Cookie", b"b=2"),
    ]


def test_response_hidden_headers_are_removed_case_insensitively() -> None:
    headers = [(b"Server", b"nginx"), (b"X-POWERED-BY", b"php"), (b"Date", b"today")]
    hide = frozenset({b"server", b"x-powered-by"})
    assert response(headers, hide=hide).headers == [(b"Date", b"today")]


def test_response_keep_alive_follows_the_servers_http_version_and_connection() -> None:
    length = (b"Content-Length", b"0")
    assert response([length]).keep_alive is True
    assert response([length, (b"Connection", b"close")]).keep_alive is False
    assert response([length, (b"Connection", b"X-A, Close")]).keep_alive is False
    assert response([length], http11=False).keep_alive is False
    assert response([length, (b"Connection", b"Keep-Alive")], http11=False).keep_alive is True


def test_close_delimited_response_never_keeps_the_connection() -> None:
    head = response([(b"Content-Type", b"text/plain")])
    assert head.kind is BodyKind.CLOSE
    assert head.keep_alive is False


def test_response_content_length_gives_its_length() -> None:
    head = response([(b"Content-Length", b"1234")])
    assert (head.kind, head.length) == (BodyKind.LENGTH, 1234)


@pytest.mark.parametrize(
    "value",
    [b"0", b"5", b"0005", b"1234", b"9" * 18, b"9" * 19, b"1" + b"0" * 30],
)
def test_a_content_length_is_read_as_its_decimal_number(value: bytes) -> None:
    # up to 18 digits read natively, longer ones by int(): the same number either way
    head = response([(b"Content-Length", value)])
    assert (head.kind, head.length, head.declared_length) == (BodyKind.LENGTH, int(value), value)
    request_head = split_request_headers(
        [(b"Host", b"a"), (b"Content-Length", value)],
        replace_x_forwarded=True,
        replace_forwarded=True,
    )
    assert (request_head.kind, request_head.length) == (BodyKind.LENGTH, int(value))


def test_a_content_length_that_is_not_digits_fails_as_int_does() -> None:
    # llhttp never passes one; were it to, nothing is made up
    with pytest.raises(ValueError, match="invalid literal for int"):
        response([(b"Content-Length", b"5x")])


def test_request_field_names_are_classed_in_any_spelling_every_time() -> None:
    # names are remembered as sent: a second request with the same spellings (and another
    # spelling of the same name) is classed as the first was
    for _ in range(2):
        for host, length, agent in [
            (b"Host", b"Content-Length", b"User-Agent"),
            (b"HOST", b"content-length", b"user-agent"),
        ]:
            head = split_request_headers(
                [(host, b"a"), (agent, b"x"), (length, b"3"), (b"Connection", b"close")],
                replace_x_forwarded=True,
                replace_forwarded=True,
            )
            assert (head.host, head.hosts, head.kind, head.length) == (
                b"a",
                1,
                BodyKind.LENGTH,
                3,
            )
            assert head.headers == [(host, b"a"), (agent, b"x")]
            assert head.connection == frozenset({b"close"})


def test_response_chunked_coding_is_recorded() -> None:
    head = response([(b"Transfer-Encoding", b"gzip, chunked")])
    assert (head.kind, head.te) == (BodyKind.CHUNKED, b"gzip, chunked")


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 304), (b"HEAD", 304)])
def test_bodiless_response_keeps_the_declared_length_of_the_get_body(
    method: bytes, status: int
) -> None:
    head = response([(b"Content-Length", b"42")], method=method, status=status)
    assert head.kind is BodyKind.NONE
    assert head.declared_length == b"42"
    assert head.keep_alive is True


def test_bodiless_chunked_response_keeps_the_connection() -> None:
    head = response([(b"Transfer-Encoding", b"chunked")], method=b"HEAD")
    assert head.kind is BodyKind.NONE
    assert head.keep_alive is True


def test_transfer_encoding_split_over_two_fields_is_read_as_one_list() -> None:
    # RFC 9110 §5.3: repeated field lines form one comma-separated list: the codings are
    # gzip then chunked, and the proxy must not lose gzip when it re-chunks the body.
    head = response([(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")])
    assert head.kind is BodyKind.CHUNKED
    assert head.te is not None
    assert [c.strip() for c in head.te.lower().split(b",")] == [b"gzip", b"chunked"]


def test_transfer_encoding_whose_last_field_is_not_chunked_runs_to_close() -> None:
    head = response([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"gzip")])
    assert head.kind is BodyKind.CLOSE
    assert head.keep_alive is False


# response_body_kind (RFC 9112 §6.3)


@pytest.mark.parametrize(("length", "te"), [(42, None), (None, b"chunked"), (None, None)])
def test_response_to_head_has_no_body_whatever_the_headers_say(
    length: int | None, te: bytes | None
) -> None:
    assert response_body_kind(b"HEAD", 200, length, te) is BodyKind.NONE


@pytest.mark.parametrize("status", [100, 101, 103, 199, 204, 304])
@pytest.mark.parametrize(("length", "te"), [(10, None), (None, b"chunked"), (None, None)])
def test_1xx_204_and_304_have_no_body_whatever_the_headers_say(
    status: int, length: int | None, te: bytes | None
) -> None:
    assert response_body_kind(b"GET", status, length, te) is BodyKind.NONE


@pytest.mark.parametrize("length", [0, 1, 1 << 40])
def test_content_length_gives_a_length_delimited_body(length: int) -> None:
    assert response_body_kind(b"GET", 200, length, None) is BodyKind.LENGTH
    assert response_body_kind(b"POST", 404, length, None) is BodyKind.LENGTH


@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"gzip, chunked", b"gzip,chunked "])
def test_final_chunked_coding_gives_a_chunked_body(te: bytes) -> None:
    assert response_body_kind(b"GET", 200, None, te) is BodyKind.CHUNKED


def test_chunked_wins_over_content_length() -> None:
    # RFC 9112 §6.3 rule 3: Transfer-Encoding overrides Content-Length
    assert response_body_kind(b"GET", 200, 5, b"chunked") is BodyKind.CHUNKED


@pytest.mark.parametrize("te", [b"gzip", b"chunked, gzip"])
def test_transfer_coding_not_ending_in_chunked_runs_to_close(te: bytes) -> None:
    # RFC 9112 §6.3 rule 4: in a response, read until the server closes the connection
    assert response_body_kind(b"GET", 200, 5, te) is BodyKind.CLOSE


def test_no_length_and_no_transfer_encoding_runs_to_close() -> None:
    assert response_body_kind(b"GET", 200, None, None) is BodyKind.CLOSE


# format_forwarded_for and forwarding_headers (RFC 7239)


def test_forwarded_for_node_of_ipv4_is_bare() -> None:
    assert format_forwarded_for("192.0.2.60") == b"for=192.0.2.60"


def test_forwarded_for_node_of_ipv6_is_bracketed_and_quoted() -> None:
    assert format_forwarded_for("2001:db8:cafe::17") == b'for="[2001:db8:cafe::17]"'
    assert format_forwarded_for("::1") == b'for="[::1]"'


def forwarding(
    client_ip: str = "192.0.2.60",
    proto: bytes = b"http",
    host: bytes | None = b"app.example",
    *,
    x_forwarded_for: list[bytes] | None = None,
    forwarded: list[bytes] | None = None,
) -> dict[bytes, bytes]:
    """Both families on (empty prior lists) unless given; each header must appear once."""
    out = forwarding_headers(
        client_ip,
        proto,
        host,
        x_forwarded_for=[] if x_forwarded_for is None else x_forwarded_for,
        forwarded=[] if forwarded is None else forwarded,
    )
    names = [name for name, _ in out]
    assert len(names) == len(set(names)), "each forwarding header once"
    return dict(out)


def test_forwarding_headers_for_a_direct_ipv4_client() -> None:
    out = forwarding_headers(
        "192.0.2.60", b"http", b"app.example", x_forwarded_for=[], forwarded=[]
    )
    assert out == [
        (b"X-Forwarded-For", b"192.0.2.60"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"app.example"),
        (b"Forwarded", b"for=192.0.2.60;proto=http;host=app.example"),
    ]


def test_forwarding_headers_for_an_ipv6_client() -> None:
    out = forwarding(client_ip="2001:db8::1")
    assert out[b"X-Forwarded-For"] == b"2001:db8::1"  # as NGINX's $remote_addr: no brackets
    assert out[b"Forwarded"] == b'for="[2001:db8::1]";proto=http;host=app.example'


def test_x_forwarded_for_appends_this_hop_to_what_the_client_sent() -> None:
    out = forwarding(x_forwarded_for=[b"203.0.113.7"])
    assert out[b"X-Forwarded-For"] == b"203.0.113.7, 192.0.2.60"


def test_x_forwarded_for_joins_every_prior_field_in_order() -> None:
    out = forwarding(x_forwarded_for=[b"203.0.113.7, 198.51.100.2", b"198.51.100.9"])
    assert out[b"X-Forwarded-For"] == b"203.0.113.7, 198.51.100.2, 198.51.100.9, 192.0.2.60"


def test_forwarded_appends_this_hop_to_what_the_client_sent() -> None:
    out = forwarding(forwarded=[b"for=198.51.100.1", b"for=198.51.100.2"])
    assert out[b"Forwarded"] == (
        b"for=198.51.100.1, for=198.51.100.2, for=192.0.2.60;proto=http;host=app.example"
    )


def test_forwarded_quotes_a_host_with_a_port() -> None:
    # ":" is not a token character (RFC 7239 §4): the value must be a quoted-string
    out = forwarding(host=b"app.example:8080")
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="app.example:8080"'
    assert out[b"X-Forwarded-Host"] == b"app.example:8080"


def test_forwarded_quotes_an_ipv6_literal_host() -> None:
    out = forwarding(host=b"[2001:db8::1]:8080")
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="[2001:db8::1]:8080"'


def test_forwarded_escapes_quotes_and_backslashes_in_a_quoted_host() -> None:
    out = forwarding(host=b'a"b\\c:1')
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="a\\"b\\\\c:1"'


def test_no_host_means_no_x_forwarded_host_and_no_host_parameter() -> None:
    out = forwarding(host=None)
    assert b"X-Forwarded-Host" not in out
    assert out[b"Forwarded"] == b"for=192.0.2.60;proto=http"


def test_forwarding_headers_carry_the_given_proto() -> None:
    out = forwarding(proto=b"https")
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"Forwarded"] == b"for=192.0.2.60;proto=https;host=app.example"


def test_only_x_forwarded_headers_when_forwarded_is_off() -> None:
    out = forwarding_headers("192.0.2.60", b"http", b"h", x_forwarded_for=[], forwarded=None)
    assert [name for name, _ in out] == [
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
    ]


def test_only_forwarded_header_when_x_forwarded_is_off() -> None:
    out = forwarding_headers("192.0.2.60", b"http", b"h", x_forwarded_for=None, forwarded=[])
    assert out == [(b"Forwarded", b"for=192.0.2.60;proto=http;host=h")]


def test_no_forwarding_headers_when_both_are_off() -> None:
    out = forwarding_headers("192.0.2.60", b"http", b"h", x_forwarded_for=None, forwarded=None)
    assert out == []


def test_forwarding_names_are_the_lower_case_names_forwarding_headers_writes() -> None:
    out = forwarding_headers("192.0.2.60", b"http", b"h", x_forwarded_for=[], forwarded=[])
    assert {name.lower() for name, _ in out} == FORWARDING_NAMES


# serialize_head


def test_serialize_head_without_headers_ends_with_the_empty_line() -> None:
    assert serialize_head(b"GET / HTTP/1.1", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_serialize_head_writes_headers_in_order_with_duplicates_and_spelling() -> None:
    head = serialize_head(
        b"HTTP/1.1 200 OK",
        [(b"Set-Cookie", b"a=1"), (b"x-lower", b"v"), (b"Set-Cookie", b"b=2")],
    )
    assert head == b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nx-lower: v\r\nSet-Cookie: b=2\r\n\r\n"


def test_serialize_head_puts_a_serialized_block_between_the_headers_and_the_tail() -> None:
    block = serialize_fields([(b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"http")])
    assert block == b"\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http"
    head = serialize_head(b"GET / HTTP/1.1", [(b"Host", b"a")], block, [(b"Content-Length", b"2")])
    assert head == serialize_head(
        b"GET / HTTP/1.1",
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"X-Forwarded-Proto", b"http"),
            (b"Content-Length", b"2"),
        ],
    )
    assert serialize_fields([]) == b""
    assert serialize_head(b"GET / HTTP/1.1", [], b"", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_serialized_request_head_parses_back_to_the_same_fields() -> None:
    headers = [(b"Host", b"a.example"), (b"X-Dup", b"1"), (b"X-Dup", b"2"), (b"Accept", b"*/*")]
    head = serialize_head(b"GET /p?q=1 HTTP/1.1", headers)

    class Collect:
        def __init__(self) -> None:
            self.headers: list[Header] = []
            self.url = b""
            self.complete = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((bytes(name), bytes(value)))

        def on_message_complete(self) -> None:
            self.complete = True

    seen = Collect()
    httptools.HttpRequestParser(seen).feed_data(head)
    assert seen.complete
    assert seen.url == b"/p?q=1"
    assert seen.headers == headers


def test_the_usual_spellings_checked_first_are_classed_as_the_names_are() -> None:
    # a name spelled the usual way skips the memo: it must get the class its lower-case form has
    from portico.http import headers

    for classes in [headers._REQUEST_CLASSES, headers._RESPONSE_CLASSES]:
        names = classes.names
        entries = [entry for entry in classes.usual if entry is not None]
        assert entries
        for name, what in entries:
            assert names[name.lower()] == what, name


def _names_of_classed_lengths() -> list[bytes]:
    """Every classed name in several spellings, and names that are not classed but as long as
    one: beginning with a classed name's initial, with another letter, and with bytes whose
    folded initial is a letter's (`@` folds to a backquote, `-` as `m` does)."""
    from portico.http import headers

    names: list[bytes] = []
    for classes in [headers._REQUEST_CLASSES, headers._RESPONSE_CLASSES]:
        for name in classes.names:
            names += [name, name.upper(), name.title(), name[:1].upper() + name[1:]]
            names += [name[:1] + b"x" * (len(name) - 1), b"z" + name[1:], b"Q" + name[1:]]
            names += [b"@" + name[1:], b"`" + name[1:], b"-" + name[1:], b"M" + name[1:]]
    return names


def test_every_name_is_classed_as_its_lower_case_is_whichever_check_answers() -> None:
    # the usual spellings, the lower-case ones, the initials and the memo each answer some of
    # these before the lower-cased look-up would: never otherwise than it would (first sight
    # and again from the memo)
    from portico.http import headers

    for table in [headers._REQUEST_NAMES, dict(headers._RESPONSE_CLASSES.names)]:
        classes = headers.NameClasses(table, {b"Content-Length": table[b"content-length"]}, 64)
        for _ in range(2):
            for name in _names_of_classed_lengths():
                assert classes.of(name) == table.get(name.lower(), headers._PLAIN), name


def test_the_usual_connection_values_and_others_list_the_same_tokens() -> None:
    from portico.http.headers import connection_tokens

    assert connection_tokens(b"close") == frozenset({b"close"})
    assert connection_tokens(b"keep-alive") == frozenset({b"keep-alive"})
    assert connection_tokens(b"Close") == frozenset({b"close"})
    assert connection_tokens(b"keep-alive, Upgrade") == frozenset({b"keep-alive", b"upgrade"})
    # a field the usual value lists beside another that names a field: that field still goes
    head = split_request_headers(
        [(b"Host", b"a"), (b"Connection", b"close"), (b"Connection", b"X-Hop"), (b"X-Hop", b"1")],
        True,
        True,
    )
    assert head.headers == [(b"Host", b"a")]
    assert head.connection == frozenset({b"close", b"x-hop"})
    fields = [(b"Connection", b"keep-alive"), (b"Connection", b"X-Hop"), (b"X-Hop", b"1")]
    served = response([*fields, (b"Content-Length", b"0")])
    assert served.headers == []
    assert served.keep_alive


# (method, target, fields, block, tail): request heads that differ in one input each
_REQUESTS: list[tuple[bytes, bytes, list[Header], bytes, list[Header] | None]] = [
    (b"GET", b"/a", [(b"Host", b"h"), (b"Accept", b"*/*")], b"", None),
    (b"GET", b"/a", [(b"Host", b"h"), (b"Accept", b"*/*")], b"\r\nX-Forwarded-For: 1", None),
    (b"GET", b"/a", [(b"Host", b"h"), (b"Accept", b"*/*")], b"\r\nX-Forwarded-For: 2", None),
    (b"GET", b"/b", [(b"Host", b"h"), (b"Accept", b"*/*")], b"\r\nX-Forwarded-For: 2", None),
    (b"HEAD", b"/b", [(b"Host", b"h"), (b"Accept", b"*/*")], b"\r\nX-Forwarded-For: 2", None),
    (b"HEAD", b"/b", [(b"Accept", b"*/*"), (b"Host", b"h")], b"\r\nX-Forwarded-For: 2", None),
    (b"HEAD", b"/b", [(b"accept", b"*/*"), (b"Host", b"h")], b"\r\nX-Forwarded-For: 2", None),
    (b"HEAD", b"/b", [(b"accept", b"*/*"), (b"Host", b"h")], b"\r\nX-Forwarded-For: 2", []),
    (b"POST", b"/b", [(b"Host", b"h")], b"", [(b"Content-Length", b"0")]),
    (b"POST", b"/b", [(b"Host", b"h")], b"", [(b"Content-Length", b"10")]),
    (b"POST", b"/b", [(b"Host", b"h")], b"", [(b"Transfer-Encoding", b"chunked")]),
    (b"POST", b"/b", [(b"Host", b"h"), (b"X", b"")], b"", [(b"Transfer-Encoding", b"chunked")]),
    (b"POST", b"/b", [], b"", None),
    (b"GET", b"/a", [(b"Host", b"h"), (b"Accept", b"*/*")], b"", None),
]


def _copied(fields: list[Header] | None) -> list[Header] | None:
    """The same fields as new objects, as a parse of the next request makes them."""
    if fields is None:
        return None
    return [(bytes(bytearray(name)), bytes(bytearray(value))) for name, value in fields]


def test_a_request_head_from_the_memo_is_byte_for_byte_a_fresh_one() -> None:
    """A server connection's memo of the last request head it was sent gives back those bytes
    only for equal inputs: every head below, after every other, is what serialize_head makes
    of it."""
    memo = RequestLineMemo()
    for previous in _REQUESTS:
        for method, target, fields, block, tail in _REQUESTS:
            memo.serialize(previous[0], previous[1], list(previous[2]), previous[3], previous[4])
            fresh = serialize_head(method + b" " + target + b" HTTP/1.1", fields, block, tail)
            copied = _copied(fields)
            assert copied is not None
            made = memo.serialize(method, target, copied, block, _copied(tail))
            assert made == fresh
    # a repeat is the remembered bytes, and editing the list given does not change them
    fields = [(b"Host", b"h")]
    memo.serialize(b"GET", b"/", fields, b"", None)
    first = memo.serialize(b"GET", b"/", fields, b"", None)  # (a line remembered once twice)
    fields.append((b"X", b"y"))
    assert memo.serialize(b"GET", b"/", [(b"Host", b"h")], b"", None) is first
    assert memo.serialize(b"GET", b"/", fields, b"", None) == (
        b"GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n"
    )


class _Fields:
    """What httptools reports of a request head (its callbacks)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[Header] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def _split_raw(raw: bytes, *, replace: bool = True) -> tuple[bytes, RequestHead] | None:
    """Parse `raw` with llhttp as the listener does, then split it with its bytes: the
    request line as the proxy sends it, and the head; None when llhttp refuses it."""
    fields = _Fields()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return None
    method = parser.get_method()
    line = method + b" " + fields.url + b" HTTP/1.1"
    head = split_request_headers(fields.headers, replace, replace, raw, len(line))
    return line, head


def _fits(raw: bytes, *, replace: bool = True) -> bytes:
    """The head's `raw` bytes, checked: when there are some, they are what serialize_head
    makes of the request line and the fields as split, byte for byte."""
    split = _split_raw(raw, replace=replace)
    assert split is not None
    line, head = split
    if head.raw:
        assert head.raw + b"\r\n\r\n" == serialize_head(line, head.headers)
        assert head.raw_fields == head.headers
    return head.raw


def test_a_request_head_serialized_as_portico_would_is_kept_as_raw_bytes() -> None:
    raw = b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nX-Request-Id: 7\r\nAccept: */*\r\n\r\n"
    assert _fits(raw) == raw[:-4]


@pytest.mark.parametrize(
    "fields",
    [
        b"Host:h",  # no space
        b"Host:  h",  # two
        b"Host:\th",  # a tab
        b"Host: \th",
        b"Host: h\r\nX:",  # an empty value without a space
        b"Host: h\r\nX:  ",  # ... with two
        b"Host: h\r\nX: a b\r\nY:b",
        b"Host: h\r\nX: a\r\nY:  b\r\nZ: c",  # one field among others
    ],
)
def test_a_request_head_spelled_otherwise_is_never_kept_as_raw_bytes(fields: bytes) -> None:
    """Any other whitespace before a value than one space: the head a server gets is
    serialized anew (the raw bytes would differ from it)."""
    assert _fits(b"GET / HTTP/1.1\r\n" + fields + b"\r\n\r\n") == b""


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        # whitespace after a value is in it, as llhttp reports it: serialized as it came
        (b"GET / HTTP/1.1\r\nHost: h \r\nX: 1\t\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h \r\nX: 1\t"),
        # an empty value after one space is what serializing it makes
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nX: "),
        # mixed-case names and duplicates stay as sent
        (
            b"GET / HTTP/1.1\r\nhOST: h\r\nX-a: 1\r\nx-A: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nhOST: h\r\nX-a: 1\r\nx-A: 2",
        ),
        # fields left out (hop-by-hop, framing, forwarding replaced), first, between, last
        (
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: h\r\nTE: trailers\r\n"
            b"A: 1\r\nX-Forwarded-For: 1.2.3.4\r\nB: 2\r\nKeep-Alive: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nA: 1\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: h\r\nA: 1",
        ),
        # a very long value
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 20000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 20000,
        ),
        # Connection naming another field: serialized anew (rare, not spliced)
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a\r\nA: 1\r\nB: 2\r\n\r\n", b""),
    ],
)
def test_the_raw_bytes_kept_are_the_fields_forwarded(raw: bytes, kept: bytes) -> None:
    assert _fits(raw) == kept


def test_forwarding_fields_kept_when_the_proxy_sets_none_are_in_the_raw_bytes() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=x\r\n\r\n"
    assert _fits(raw, replace=False) == raw[:-4]
    assert _fits(raw) == b"GET / HTTP/1.1\r\nHost: h"


def test_raw_bytes_of_every_spelling_of_a_head_are_what_serializing_it_makes() -> None:
    """Heads of random fields, whitespace and classes (seeded): whenever raw bytes are kept,
    they are serialize_head's bytes (`_fits` checks), and a head spelled as it serializes
    keeps them."""
    rng = random.Random(18)
    names = [b"Host", b"A", b"x-b", b"Connection", b"Content-Length", b"X-Forwarded-For", b"TE"]
    values = [b"", b"1", b"a b", b"keep-alive", b"close, x-b", b"\x80\xff", b"v" * 300]
    spaces = [b"", b" ", b"  ", b"\t", b" \t"]
    kept = 0
    for _ in range(3000):
        fields = []
        canonical = True
        for _ in range(rng.randrange(1, 6)):
            name = rng.choice(names)
            if name == b"Content-Length":
                value = b"0"
            elif name == b"Host":
                value = b"h"
            else:
                value = rng.choice(values)
            before, after = rng.choice(spaces), rng.choice(spaces) if rng.random() < 0.2 else b""
            canonical = canonical and before == b" " and not after
            fields.append(name + b":" + before + value + after)
        raw = b"GET /p HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n"
        split = _split_raw(raw)
        if split is None:
            continue  # llhttp refused it (two Content-Lengths, say)
        result = _fits(raw)
        if canonical and b"Connection" not in raw:
            assert result, raw
        kept += bool(result)
    assert kept > 100


def test_a_spliced_request_head_is_serialize_heads_whatever_came_before() -> None:
    """`RequestLineMemo.splice`: raw bytes of a line and fields, then a block and a tail, give
    serialize_head's bytes, after any other head, and again for the same raw object."""
    memo = RequestLineMemo()
    line, fields = b"GET /a HTTP/1.1", [(b"Host", b"h"), (b"A", b"")]
    raw = serialize_head(line, fields)[:-4]
    block = serialize_fields([(b"X-Forwarded-For", b"1.2.3.4")])
    tails: list[list[Header] | None] = [None, [(b"Content-Length", b"3")], []]
    for other in (b"", block):
        for tail in tails:
            for first_block in (b"", block):
                memo.splice(bytes(bytearray(raw)), other, None)
                made = memo.splice(raw, first_block, tail)
                fresh = serialize_head(line, fields, first_block, tail)
                assert made == fresh
                assert memo.splice(raw, first_block, None if tail is None else list(tail)) == fresh
    tail = [(b"X", b"1")]
    made = memo.splice(raw, b"", tail)
    tail.append((b"Y", b"2"))  # the list given is not kept
    assert memo.splice(raw, b"", tail) == serialize_head(line, fields, b"", tail) != made
