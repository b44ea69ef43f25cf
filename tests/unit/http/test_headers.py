"""Header rules of a proxy as pure functions: hop-by-hop removal (RFC 9110 §7.6.1), response
framing (RFC 9112 §6.3), forwarding headers (RFC 7239) and head serialisation."""

from __future__ import annotations

import httptools
import pytest

from portico.http.headers import (
    FORWARDING_NAMES,
    HOP_BY_HOP,
    BodyKind,
    Header,
    connection_tokens,
    end_to_end,
    format_forwarded_for,
    forwarding_headers,
    header_value,
    response_body_kind,
    serialize_head,
)

# header_value


def test_header_value_matches_names_case_insensitively() -> None:
    headers = [(b"Host", b"a.example"), (b"X-TOKEN", b"t")]
    assert header_value(headers, b"host") == b"a.example"
    assert header_value(headers, b"x-token") == b"t"


def test_header_value_returns_the_first_of_repeated_fields() -> None:
    headers = [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert header_value(headers, b"set-cookie") == b"a=1"


def test_header_value_is_none_when_absent() -> None:
    assert header_value([(b"Host", b"a")], b"content-length") is None
    assert header_value([], b"host") is None


# connection_tokens


def test_connection_tokens_are_lower_cased_and_stripped() -> None:
    headers = [(b"Connection", b" Keep-Alive ,  X-Private-Thing ")]
    assert connection_tokens(headers) == {b"keep-alive", b"x-private-thing"}


def test_connection_tokens_merge_every_connection_field() -> None:
    headers = [
        (b"Connection", b"close"),
        (b"Host", b"a"),
        (b"connection", b"X-A, x-b"),
    ]
    assert connection_tokens(headers) == {b"close", b"x-a", b"x-b"}


def test_connection_tokens_skip_empty_list_elements() -> None:
    # RFC 9110 §5.6.1: recipients accept and ignore empty list elements
    assert connection_tokens([(b"Connection", b",, close ,,")]) == {b"close"}


def test_connection_tokens_ignore_other_headers() -> None:
    headers = [(b"Proxy-Connection", b"close"), (b"X-Connection", b"upgrade")]
    assert connection_tokens(headers) == frozenset()


# end_to_end (hop-by-hop removal)


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Content-Length",
    ],
)
def test_end_to_end_drops_each_hop_by_hop_header_whatever_its_case(name: bytes) -> None:
    for spelled in (name, name.lower(), name.upper()):
        headers = [(b"Accept", b"*/*"), (spelled, b"x"), (b"X-After", b"1")]
        assert end_to_end(headers) == [(b"Accept", b"*/*"), (b"X-After", b"1")]


def test_hop_by_hop_set_is_lower_case_and_covers_rfc_9110() -> None:
    assert all(name == name.lower() for name in HOP_BY_HOP)
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    } <= HOP_BY_HOP


def test_end_to_end_drops_the_names_listed_in_connection() -> None:
    headers: list[Header] = [
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"secret"),
        (b"x-private", b"again"),
        (b"X-Public", b"ok"),
    ]
    assert end_to_end(headers, connection_tokens(headers)) == [(b"X-Public", b"ok")]


