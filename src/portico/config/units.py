"""Human units in the config file: durations, sizes, rates and listen/connect addresses.

This module owns the text forms an operator writes (``2s``, ``64KiB``, ``100/s``,
``[::1]:8080``), the parsing of them into plain numbers and a `HostPort`, the error messages
for bad ones, and the pydantic annotated types (`Duration`, `Size`, `Address`) that the
schema uses for its fields.
It is *pure*: it never reads files, resolves host names or touches sockets.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, NamedTuple

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "Address",
    "Duration",
    "DurationOrZero",
    "HostPort",
    "Size",
    "parse_address",
    "parse_duration",
    "parse_rate",
    "parse_size",
]


def show(value: object) -> str:
    """Quote a value the way the operator wrote it: strings in double quotes, others as YAML."""
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Durations

_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# One number with an optional unit ("1.5s", "30"), or Go-style parts with units ("1m30s").
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(us|µs|μs|ms|s|m|h)?", re.IGNORECASE)
_DURATION_PARTS = re.compile(rf"(?:{_NUMBER}(?:us|µs|μs|ms|s|m|h))+", re.IGNORECASE)
_DURATION_HINT = "use a number with ms, s, m or h"


def parse_duration(value: object) -> float:
    """Return `value` in seconds: ``"2s"``, ``"500ms"``, ``"1m"``, ``"1h"``, ``"250us"``,
    ``"1m30s"``, or a plain number of seconds.

    Raises ValueError, naming the value, for anything else (negative, infinite, not a number).
    Zero is allowed here; the `Duration` type is the one that insists on more than zero.
    """
    if isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a duration: {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"{show(value)} is not a duration: {_DURATION_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"{show(value)} is not a duration: {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"{show(value)} is negative: a duration must be 0 or more")
    return seconds


def _parse_duration_text(value: str) -> float:
    text = value.strip()
    single = _DURATION_PART.fullmatch(text)
    if single is not None:
        number, unit = single.groups()
        return float(number) * _DURATION_UNITS[unit.lower()] if unit else float(number)
    if _DURATION_PARTS.fullmatch(text):
        return sum(
            float(number) * _DURATION_UNITS[unit.lower()]
            for number, unit in _DURATION_PART.findall(text)
        )
    raise ValueError(f"{show(value)} is not a duration: {_DURATION_HINT}")


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, not {show(value)} (for example 500ms or 2s)")
    return seconds


# ---------------------------------------------------------------------------------------------
# Sizes

# Binary units are powers of 1024 (KiB, MiB, GiB), decimal ones powers of 1000 (kB, MB, GB).
# Matching is case-insensitive so "kb" and "KB" mean kB: the "i" is what makes a unit binary.
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")
_SIZE_HINT = "use a number of bytes, or a number with B, kB, MB, GB, KiB, MiB or GiB"


def parse_size(value: object) -> int:
    """Return `value` in bytes: ``"1MiB"``, ``"64KiB"``, ``"10MB"``, ``"1kB"``, ``"512"``,
    ``"512B"``, ``"1.5KiB"`` or a plain whole number of bytes.

    Raises ValueError, naming the value, for negative sizes, unknown units, and fractions
    that do not come to a whole number of bytes.
    """
    if isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a size: {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative: a size must be 0 or more")
        return value
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise ValueError(f"{show(value)} is not a whole number of bytes: {_SIZE_HINT}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a size: {_SIZE_HINT}")
    match = _SIZE.fullmatch(value.strip())
    if match is None or match.group(2).lower() not in {"", *_SIZE_UNITS}:
        raise ValueError(f"{show(value)} is not a size: {_SIZE_HINT}")
    number, unit = match.groups()
    try:
        # Decimal, not float: "0.1MB" must come to exactly 100000 bytes.
        size = Decimal(number) * _SIZE_UNITS[unit.lower() or "b"]
    except InvalidOperation:  # pragma: no cover - the regex only lets decimal numbers through
        raise ValueError(f"{show(value)} is not a size: {_SIZE_HINT}") from None
    if size != size.to_integral_value():
        raise ValueError(f"{show(value)} is not a whole number of bytes: {_SIZE_HINT}")
    return int(size)


# ---------------------------------------------------------------------------------------------
# Rates

_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:/\s*([smh]))?", re.IGNORECASE)
_RATE_HINT = "write a number per s, m or h, e.g. 100/s"


def parse_rate(text: str) -> float:
    """Requests per second for ``"100/s"``, ``"10/m"``, ``"5000/h"``, ``"2.5/s"`` or
    ``"100"`` (per second).

    Raises ValueError naming the text for anything else, including a rate of zero (that is
    not a limit but a block) and numbers too large to be finite.
    """
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f'"{text}" is not a rate: {_RATE_HINT}')
    number, unit = match.groups()
    rate = float(number) / (_RATE_UNITS[unit.lower()] if unit else 1.0)
    if not math.isfinite(rate):
        raise ValueError(f'"{text}" is too large a rate: {_RATE_HINT}')
    if rate <= 0:
        raise ValueError(f'"{text}" is not a rate: it must be more than 0, e.g. 100/s')
    return rate


# ---------------------------------------------------------------------------------------------
# Addresses


class HostPort(NamedTuple):
    """A host and a TCP port, as written in ``bind:`` and ``address:``.

    `host` is an IP address in its canonical form (IPv6 compressed, without brackets) or a
    lower-case host name; ``:8080`` becomes host ``0.0.0.0``. `str()` gives back ``host:port``,
    with brackets around IPv6 hosts, so it can be parsed again.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_ADDRESS_HINT = "write host:port, for example 127.0.0.1:8080 or [::1]:8080"


