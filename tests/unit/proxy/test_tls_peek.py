"""SNI from a ClientHello (listeners/tls_peek.py): real ClientHellos written by Python's ssl
module, hand-built ones for the edge cases, every truncation, record splits, and routing.

(Kept here with the other layer-4 tests; it tests `portico.listeners.tls_peek`.)
"""

from __future__ import annotations

import ssl
import struct

import pytest

from portico.listeners.tls_peek import MAX_HELLO, NEED_MORE, SniRouter, SniState, peek_sni


def real_client_hello(server_name: str | None, **options: object) -> bytes:
    """The first flight of a real TLS client (OpenSSL through Python's ssl): do_handshake()
    writes the ClientHello to the outgoing BIO and stops, waiting for the server."""
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for key, value in options.items():
        setattr(context, key, value)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def sni_extension(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def hello_body(
    extensions: bytes | None, session_id: bytes = b"", suites: bytes = b"\x13\x01"
) -> bytes:
    body = b"\x03\x03" + bytes(32)
    body += bytes((len(session_id),)) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += b"\x01\x00"  # one compression method: null
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes((kind,)) + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 1 << 14, version: bytes = b"\x03\x01") -> bytes:
    """`message` in handshake records of at most `size` bytes each."""
    out = b""
    for start in range(0, len(message), size):
        fragment = message[start : start + size]
        out += b"\x16" + version + struct.pack("!H", len(fragment)) + fragment
    return out


def client_hello(extensions: bytes | None, **kwargs: bytes) -> bytes:
    return records(handshake(hello_body(extensions, **kwargs)))


# -- real ClientHellos ------------------------------------------------------------------------


def test_real_client_hello_gives_the_server_name_in_lower_case() -> None:
    hello = real_client_hello("Service.Example.COM")
    result = peek_sni(hello)
    assert result.state is SniState.COMPLETE
    assert result.server_name == "service.example.com"


def test_real_client_hello_without_sni() -> None:
    result = peek_sni(real_client_hello(None))
    assert result.state is SniState.COMPLETE
    assert result.server_name is None


def test_real_tls12_only_client_hello() -> None:
    hello = real_client_hello("a.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert peek_sni(hello).server_name == "a.example.com"


def test_every_truncation_of_a_real_client_hello_needs_more() -> None:
    hello = real_client_hello("a.example.com")
    for end in range(len(hello)):
        assert peek_sni(hello[:end]) is NEED_MORE, end


def test_bytes_after_the_client_hello_are_ignored() -> None:
    hello = real_client_hello("a.example.com")
    assert peek_sni(hello + b"\x14\x03\x03\x00\x01\x01").server_name == "a.example.com"


def test_a_client_hello_split_over_many_records() -> None:
    hello = real_client_hello("a.example.com")
    message = hello[5:]  # the handshake message out of its single record
    split = records(message, size=100)
    assert split.count(b"\x16\x03\x01") >= len(message) // 100
    assert peek_sni(split).server_name == "a.example.com"
    for end in range(len(split)):
        assert peek_sni(split[:end]) is NEED_MORE, end


def test_a_record_boundary_inside_the_handshake_header() -> None:
    message = handshake(hello_body(sni_extension(b"a.example.com")))
    split = records(message[:2]) + records(message[2:])
    assert peek_sni(split).server_name == "a.example.com"


def test_a_client_hello_longer_than_one_record() -> None:
    padding = extension(21, bytes(20_000))  # the padding extension, over one record's 16 KiB
    message = handshake(hello_body(sni_extension(b"big.example.com") + padding))
    assert len(message) > 1 << 14
    data = records(message)
    assert peek_sni(data).server_name == "big.example.com"
    assert peek_sni(data[: (1 << 14) + 5]) is NEED_MORE
    assert peek_sni(data[:-1]) is NEED_MORE


def test_a_client_hello_over_the_limit_is_refused_from_its_header() -> None:
    message = handshake(hello_body(extension(21, bytes(MAX_HELLO))))
    result = peek_sni(records(message)[:9])  # record header + handshake header
    assert result.state is SniState.MALFORMED
    assert "over" in result.reason


# -- hand-built edge cases --------------------------------------------------------------------


def test_no_extensions_at_all() -> None:
    result = peek_sni(client_hello(None))
    assert result.state is SniState.COMPLETE
    assert result.server_name is None


def test_other_extensions_without_sni() -> None:
    result = peek_sni(client_hello(extension(10, b"\x00\x02\x00\x1d") + extension(13, b"")))
    assert result.state is SniState.COMPLETE
    assert result.server_name is None


def test_sni_among_other_extensions_and_a_session_id() -> None:
    extensions = extension(10, b"\x00\x02\x00\x1d") + sni_extension(b"x.test") + extension(16, b"")
    result = peek_sni(client_hello(extensions, session_id=bytes(32)))
    assert result.server_name == "x.test"


def test_an_unknown_name_type_next_to_a_host_name() -> None:
    entries = struct.pack("!BH", 0, 6) + b"x.test" + struct.pack("!BH", 7, 3) + b"abc"
    data = extension(0, struct.pack("!H", len(entries)) + entries)
    assert peek_sni(client_hello(data)).server_name == "x.test"


def test_an_empty_server_name_extension_names_nothing() -> None:
    assert peek_sni(client_hello(extension(0, b"\x00\x00"))).server_name is None


def test_a_trailing_dot_is_dropped() -> None:
    assert peek_sni(client_hello(sni_extension(b"a.example.com."))).server_name == "a.example.com"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\x80\x2e\x01\x03\x01",  # an SSLv2-format ClientHello
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert record
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x16\x02\x00\x00\x05",  # record version 2.0
        b"\x16\x03\x05\x00\x05",  # record version 3.5
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x40\x01",  # a record over 16 KiB
        records(handshake(hello_body(None), kind=2)),  # a ServerHello
        records(b"\x02"),  # a ServerHello, seen from its first byte
        # a ChangeCipherSpec record before the ClientHello is whole
        records(handshake(hello_body(sni_extension(b"a.test")))[:10]) + b"\x14\x03\x03\x00\x01\x01",
    ],
)
def test_not_tls(data: bytes) -> None:
    result = peek_sni(data)
    assert result.state is SniState.MALFORMED, data
    assert result.reason