def test_end_to_end_keeps_order_duplicates_and_spelling_of_the_rest() -> None:
    headers: list[Header] = [
        (b"Host", b"a.example"),
        (b"x-dup", b"one"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Accept", b"text/html"),
        (b"X-Dup", b"two"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert end_to_end(headers) == [
        (b"Host", b"a.example"),
        (b"x-dup", b"one"),
        (b"Accept", b"text/html"),
        (b"X-Dup", b"two"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]


def test_end_to_end_drops_extra_names_case_insensitively() -> None:
    headers = [(b"Server", b"nginx"), (b"X-POWERED-BY", b"php"), (b"Date", b"today")]
    assert end_to_end(headers, frozenset({b"server", b"x-powered-by"})) == [(b"Date", b"today")]


def test_end_to_end_leaves_its_input_alone() -> None:
    headers = [(b"Connection", b"close"), (b"Accept", b"*/*")]
    end_to_end(headers)
    assert headers == [(b"Connection", b"close"), (b"Accept", b"*/*")]


# response_body_kind (RFC 9112 §6.3)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"42")],
        [(b"Transfer-Encoding", b"chunked")],
        [],
    ],
)
def test_response_to_head_has_no_body_whatever_the_headers_say(headers: list[Header]) -> None:
    assert response_body_kind(b"HEAD", 200, headers) == (BodyKind.NONE, 0)


@pytest.mark.parametrize("status", [100, 101, 103, 199, 204, 304])
def test_1xx_204_and_304_have_no_body_whatever_the_headers_say(status: int) -> None:
    for headers in ([(b"Content-Length", b"10")], [(b"Transfer-Encoding", b"chunked")], []):
        assert response_body_kind(b"GET", status, headers) == (BodyKind.NONE, 0)


def test_content_length_gives_a_length_delimited_body() -> None:
    assert response_body_kind(b"GET", 200, [(b"Content-Length", b"1234")]) == (
        BodyKind.LENGTH,
        1234,
    )
    assert response_body_kind(b"POST", 404, [(b"content-length", b"0")]) == (BodyKind.LENGTH, 0)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"gzip, chunked", b"gzip,chunked "])
def test_final_chunked_coding_gives_a_chunked_body(value: bytes) -> None:
    assert response_body_kind(b"GET", 200, [(b"Transfer-Encoding", value)]) == (
        BodyKind.CHUNKED,
        0,
    )


def test_chunked_wins_over_content_length_in_either_order() -> None:
    te = (b"Transfer-Encoding", b"chunked")
    cl = (b"Content-Length", b"5")
    assert response_body_kind(b"GET", 200, [te, cl]) == (BodyKind.CHUNKED, 0)
    assert response_body_kind(b"GET", 200, [cl, te]) == (BodyKind.CHUNKED, 0)


@pytest.mark.parametrize("value", [b"gzip", b"chunked, gzip"])
def test_transfer_coding_not_ending_in_chunked_runs_to_close(value: bytes) -> None:
    # RFC 9112 §6.3 rule 4: in a response, read until the server closes the connection
    headers = [(b"Transfer-Encoding", value), (b"Content-Length", b"5")]
    assert response_body_kind(b"GET", 200, headers) == (BodyKind.CLOSE, 0)


def test_transfer_encoding_split_over_two_fields_is_read_as_one_list() -> None:
    # RFC 9110 §5.3: repeated field lines form one comma-separated list, so the final coding
    # here is chunked, as in `Transfer-Encoding: gzip, chunked`.
    headers = [(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")]
    assert response_body_kind(b"GET", 200, headers) == (BodyKind.CHUNKED, 0)


def test_transfer_encoding_whose_last_field_is_not_chunked_runs_to_close() -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"gzip")]
    assert response_body_kind(b"GET", 200, headers) == (BodyKind.CLOSE, 0)


def test_no_length_and_no_transfer_encoding_runs_to_close() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"Connection", b"close")]
    assert response_body_kind(b"GET", 200, headers) == (BodyKind.CLOSE, 0)


# format_forwarded_for and forwarding_headers (RFC 7239)


def test_forwarded_for_node_of_ipv4_is_bare() -> None:
    assert format_forwarded_for("192.0.2.60") == b"for=192.0.2.60"


def test_forwarded_for_node_of_ipv6_is_bracketed_and_quoted() -> None:
    assert format_forwarded_for("2001:db8:cafe::17") == b'for="[2001:db8:cafe::17]"'
    assert format_forwarded_for("::1") == b'for="[::1]"'


def forwarding(
    headers: list[Header],
    client_ip: str = "192.0.2.60",
    proto: bytes = b"http",
    host: bytes | None = b"app.example",
    *,
    x_forwarded: bool = True,
    forwarded: bool = True,
) -> dict[bytes, bytes]:
    out = forwarding_headers(
        headers, client_ip, proto, host, x_forwarded=x_forwarded, forwarded=forwarded
    )
    names = [name for name, _ in out]
    assert len(names) == len(set(names)), "each forwarding header once"
    return dict(out)