def parse_bind_address(value: object) -> HostPort:
    """Like `parse_address`, and port 0 means "any free port" (the kernel picks; tests use it)."""
    return parse_address(value, allow_any_port=True)


def parse_address(value: object, *, allow_any_port: bool = False) -> HostPort:
    """Parse ``host:port``, ``[IPv6]:port`` or ``:port`` (all IPv4 interfaces) into a HostPort.

    The port must be 1..65535 (or 0 with `allow_any_port`). Host names are checked for shape
    only, never resolved.
    Raises ValueError with a message that names the problem and the expected form.
    """
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        # YAML 1.1 reads 10:30 as the number 630, hence the hint to quote.
        raise ValueError(f"{show(value)} is not an address: {_ADDRESS_HINT} (quoted if need be)")
    text = value.strip()
    bracketed = text.startswith("[")
    if bracketed:
        end = text.find("]")
        if end < 0:
            raise ValueError(f'{show(value)} has no closing "]": {_ADDRESS_HINT}')
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            raise ValueError(f"{show(value)} has no port: write host:port")
        if not rest.startswith(":"):
            raise ValueError(f"{show(value)} is not an address: {_ADDRESS_HINT}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{show(value)} has no port: write host:port")
        if ":" in host:
            raise ValueError(
                f"{show(value)} is ambiguous: put an IPv6 address in brackets, "
                "for example [::1]:8080"
            )
        if not host:
            host = "0.0.0.0"
    if not port_text:
        raise ValueError(f"{show(value)} has no port: write host:port")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(
            f"{show(port_text)} in {show(value)} is not a port number: use a number from 1 to 65535"
        )
    port = int(port_text)
    if not (0 if allow_any_port else 1) <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return HostPort(_check_host(host, bracketed, value), port)


def _check_host(host: str, bracketed: bool, value: str) -> str:
    """Return `host` in canonical form, or raise ValueError if it is no IP and no host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if bracketed:
        if not isinstance(ip, ipaddress.IPv6Address):
            raise ValueError(
                f"{show(value)}: brackets are only for IPv6 addresses, and {show(host)} is not one"
            )
        return str(ip)
    if ip is not None:
        return str(ip)
    # A name made only of digits and dots is a mistyped IPv4 address, not a host name.
    if not _HOST_NAME.fullmatch(host) or host.rstrip(".").replace(".", "").isdigit():
        raise ValueError(f"{show(host)} in {show(value)} is not a valid IP address or host name")
    return host.lower()


# ---------------------------------------------------------------------------------------------
# Annotated types for the schema

Duration = Annotated[float, BeforeValidator(_positive_duration)]
"""Seconds, more than 0, written as ``2s``, ``500ms``, ``1m``, ``1h`` or a number of seconds."""

DurationOrZero = Annotated[float, BeforeValidator(parse_duration)]
"""Like `Duration`, for fields where 0 has a meaning (such as "do not wait")."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, 0 or more, written as ``64KiB``, ``1MiB``, ``10MB``, ``1kB`` or a number of bytes."""

Address = Annotated[
    HostPort,
    BeforeValidator(parse_address),
    PlainSerializer(str, return_type=str),
]
"""``host:port`` text parsed into a HostPort; serialized back to the same text."""

BindAddress = Annotated[
    HostPort,
    BeforeValidator(parse_bind_address),
    PlainSerializer(str, return_type=str),
]
"""An `Address` to listen on, where port 0 lets the kernel choose a free port."""
