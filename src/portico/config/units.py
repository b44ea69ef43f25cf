"""Human units in the config file: durations, sizes, rates, listen/connect addresses and names.

This module owns the text forms an operator writes (``2s``, ``64KiB``, ``100/s``,
``[::1]:8080``), the parsing of them into plain numbers and a `HostPort`, the error messages
for bad ones, the rule for the names of listeners, pools, routes and servers (the admin API
takes names by the same rule), and the pydantic annotated types (`Duration`, `Size`,
`Address`, `Name`, `ServerName`) that the schema uses for its fields.
It is *pure*: it never reads files, resolves host names or touches sockets.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final, NamedTuple

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = [
    "SERVER_NAME_SCHEMA",
    "Address",
    "Duration",
    "DurationOrZero",
    "HostPort",
    "Name",
    "ServerName",
    "Size",
    "check_name",
    "check_server_name",
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
# Names

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_RULE = 'use only letters, digits, "_", "." and "-"'
_ADDRESS_CHARS = re.compile(r"[A-Za-z0-9_.:\[\]-]+")


def check_name(value: str) -> str:
    """A listener, pool or route name: letters, digits, ``_``, ``.`` and ``-``, and not only
    dots (``.`` and ``..`` in an admin API URL are path steps that clients collapse). Names
    end up in URLs, log lines and metric labels: nothing there needs escaping."""
    if not _NAME.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid name: {_NAME_RULE}")
    if not value.strip("."):
        raise ValueError(f"{show(value)} is not a valid name: not only dots")
    return value


def check_server_name(value: str) -> str:
    """A server's name: a name as `check_name` allows, or an address as ``host:port`` (a
    server without a name is named by its address). Used for the config file and for servers
    the admin API adds alike."""
    if not value.strip():
        raise ValueError("must not be empty (leave it out to use the address)")
    if _NAME.fullmatch(value) and value.strip("."):
        return value
    if _ADDRESS_CHARS.fullmatch(value):
        try:
            if str(parse_address(value)) == value:
                return value
        except ValueError:
            pass
    raise ValueError(
        f"{show(value)} is not a valid server name: {_NAME_RULE}, not only dots "
        "(or leave it out to use the address)"
    )


# ---------------------------------------------------------------------------------------------
# Annotated types for the schema

# WithJsonSchema: what an editor checking portico.yaml against `portico schema` should accept
# (the text forms included); the validators above stay the judge.

Name = Annotated[
    str,
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "pattern": r"^(?!\.+$)[A-Za-z0-9_.-]+$"}),
]
"""A listener, pool or route name: letters, digits, ``_``, ``.`` and ``-``."""

SERVER_NAME_SCHEMA: Final = {
    "type": "string",
    "pattern": r"^(?!\.+$)[A-Za-z0-9_.:\[\]-]+$",
    "description": 'A name (letters, digits, "_", "." and "-") or host:port',
}

ServerName = Annotated[str, AfterValidator(check_server_name), WithJsonSchema(SERVER_NAME_SCHEMA)]
"""A server's name: a `Name`, or its address as ``host:port``."""

_DURATION_TEXT = {
    "type": "string",
    "description": "A number with us, ms, s, m or h: 2s, 500ms, 1m30s",
    "examples": ["2s", "500ms"],
}

Duration = Annotated[
    float,
    BeforeValidator(_positive_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _DURATION_TEXT]}),
]
"""Seconds, more than 0, written as ``2s``, ``500ms``, ``1m``, ``1h`` or a number of seconds."""

DurationOrZero = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, _DURATION_TEXT]}),
]
"""Like `Duration`, for fields where 0 has a meaning (such as "do not wait")."""

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {
                    "type": "string",
                    "description": "Bytes with kB, MB, GB (1000s) or KiB, MiB, GiB (1024s)",
                    "examples": ["64KiB", "1MiB"],
                },
            ]
        }
    ),
]
"""Bytes, 0 or more, written as ``64KiB``, ``1MiB``, ``10MB``, ``1kB`` or a number of bytes."""

Address = Annotated[
    HostPort,
    BeforeValidator(parse_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "host:port, [IPv6]:port or :port",
            "examples": ["127.0.0.1:9001", "[::1]:9001"],
        }
    ),
]
"""``host:port`` text parsed into a HostPort; serialized back to the same text."""

BindAddress = Annotated[
    HostPort,
    BeforeValidator(parse_bind_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "host:port, [IPv6]:port or :port (all IPv4 interfaces); port 0: any",
            "examples": ["127.0.0.1:8080", ":8080"],
        }
    ),
]
"""An `Address` to listen on, where port 0 lets the kernel choose a free port."""