def test_forwarding_headers_for_a_direct_ipv4_client() -> None:
    out = forwarding_headers(
        [], "192.0.2.60", b"http", b"app.example", x_forwarded=True, forwarded=True
    )
    assert out == [
        (b"X-Forwarded-For", b"192.0.2.60"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"app.example"),
        (b"Forwarded", b"for=192.0.2.60;proto=http;host=app.example"),
    ]


def test_forwarding_headers_for_an_ipv6_client() -> None:
    out = forwarding([], client_ip="2001:db8::1")
    assert out[b"X-Forwarded-For"] == b"2001:db8::1"  # as NGINX's $remote_addr: no brackets
    assert out[b"Forwarded"] == b'for="[2001:db8::1]";proto=http;host=app.example'


def test_x_forwarded_for_appends_this_hop_to_what_the_client_sent() -> None:
    out = forwarding([(b"X-Forwarded-For", b"203.0.113.7")])
    assert out[b"X-Forwarded-For"] == b"203.0.113.7, 192.0.2.60"


def test_x_forwarded_for_joins_every_field_the_client_sent_in_order() -> None:
    headers = [
        (b"x-forwarded-for", b"203.0.113.7, 198.51.100.2"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"198.51.100.9"),
    ]
    out = forwarding(headers)
    assert out[b"X-Forwarded-For"] == b"203.0.113.7, 198.51.100.2, 198.51.100.9, 192.0.2.60"


def test_proto_and_host_state_what_this_proxy_saw_not_what_the_client_claimed() -> None:
    headers = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example")]
    out = forwarding(headers, proto=b"http", host=b"app.example")
    assert out[b"X-Forwarded-Proto"] == b"http"
    assert out[b"X-Forwarded-Host"] == b"app.example"


def test_forwarded_appends_this_hop_to_what_the_client_sent() -> None:
    headers = [(b"Forwarded", b"for=198.51.100.1"), (b"forwarded", b"for=198.51.100.2")]
    out = forwarding(headers)
    assert out[b"Forwarded"] == (
        b"for=198.51.100.1, for=198.51.100.2, for=192.0.2.60;proto=http;host=app.example"
    )


def test_forwarded_quotes_a_host_with_a_port() -> None:
    # ":" is not a token character (RFC 7239 §4): the value must be a quoted-string
    out = forwarding([], host=b"app.example:8080")
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="app.example:8080"'
    assert out[b"X-Forwarded-Host"] == b"app.example:8080"


def test_forwarded_quotes_an_ipv6_literal_host() -> None:
    out = forwarding([], host=b"[2001:db8::1]:8080")
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="[2001:db8::1]:8080"'


def test_forwarded_escapes_quotes_and_backslashes_in_a_quoted_host() -> None:
    out = forwarding([], host=b'a"b\\c:1')
    assert out[b"Forwarded"] == b'for=192.0.2.60;proto=http;host="a\\"b\\\\c:1"'


def test_no_host_means_no_x_forwarded_host_and_no_host_parameter() -> None:
    out = forwarding([], host=None)
    assert b"X-Forwarded-Host" not in out
    assert out[b"Forwarded"] == b"for=192.0.2.60;proto=http"


def test_forwarding_headers_carry_the_given_proto() -> None:
    out = forwarding([], proto=b"https")
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"Forwarded"] == b"for=192.0.2.60;proto=https;host=app.example"


def test_x_forwarded_only() -> None:
    out = forwarding([(b"Forwarded", b"for=198.51.100.1")], forwarded=False)
    assert set(out) == {b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host"}


def test_forwarded_only() -> None:
    out = forwarding([(b"X-Forwarded-For", b"203.0.113.7")], x_forwarded=False)
    assert out == {b"Forwarded": b"for=192.0.2.60;proto=http;host=app.example"}


def test_no_forwarding_headers_when_both_are_off() -> None:
    headers = [(b"X-Forwarded-For", b"203.0.113.7"), (b"Forwarded", b"for=198.51.100.1")]
    assert forwarding_headers(
        headers, "192.0.2.60", b"http", b"app.example", x_forwarded=False, forwarded=False
    ) == []


def test_forwarding_names_are_the_lower_case_names_forwarding_headers_writes() -> None:
    out = forwarding_headers(
        [], "192.0.2.60", b"http", b"app.example", x_forwarded=True, forwarded=True
    )
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
