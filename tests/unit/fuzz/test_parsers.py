"""Property-based tests (hypothesis) of everything that parses bytes or text a client, a
server or an operator controls: PROXY v1/v2 headers, the TLS ClientHello peek, cookies and the
signed persistence token, request and response header splitting, forwarding headers, and the
config loader. Properties: only the documented outcome or error for any input; round trips
where a serialiser exists; agreement with a reference (`ipaddress`, `http.cookies`) where one
exists. Each test's example count is hypothesis' default (100); `PORTICO_FUZZ_EXAMPLES=N`
(tests/unit/fuzz/conftest.py) runs N each, see docs/security.md."""

from __future__ import annotations

import ipaddress
import ssl
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from portico.config.load import ConfigError, parse_config
from portico.http.headers import (
    ResponseHead,
    connection_tokens,
    serialize_head,
    split_request_headers,
    trailer_fields,
)
from portico.listeners.tls_peek import SniState, peek_sni
from portico.persistence import cookie
from portico.proxy import proxy_protocol
from portico.proxy.proxy_protocol import ParseState

# -- PROXY protocol -----------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
ports = st.integers(0, 65535)


@given(st.binary(max_size=300))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12))
def test_proxy_parse_any_bytes_gives_a_state_never_an_exception(data: bytes) -> None:
    result = proxy_protocol.parse(data)
    assert result.state in ParseState
    if result.state is ParseState.COMPLETE:
        assert 0 < result.length <= len(data)
        if result.source is not None:
            assert result.destination is not None
            for ip, port in (result.source, result.destination):
                ipaddress.ip_address(ip)  # a real address, as ipaddress reads it
                assert 0 <= port <= 65535
    assert proxy_protocol.is_header(data) in (True, False, None)


@given(
    st.sampled_from(["v1", "v2"]),
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.binary(max_size=20),
)
def test_proxy_headers_round_trip(
    version: str, ips: tuple[str, str], sport: int, dport: int, rest: bytes
) -> None:
    header = proxy_protocol.encode(version, (ips[0], sport), (ips[1], dport))
    result = proxy_protocol.parse(header + rest)
    assert result.state is ParseState.COMPLETE
    assert result.length == len(header)
    assert result.source is not None
    assert result.destination is not None
    assert ipaddress.ip_address(result.source[0]) == ipaddress.ip_address(ips[0])
    assert ipaddress.ip_address(result.destination[0]) == ipaddress.ip_address(ips[1])
    assert (result.source[1], result.destination[1]) == (sport, dport)
    for cut in range(len(header)):  # every proper prefix asks for more
        assert proxy_protocol.parse(header[:cut]).state is ParseState.NEED_MORE


# -- TLS ClientHello ----------------------------------------------------------------------------

label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20)
# the last label a letters-only TLD: a client sends no SNI for an IP address (RFC 6066 §3)
hostnames = st.tuples(
    st.lists(label, min_size=1, max_size=3),
    st.text(string.ascii_lowercase, min_size=2, max_size=6),
).map(lambda parts: ".".join([*parts[0], parts[1]]))


