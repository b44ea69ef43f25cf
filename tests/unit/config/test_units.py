"""Durations, sizes and addresses as an operator writes them."""

import re

import pytest

from portico.config.units import HostPort, parse_address, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1m30s", 90.0),
        (" 10 s ", 10.0),
        ("30", 30.0),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts_units_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_names_the_value_and_the_units() -> None:
    message = '"10 parsecs" is not a duration: use a number with ms, s, m or h'
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration("10 parsecs")


@pytest.mark.parametrize("bad", ["", "s", "2 d", "1s2", "-1s", "1e3", "fast", True, None, [1]])
def test_parse_duration_rejects_non_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [-1, -0.5])
def test_parse_duration_rejects_negative_numbers(bad: float) -> None:
    with pytest.raises(ValueError, match="is negative"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_parse_duration_rejects_infinity_and_nan(bad: float) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1MiB", 1024**2),
        ("64KiB", 64 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("1kB", 1000),
        ("1KB", 1000),
        ("512", 512),
        ("512B", 512),
        ("1.5KiB", 1536),
        ("0.1MB", 100_000),
        ("8 KiB", 8192),
        (0, 0),
        (4096, 4096),
        (2.0, 2),
    ],
)
def test_parse_size_accepts_binary_and_decimal_units(text: object, size: int) -> None:
    assert parse_size(text) == size
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("bad", ["10 parsecs", "1M", "MiB", "-1KiB", "", True, None, {}])
def test_parse_size_rejects_non_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size: use a number of bytes"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["0.5B", "1.0001kB", 1.5])
def test_parse_size_rejects_fractions_of_a_byte(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a whole number of bytes"):
        parse_size(bad)


def test_parse_size_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="-1 is negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    ("text", "host", "port", "back"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[0:0::1]:443", "::1", 443, "[::1]:443"),
        ("[::]:80", "::", 80, "[::]:80"),
        (":8080", "0.0.0.0", 8080, "0.0.0.0:8080"),
        ("Backend-1.Example.com:9000", "backend-1.example.com", 9000, "backend-1.example.com:9000"),
        ("app_server:1", "app_server", 1, "app_server:1"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
    ],
)
def test_parse_address_forms(text: str, host: str, port: int, back: str) -> None:
    address = parse_address(text)
    assert address == HostPort(host, port)
    assert str(address) == back
    assert parse_address(str(address)) == address


def test_host_port_unpacks_like_a_socket_address() -> None:
    host, port = parse_address("10.0.0.1:80")
    assert (host, port) == ("10.0.0.1", 80)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:99999", "port 99999 is out of range"),
        ("127.0.0.1:0", "port 0 is out of range"),
        ("127.0.0.1", '"127.0.0.1" has no port: write host:port'),
        ("127.0.0.1:", '"127.0.0.1:" has no port: write host:port'),
        ("[::1]", '"[::1]" has no port: write host:port'),
    ],
)
def test_parse_address_exact_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_address(text)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("::1:8080", "put an IPv6 address in brackets"),
        ("host:http", "is not a port number"),
        ("[127.0.0.1]:80", "brackets are only for IPv6"),
        ("[::1:80", 'no closing "]"'),
        ("[::1]x80", "is not an address"),
        ("bad host:80", "is not a valid IP address or host name"),
        ("999.1.1.1:80", "is not a valid IP address or host name"),
        ("-leading:80", "is not a valid IP address or host name"),
        (630, "is not an address"),
        (None, "is not an address"),
    ],
)
def test_parse_address_rejects_bad_addresses(bad: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_address(bad)
