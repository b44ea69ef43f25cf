"""PROXY protocol v1/v2: spec vectors, round trips, every truncation, and what is malformed."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest

from portico.proxy.proxy_protocol import (
    NEED_MORE,
    V2_SIGNATURE,
    ParseState,
    encode,
    encode_v1,
    encode_v2,
    encode_v2_local,
    is_header,
    parse,
)

# haproxy writing a v2 header for 172.19.0.1:42578 -> 172.19.0.3:80 (as captured with netcat)
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c ac130001 ac130003 a652 0050")


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


# -- encoding ---------------------------------------------------------------------------------


def test_encode_v1_ipv4_is_the_spec_example() -> None:
    header = encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_encode_v1_ipv6_is_canonical() -> None:
    header = encode_v1(("2001:DB8:0:0::1", 1), ("::1", 65535))
    assert header == b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n"


@pytest.mark.parametrize(
    ("ip", "text"),
    [
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),  # hex groups only, never dotted
        ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),  # the longest run of zeroes
        ("1:0:0:2:3:0:0:4", "1::2:3:0:0:4"),  # the first of equal runs
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),  # a single zero group stays
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ],
)
def test_encode_v1_ipv6_text_is_the_specs(ip: str, text: str) -> None:
    assert encode_v1((ip, 1), ("::", 2)) == f"PROXY TCP6 {text} :: 1 2\r\n".encode()
    assert ip_address(text) == ip_address(ip)


def test_encode_v1_without_addresses_is_unknown() -> None:
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


def test_encode_v2_ipv4_matches_haproxy() -> None:
    assert encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == HAPROXY_V2


def test_encode_v2_ipv6_has_a_36_byte_address_block() -> None:
    header = encode_v2(("2001:db8::7", 40001), ("2001:db8::1", 443))
    assert header[12:16] == b"\x21\x21\x00\x24"
    assert len(header) == 16 + 36


def test_encode_v2_without_addresses_and_local() -> None:
    assert encode_v2(None, None) == V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert encode_v2_local() == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_encode_refuses_mixed_families_and_bad_ports() -> None:
    with pytest.raises(ValueError, match="different families"):
        encode_v1(("::1", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError, match="different families"):
        encode_v2(("::1", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError, match="out of range"):
        encode_v1(("127.0.0.1", 65536), ("127.0.0.1", 2))


def test_encode_falls_back_to_unknown_when_addresses_cannot_be_written() -> None:
    assert encode("v1", ("::1", 1), ("127.0.0.1", 2)) == b"PROXY UNKNOWN\r\n"
    assert encode("v2", ("::1", 1), ("127.0.0.1", 2)) == V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert encode("v1", ("10.0.0.1", 1), ("10.0.0.2", 2)).startswith(b"PROXY TCP4 ")


# -- parsing complete headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("192.168.0.1", 56324), ("192.168.0.11", 443)),
        (("0.0.0.0", 0), ("255.255.255.255", 65535)),
        (("2001:db8::7", 40001), ("2001:db8::1", 443)),
        (("::ffff:10.0.0.1", 1), ("::", 2)),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_parse_reads_back_what_encode_wrote(
    version: str, src: tuple[str, int], dst: tuple[str, int]
) -> None:
    header = encode(version, src, dst)
    result = parse(header + b"payload")
    assert result.state is ParseState.COMPLETE
    assert result.length == len(header)
    assert result.source is not None
    assert result.destination is not None
    assert ip_address(result.source[0]) == ip_address(src[0])
    assert ip_address(result.destination[0]) == ip_address(dst[0])
    assert (result.source[1], result.destination[1]) == (src[1], dst[1])
    assert result.version == int(version[1])
    assert not result.is_local


def test_parse_haproxy_v2_vector() -> None:
    result = parse(HAPROXY_V2 + b"GET / HTTP/1.1\r\n")
    assert (result.source, result.destination, result.length) == (
        ("172.19.0.1", 42578),
        ("172.19.0.3", 80),
        28,
    )


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f:f:f:f:f:f:ffff ffff:f:f:f:f:f:f:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN anything at all\r\n",
    ],
)
def test_v1_unknown_is_complete_without_addresses(line: bytes) -> None:
    result = parse(line + b"rest")
    assert result.state is ParseState.COMPLETE
    assert result.length == len(line)
    assert result.is_local


def test_v1_accepts_the_longest_line_and_refuses_one_byte_more() -> None:
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(longest) == 107
    assert parse(longest).state is ParseState.COMPLETE
    too_long = longest[:-2] + b"0\r\n"
    assert parse(too_long).state is ParseState.MALFORMED
    assert "longer than 107" in parse(too_long).reason


def test_v1_longest_tcp6_line() -> None:
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    line = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert len(line) == 104
    result = parse(line)
    assert result.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535)


def test_v2_local_is_complete_without_addresses_and_skips_its_block() -> None:
    assert parse(encode_v2_local()).is_local
    header = v2(0x20, 0x11, bytes(12))  # LOCAL with an address block: ignored, skipped
    result = parse(header + b"x")
    assert result.is_local
    assert result.length == 28


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    body = bytes((10, 0, 0, 1, 10, 0, 0, 2)) + struct.pack("!HH", 1000, 2000)
    tlvs = b"\x04\x00\x03abc" + b"\x02\x00\x0bexample.com"
    header = v2(0x21, 0x11, body + tlvs)
    result = parse(header + b"data")
    assert result.length == len(header)
    assert result.source == ("10.0.0.1", 1000)
    assert result.destination == ("10.0.0.2", 2000)


@pytest.mark.parametrize(
    ("fam", "size"), [(0x00, 0), (0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216), (0x10, 0)]
)
def test_v2_families_other_than_tcp_over_ip_use_the_connection_addresses(
    fam: int, size: int
) -> None:
    header = v2(0x21, fam, bytes(size))
    result = parse(header)
    assert result.state is ParseState.COMPLETE
    assert result.length == len(header)
    assert result.is_local


def test_v2_with_the_largest_length_needs_all_of_it() -> None:
    header = v2(0x21, 0x11, bytes(12) + b"\x04\xff\xf0" + bytes(0xFFF0))
    assert len(header) == 16 + 0xFFFF
    assert parse(header[:-1]) is NEED_MORE
    assert parse(header).length == len(header)


# -- truncation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)),
        encode_v1(("2001:db8::7", 40001), ("2001:db8::1", 443)),
        b"PROXY UNKNOWN\r\n",
        HAPROXY_V2,
        encode_v2(("2001:db8::7", 40001), ("2001:db8::1", 443)),
        encode_v2_local(),
    ],
)
def test_every_truncation_needs_more(header: bytes) -> None:
    for end in range(len(header)):
        assert parse(header[:end]) is NEED_MORE, header[:end]
    assert parse(header).state is ParseState.COMPLETE


# -- malformed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"PROXY\r\n",
        b"PROXY \r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP6 ::g ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        b"PROXY " + b"A" * 101,
        v2(0x11, 0x11, bytes(12)),  # version 1 in a v2 header
        v2(0x31, 0x11, bytes(12)),  # version 3
        v2(0x22, 0x11, bytes(12)),  # command 2
        v2(0x2F, 0x11, bytes(12)),  # command 15
        v2(0x21, 0x41, bytes(12)),  # family 4
        v2(0x21, 0x13, bytes(12)),  # protocol 3
        v2(0x21, 0x11, bytes(11)),  # address block too short for TCP4
        v2(0x21, 0x21, bytes(12)),  # ... and for TCP6
        v2(0x21, 0x31, bytes(108)),  # ... and for UNIX
        b"\r\n\r\n\x00\r\nQUIT\r",  # a broken signature
        b"\r\n\r\n\x00\r\nQUIT\n\x11",  # the version is wrong before the header is whole
        b"\x00",
    ],
)
def test_malformed(data: bytes) -> None:
    result = parse(data)
    assert result.state is ParseState.MALFORMED, data
    assert result.reason


def test_malformed_is_told_early_from_the_first_wrong_byte() -> None:
    assert parse(b"G").state is ParseState.MALFORMED
    assert parse(b"PRX").state is ParseState.MALFORMED
    assert parse(b"\r\n\r\n\x01").state is ParseState.MALFORMED


def test_empty_buffer_needs_more() -> None:
    assert parse(b"") is NEED_MORE


# -- is_header --------------------------------------------------------------------------------


def test_is_header_tells_a_proxy_header_from_other_bytes() -> None:
    assert is_header(b"PROXY TCP4") is True
    assert is_header(V2_SIGNATURE + b"\x21") is True
    assert is_header(b"PROX") is None
    assert is_header(b"\r\n\r\n") is None
    assert is_header(b"") is None
    assert is_header(b"PROXX") is False
    assert is_header(b"GET / HTTP/1.1") is False
    assert is_header(b"\x16\x03\x01") is False
