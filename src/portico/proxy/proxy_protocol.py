"""The PROXY protocol, versions 1 (text) and 2 (binary): the header a load balancer puts in
front of a TCP stream to say who the real client is. *pure*

Owns: encoding a header for TCP over IPv4/IPv6 (`encode_v1`, `encode_v2`, `encode`) and an
incremental, strict parser of either version (`parse`), as specified by HAProxy's
doc/proxy-protocol.txt. Any byte sequence that does not match the spec exactly is malformed,
and the caller closes the connection: the spec forbids guessing. Never touches sockets and
never decides whom to trust (the listener does).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

Address = tuple[str, int]
"""An (ip, port) pair, as socket.getpeername() gives it for IPv4 (and the first two items of
IPv6's)."""

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # "PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\r\n", the spec's worst case
V2_FIXED: Final = 16  # signature, version/command, family/protocol, length

# version 2: version/command and family/protocol bytes
_V2_PROXY: Final = 0x21  # version 2, command PROXY
_V2_LOCAL: Final = 0x20  # version 2, command LOCAL
_TCP4: Final = 0x11
_TCP6: Final = 0x21
_V2_ADDRESS_SIZES: Final = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}

_HEX: Final = frozenset(b"0123456789abcdefABCDEF:.")


class ParseState(Enum):
    NEED_MORE = "need more bytes"
    MALFORMED = "malformed"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What `parse` found at the start of a buffer.

    COMPLETE: the header is `length` bytes long (what follows is the client's own data).
    `source`/`destination` are the original connection's endpoints, or both None when the
    header carries none to use (v2 LOCAL, v1 UNKNOWN, v2 families other than TCP over IP):
    the receiver then uses the real connection's addresses. MALFORMED: `reason` says why.
    """

    state: ParseState
    length: int = 0
    source: Address | None = None
    destination: Address | None = None
    version: int = 0
    reason: str = ""

    @property
    def is_local(self) -> bool:
        """A complete header that names no addresses (use the connection's own)."""
        return self.state is ParseState.COMPLETE and self.source is None


NEED_MORE: Final = ParseResult(ParseState.NEED_MORE)


def _malformed(reason: str) -> ParseResult:
    return ParseResult(ParseState.MALFORMED, reason=reason)


# -- encoding ---------------------------------------------------------------------------------


def _family(src: Address, dst: Address) -> int:
    """4 or 6; ValueError if the two addresses are not of one family."""
    source = ipaddress.ip_address(src[0])
    destination = ipaddress.ip_address(dst[0])
    if source.version != destination.version:
        raise ValueError(f"source {src[0]} and destination {dst[0]} are of different families")
    for port in (src[1], dst[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    return source.version


def encode_v1(src: Address | None, dst: Address | None) -> bytes:
    """The text header for a TCP connection from `src` to `dst`; with no addresses (None),
    ``PROXY UNKNOWN``. ValueError when the addresses are of different families."""
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    family = _family(src, dst)
    line = f"PROXY TCP{family} {_text(src[0])} {_text(dst[0])} {src[1]} {dst[1]}\r\n"
    return line.encode("ascii")


def _text(ip: str) -> str:
    """The spec's canonical text: dotted decimal without leading zeroes for IPv4; for IPv6 only
    hex groups (never an embedded dotted IPv4, which newer Pythons print for ::ffff:a.b.c.d),
    the longest run of two or more zero groups written as "::"."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return str(address)
    groups = [f"{group:x}" for group in struct.unpack("!8H", address.packed)]
    best, best_len, run_start = -1, 1, -1
    for i, group in enumerate([*groups, "end"]):
        if group == "0":
            if run_start < 0:
                run_start = i
        elif run_start >= 0:
            if i - run_start > best_len:
                best, best_len = run_start, i - run_start
            run_start = -1
    if best < 0:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + best_len :])


def encode_v2(src: Address | None, dst: Address | None) -> bytes:
    """The binary header (command PROXY, TCP over IPv4/IPv6, no TLVs) for a connection from
    `src` to `dst`; with no addresses (None), family UNSPEC. ValueError when the addresses are of
    different families."""
    if src is None or dst is None:
        return V2_SIGNATURE + bytes((_V2_PROXY, 0x00, 0, 0))
    family = _family(src, dst)
    source = ipaddress.ip_address(src[0]).packed
    destination = ipaddress.ip_address(dst[0]).packed
    fam = _TCP4 if family == 4 else _TCP6
    body = source + destination + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, fam, len(body)) + body


def encode_v2_local() -> bytes:
    """A v2 LOCAL header: a connection the proxy made on its own behalf (a health check)."""
    return V2_SIGNATURE + bytes((_V2_LOCAL, 0x00, 0, 0))


def encode(version: str, src: Address | None, dst: Address | None) -> bytes:
    """The header of `version` ("v1" or "v2"). Addresses of different families (a client seen
    over IPv6 relayed to an IPv4 destination, say) cannot be written: they go as UNKNOWN
    (v1) / UNSPEC (v2), which tells the server to use the connection's own addresses."""
    encoder = encode_v1 if version == "v1" else encode_v2
    try:
        return encoder(src, dst)
    except ValueError:
        return encoder(None, None)


# -- parsing ----------------------------------------------------------------------------------


def is_header(buffer: bytes) -> bool | None:
    """Whether `buffer` starts like a PROXY header (either version): None while too short to
    tell (it is a proper prefix of a signature)."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(buffer), len(signature))
        if buffer[:n] == signature[:n]:
            return True if n == len(signature) else None
    return False


def parse(buffer: bytes) -> ParseResult:
    """Parse the PROXY header (v1 or v2) at the start of `buffer`, which holds every byte
    received so far. NEED_MORE until the header is complete; MALFORMED as soon as the bytes
    cannot be the start of a valid header."""
    if buffer[:1] == b"P":
        return _parse_v1(buffer)
    if buffer[:1] == b"\r":
        return _parse_v2(buffer)
    if not buffer:
        return NEED_MORE
    return _malformed("not a PROXY protocol header")


def _parse_v1(buffer: bytes) -> ParseResult:
    n = min(len(buffer), len(V1_PREFIX))
    if buffer[:n] != V1_PREFIX[:n]:
        return _malformed("not a PROXY protocol header")
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        lf = buffer.find(b"\n", 0, V1_MAX)
        if lf >= 0:
            return _malformed("v1 line ends without CRLF")
        if len(buffer) >= V1_MAX:
            return _malformed(f"v1 line longer than {V1_MAX} bytes")
        cr = buffer.find(b"\r")
        if 0 <= cr < len(buffer) - 1:
            return _malformed("v1 line has a CR without LF")
        return NEED_MORE
    line = buffer[:end]
    length = end + 2
    if b"\n" in line or b"\r" in line:
        return _malformed("v1 line has a stray CR or LF")
    parts = line.split(b" ")
    if len(parts) < 2:
        return _malformed("v1 line has no protocol")
    protocol = parts[1]
    if protocol == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return ParseResult(ParseState.COMPLETE, length, version=1)
    if protocol not in (b"TCP4", b"TCP6"):
        return _malformed(f"v1 protocol {protocol!r} is not TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        return _malformed("v1 line is not: PROXY TCPx source destination sport dport")
    family = 4 if protocol == b"TCP4" else 6
    source = _v1_address(parts[2], family)
    destination = _v1_address(parts[3], family)
    sport = _v1_port(parts[4])
    dport = _v1_port(parts[5])
    if source is None or destination is None:
        return _malformed(f"v1 address is not a canonical IPv{family} address")
    if sport is None or dport is None:
        return _malformed("v1 port is not a number from 0 to 65535 without leading zeroes")
    return ParseResult(ParseState.COMPLETE, length, (source, sport), (destination, dport), 1)


def _v1_address(raw: bytes, family: int) -> str | None:
    if not raw or not set(raw) <= _HEX:
        return None  # also rejects IPv6 scope ids ("%eth0") and any other character
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        return None  # includes IPv4 numbers with leading zeroes
    if address.version != family:
        return None
    return str(address)


def _v1_port(raw: bytes) -> int | None:
    if not raw.isdigit() or len(raw) > 5 or (raw[:1] == b"0" and len(raw) > 1):
        return None
    port = int(raw)
    return port if port <= 65535 else None


def _parse_v2(buffer: bytes) -> ParseResult:
    n = min(len(buffer), len(V2_SIGNATURE))
    if buffer[:n] != V2_SIGNATURE[:n]:
        return _malformed("not a PROXY protocol header")
    if len(buffer) < V2_FIXED:
        if len(buffer) > 12 and buffer[12] >> 4 != 2:
            return _malformed(f"v2 version {buffer[12] >> 4} is not 2")
        return NEED_MORE
    ver_cmd, fam, size = struct.unpack_from("!BBH", buffer, 12)
    if ver_cmd >> 4 != 2:
        return _malformed(f"v2 version {ver_cmd >> 4} is not 2")
    command = ver_cmd & 0x0F
    if command > 1:
        return _malformed(f"v2 command {command} is neither LOCAL nor PROXY")
    length = V2_FIXED + size
    if command == 0:
        # LOCAL: "discard the protocol block including the family which is ignored"
        if len(buffer) < length:
            return NEED_MORE
        return ParseResult(ParseState.COMPLETE, length, version=2)
    if fam >> 4 > 3 or fam & 0x0F > 2:
        return _malformed(f"v2 family/protocol byte {fam:#04x} is not valid")
    needed = _V2_ADDRESS_SIZES.get(fam, 0)
    if size < needed:
        return _malformed(f"v2 address block of {size} bytes is short for {fam:#04x}")
    if len(buffer) < length:
        return NEED_MORE
    # TLVs after the addresses (if any) are skipped: the length says where the header ends
    if fam == _TCP4:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", buffer, V2_FIXED)
    elif fam == _TCP6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", buffer, V2_FIXED)
    else:
        # UDP, UNIX or UNSPEC: no TCP endpoints to report; use the connection's own
        return ParseResult(ParseState.COMPLETE, length, version=2)
    source = str(ipaddress.ip_address(src))
    destination = str(ipaddress.ip_address(dst))
    return ParseResult(ParseState.COMPLETE, length, (source, sport), (destination, dport), 2)