def client_hello(name: str) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@given(hostnames, st.integers(1, 64))
def test_tls_peek_finds_the_name_of_real_hellos_in_any_split(name: str, cut: int) -> None:
    hello = client_hello(name)
    assert peek_sni(hello).server_name == name
    assert peek_sni(hello[: len(hello) // cut]).state in (SniState.NEED_MORE, SniState.COMPLETE)


@given(st.binary(max_size=600))
@example(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
def test_tls_peek_any_bytes_gives_a_state(data: bytes) -> None:
    result = peek_sni(data)
    assert result.state in SniState
    if result.server_name is not None:
        assert result.server_name == result.server_name.lower()


@given(st.data())
def test_tls_peek_mutated_hellos_give_a_state(data: st.DataObject) -> None:
    hello = bytearray(client_hello("shop.example.com"))
    for _ in range(data.draw(st.integers(1, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    assert peek_sni(bytes(hello)).state in SniState


# -- cookies and the signed persistence token ----------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"
servers = st.text(string.ascii_letters + string.digits + "._-:", min_size=1, max_size=30)


@given(servers, st.integers(0, 2**32 - 1))
def test_persistence_token_round_trips_and_any_change_is_ignored(server: str, now: int) -> None:
    value = cookie.encode(server, SECRET, now)
    tokens = cookie.server_tokens([server], SECRET)
    assert cookie.decode(value, SECRET, tokens, None, now) == server
    assert cookie.decode(value, b"another secret of 32 bytes......", tokens, None, now) is None
    for i in range(len(value)):
        for replacement in "A_":
            if value[i] != replacement:
                changed = value[:i] + replacement + value[i + 1 :]
                assert cookie.decode(changed, SECRET, tokens, None, now) is None


@given(st.one_of(st.binary(max_size=80), st.text(max_size=80)))
def test_persistence_token_any_value_is_a_server_or_none(value: bytes | str) -> None:
    tokens = cookie.server_tokens(["a", "b"], SECRET)
    assert cookie.decode(value, SECRET, tokens, 3600, 10**9) in (None, "a", "b")
    raw = value if isinstance(value, bytes) else value.encode()
    found = cookie.unprefix(raw)
    if found is not None:
        assert cookie.prefix(found[1], found[0]) == raw  # unprefix undoes prefix


cookie_names = st.text(
    string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=12
)
cookie_values = st.text(
    string.ascii_letters + string.digits + "!#$%&'()*+-./:<>?@[]^_`{|}~", max_size=20
)


@given(
    st.lists(
        st.tuples(cookie_names, cookie_values), min_size=1, max_size=6, unique_by=lambda p: p[0]
    )
)
def test_cookie_header_helpers_agree_with_a_plain_split(pairs: list[tuple[str, str]]) -> None:
    header = "; ".join(f"{k}={v}" for k, v in pairs).encode()
    for name, value in pairs:
        assert cookie.cookie_value(header, name.encode()) == value.encode()
        rest = cookie.without_cookie(header, name.encode())
        assert cookie.cookie_value(rest, name.encode()) is None
        rewritten = cookie.rewrite_cookie(header, name.encode(), b"new")
        assert cookie.cookie_value(rewritten, name.encode()) == b"new"
        others = [(k, v) for k, v in pairs if k != name]
        for k, v in others:
            assert cookie.cookie_value(rest, k.encode()) == v.encode()


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=10))
def test_cookie_helpers_take_any_bytes(header: bytes, name: bytes) -> None:
    cookie.cookie_value(header, name)
    cookie.without_cookie(header, name)
    cookie.rewrite_cookie(header, name, b"v")
    cookie.set_cookie_value(header, name)
    cookie.prefix_set_cookie(header, name, "A" * cookie.TOKEN_CHARS)


# -- header splitting ---------------------------------------------------------------------------

token = st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=16)
field_value = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))
known_names = st.sampled_from(
    [
        b"Host",
        b"Connection",
        b"X-Forwarded-For",
        b"Forwarded",
        b"Upgrade",
        b"TE",
        b"Keep-Alive",
        b"Transfer-Encoding",
        b"Proxy-Connection",
        b"Trailer",
        b"X-Forwarded-Proto",
    ]
)
fields = st.lists(
    st.tuples(st.one_of(token.map(str.encode), known_names), field_value), max_size=12
)


@given(fields, st.booleans(), st.booleans())
def test_request_header_splitting_never_forwards_hop_by_hop_fields(
    headers: list[tuple[bytes, bytes]], replace_xff: bool, replace_fwd: bool
) -> None:
    headers = [h for h in headers if h[0].lower() != b"content-length"]  # llhttp checks these
    head = split_request_headers(headers, replace_xff, replace_fwd)
    names = {name.lower() for name, _ in head.headers}
    assert not names & {
        b"connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"proxy-connection",
        b"trailer",
        b"upgrade",
    }
    listed = head.connection or frozenset()
    assert not names & (listed - {b"close", b"keep-alive"})
    assert head.hosts == sum(1 for n, _ in headers if n.lower() == b"host")
    line = serialize_head(b"GET / HTTP/1.1", head.headers)
    assert line.endswith(b"\r\n\r\n")


@given(st.binary(max_size=100))
def test_connection_tokens_take_any_bytes(value: bytes) -> None:
    tokens = connection_tokens(value)
    assert all(t == t.lower().strip() for t in tokens)


@given(fields)
def test_trailer_fields_drop_framing_and_hop_by_hop_fields(
    headers: list[tuple[bytes, bytes]],
) -> None:
    kept = {n.lower() for n, _ in trailer_fields(headers)}
    assert not kept & {b"transfer-encoding", b"content-length", b"connection", b"host"}


@given(st.binary(max_size=400))
def test_response_heads_parse_or_raise_the_parsers_error(data: bytes) -> None:
    import httptools

    head = ResponseHead(frozenset())
    parser = httptools.HttpResponseParser(head)
    try:
        parser.feed_data(b"HTTP/1.1 200 OK\r\n" + data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return


# -- the config loader --------------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.text(max_size=300))
@example("listeners: [{name: a, bind: ':0', default_pool: p, access: {deny: [nope]}}]")
@example("a: &x [*x]")
@example("\x00")
def test_config_text_is_a_config_or_a_config_error(text: str) -> None:
    problem = ""
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        problem = str(exc)
        assert problem  # says what is wrong


@given(
    st.dictionaries(
        st.sampled_from(
            ["workers", "listeners", "pools", "admin", "state", "plugins", "shutdown_grace", "zzz"]
        ),
        yaml_values,
        max_size=5,
    )
)
def test_config_structures_are_a_config_or_a_config_error(data: dict[str, object]) -> None:
    import yaml

    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        assume(False)
        return
    problem = "fuzz.yaml"
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        problem = str(exc)
    assert "fuzz.yaml" in problem