@pytest.mark.parametrize(
    "body",
    [
        hello_body(None, session_id=bytes(33)),  # session id over 32 bytes
        hello_body(None, suites=b""),  # no cipher suites
        hello_body(None, suites=b"\x13"),  # an odd cipher_suites length
        hello_body(None)[:-2] + b"\x00\x00",  # no compression methods
        hello_body(None)[:-1],  # the compression methods run past the end
        hello_body(None) + b"\x00",  # one byte where the extensions' length should be
        hello_body(b"\x00\x00\x00\x05ab"),  # an extension longer than its block
        hello_body(b"") + b"x",  # bytes after the extensions
        hello_body(sni_extension(b"a.test") + sni_extension(b"b.test")),  # twice
        hello_body(extension(10, b"") + extension(10, b"")),  # any extension twice
        hello_body(sni_extension(b"a.test", b"b.test")),  # two host names
        hello_body(extension(0, b"\x00\x06\x00\x00\x02ab")),  # the list longer than its data
        hello_body(extension(0, b"\x00\x01\x00") + b""),  # a name entry cut short
        hello_body(extension(0, b"\x00\x00x")),  # bytes after the list
        hello_body(sni_extension(b"")),  # an empty host name
        hello_body(sni_extension(b"a b.test")),
        hello_body(sni_extension(b"a\x00.test")),
        hello_body(sni_extension(b"caf\xc3\xa9.test")),  # not ASCII (IDNs travel as xn--)
        hello_body(sni_extension(b"a..test")),
        hello_body(sni_extension(b"a" * 256)),
        b"\x03\x03" + bytes(20),  # shorter than the random
    ],
)
def test_malformed_client_hello(body: bytes) -> None:
    result = peek_sni(records(handshake(body)))
    assert result.state is SniState.MALFORMED, body
    assert result.reason


def test_garbage_is_told_from_its_first_byte() -> None:
    assert peek_sni(b"G").state is SniState.MALFORMED
    assert peek_sni(b"\x16\x04").state is SniState.MALFORMED
    assert peek_sni(b"") is NEED_MORE
    assert peek_sni(b"\x16") is NEED_MORE


# -- routing ----------------------------------------------------------------------------------


def test_router_exact_wildcard_and_no_match() -> None:
    router = SniRouter({"a.example.com": "A", "*.example.com": "W", "example.com": "APEX"})
    assert router.route("a.example.com") == "A"  # exact beats the wildcard
    assert router.route("b.example.com") == "W"
    assert router.route("example.com") == "APEX"
    assert router.route("x.b.example.com") is None  # a wildcard covers one label only
    assert router.route("example.org") is None
    assert router.route(None) is None
    assert router.route("") is None


def test_router_wildcard_does_not_match_its_apex_or_deeper_names() -> None:
    router = SniRouter({"*.example.com": "W"})
    assert router.route("example.com") is None
    assert router.route(".example.com") is None
    assert router.route("a.b.example.com") is None
    assert router.route("aexample.com") is None


def test_router_compares_case_insensitively_and_ignores_a_trailing_dot() -> None:
    router = SniRouter({"A.Example.com": 1, "*.B.example.COM": 2})
    assert router.route("a.example.com") == 1
    assert router.route("A.EXAMPLE.COM.") == 1
    assert router.route("x.b.example.com") == 2
    assert bool(router)
    assert not SniRouter({})
