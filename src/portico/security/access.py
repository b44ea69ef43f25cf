"""IP access lists: which client addresses a listener or route lets in.

Owns the entry syntax (addresses and CIDRs, IPv4 and IPv6, files of one entry a line with
``#`` comments), `AccessList` (the lookup: the most specific matching network decides, a tie
goes to deny, no match takes the default) and `RuntimeEntries` (entries added at run time
through the admin API, each with an optional expiry on the wall clock, so that every worker and
instance agrees when one lapses). *Pure*: nothing here touches a socket or reads a clock; the
caller passes ``now``. Reading a file is the one I/O, done when a worker builds its settings.

Technique: the networks are flattened once into sorted, disjoint integer intervals (a sweep over
the networks ordered by start, outermost first, with a stack: CIDR blocks either nest or do not
overlap), adjacent intervals with the same action merged; a lookup is one `bisect` over a list
of ints (C code) and one comparison. 100,000 entries cost about the same per lookup as ten
(bench/access.py).
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["allow", "deny"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_BITS: Final = 32
_V6_BITS: Final = 128
_DENY_RANK: Final = {"allow": 0, "deny": 1}  # on the same network, deny is innermost: it wins


class EntryError(ValueError):
    """An access-list entry that is not an address or network (with the line, from a file)."""


def parse_network(text: str) -> Network:
    """One entry: an address (a /32 or /128) or a CIDR; host bits are ignored
    (``10.1.2.3/8`` is ``10.0.0.0/8``); an IPv4-mapped IPv6 network is its IPv4 one."""
    text = text.strip()
    address, slash, prefix = text.partition("/")
    if ":" not in text and "%" not in text and (not slash or prefix.isdigit()):
        # the common case of a block list, three times faster than `ip_network`'s parser
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
            bits = int(prefix) if slash else _V4_BITS
            if bits <= _V4_BITS and (not slash or prefix == str(bits)):
                return ipaddress.IPv4Network((value, bits), strict=False)
        except (OSError, ValueError):
            pass  # ip_network says what is wrong
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise EntryError(
            f"{text!r} is not an IP address or network: write e.g. 203.0.113.7, "
            "10.0.0.0/8 or 2001:db8::/32"
        ) from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_lines(text: str, source: str = "") -> list[Network]:
    """The entries of a file's text: one a line; blank lines and ``#`` comments (whole-line or
    after an entry) are skipped. Raises EntryError naming `source` and the line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        try:
            out.append(parse_network(entry))
        except EntryError as exc:
            raise EntryError(f"{source}:{number}: {exc}" if source else str(exc)) from None
    return out


def read_file(path: str) -> list[Network]:
    """`parse_lines` of a file (OSError and EntryError say which file)."""
    with open(path, encoding="utf-8") as file:
        return parse_lines(file.read(), path)


def address_int(ip: str) -> tuple[int, int] | None:
    """(version, integer) of an address as a socket or a header gives it; an IPv4-mapped IPv6
    address counts as IPv4, an IPv6 zone (``%eth0``) is dropped. None when it is not an
    address: `inet_pton` is strict (``127.1`` and ``0x7f.1`` are refused, as by `ipaddress`)."""
    if ":" not in ip:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
        except (OSError, ValueError):  # ValueError: a NUL or a surrogate (found by hypothesis)
            return None
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip.partition("%")[0]), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
        return 4, value & 0xFFFFFFFF
    return 6, value


class _Intervals:
    """Sorted disjoint [start, end] intervals of one address family, each with an action."""

    __slots__ = ("actions", "ends", "starts")

    def __init__(self, items: Iterable[tuple[int, int, Action]]) -> None:
        # outermost first at each start; on the same network, deny after allow (innermost)
        ordered = sorted(items, key=lambda item: (item[0], -item[1], _DENY_RANK[item[2]]))
        segments: list[tuple[int, int, Action]] = []

        def emit(start: int, end: int, action: Action) -> None:
            if start > end:
                return
            if segments and segments[-1][2] == action and segments[-1][1] + 1 == start:
                segments[-1] = (segments[-1][0], end, action)
            else:
                segments.append((start, end, action))

        stack: list[tuple[int, Action]] = []  # (end, action) of the networks open at `pos`
        pos = 0
        for start, end, action in ordered:
            while stack and stack[-1][0] < start:
                top_end, top_action = stack.pop()
                emit(pos, top_end, top_action)
                pos = top_end + 1
            if stack:
                emit(pos, start - 1, stack[-1][1])
            pos = start
            stack.append((end, action))
        while stack:
            top_end, top_action = stack.pop()
            emit(pos, top_end, top_action)
            pos = top_end + 1
        self.starts = [s for s, _, _ in segments]
        self.ends = [e for _, e, _ in segments]
        self.actions = [a for _, _, a in segments]

    def find(self, value: int) -> Action | None:
        i = bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i]:
            return self.actions[i]
        return None

    def __len__(self) -> int:
        return len(self.starts)


def _interval(network: Network) -> tuple[int, int]:
    start = int(network.network_address)
    return start, start + (1 << (network.max_prefixlen - network.prefixlen)) - 1


class AccessList:
    """Allow and deny networks with a default: the most specific network holding the address
    decides (``deny 10.0.0.0/8`` with ``allow 10.1.0.0/16`` lets 10.1.2.3 in); the same network
    in both lists denies; an address in neither gets `default`, and so does a string that is
    not an address at all (there is nothing else to go on)."""

    __slots__ = ("_v4", "_v6", "default", "size")

    def __init__(
        self,
        allow: Iterable[Network] = (),
        deny: Iterable[Network] = (),
        default: Action = "allow",
    ) -> None:
        v4: list[tuple[int, int, Action]] = []
        v6: list[tuple[int, int, Action]] = []
        size = 0
        for action, networks in (("allow", allow), ("deny", deny)):
            for network in networks:
                start, end = _interval(network)
                (v4 if network.version == 4 else v6).append((start, end, action))  # type: ignore[arg-type]
                size += 1
        self._v4 = _Intervals(v4)
        self._v6 = _Intervals(v6)
        self.default: Action = default
        self.size = size  # entries given (before merging)

    def match(self, ip: str) -> Action | None:
        """The action of the most specific network holding `ip`, or None (no entry holds it,
        or it is not an address)."""
        parsed = address_int(ip)
        if parsed is None:
            return None
        version, value = parsed
        return (self._v4 if version == 4 else self._v6).find(value)

    def allows(self, ip: str) -> bool:
        """Whether `ip` may pass: its most specific entry's action, else the default."""
        action = self.match(ip)
        return (action if action is not None else self.default) == "allow"

    def is_empty(self) -> bool:
        return not self._v4 and not self._v6


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """An entry added through the admin API (or by an abuse ban): `scope` is a listener
    name or "*" (every listener); `expires` a wall-clock time, or None (until removed)."""

    network: str  # canonical text, e.g. "203.0.113.7/32"
    action: Action
    scope: str = "*"
    expires: float | None = None
    reason: str = ""  # "admin", or the ban rule that added it

    def key(self) -> tuple[str, str]:
        return self.scope, self.network

    def has_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def to_json(self) -> dict[str, object]:
        return {
            "network": self.network,
            "action": self.action,
            "scope": self.scope,
            "expires": self.expires,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RuntimeEntry:
        network = str(parse_network(str(data["network"])))
        action = data["action"]
        if action not in ("allow", "deny"):
            raise EntryError(f"action must be allow or deny, not {action!r}")
        expires = data.get("expires")
        return cls(
            network,
            action,
            str(data.get("scope") or "*"),
            float(expires) if isinstance(expires, int | float) else None,
            str(data.get("reason") or ""),
        )


class RuntimeEntries:
    """The run-time entries of one worker (or supervisor): added, removed, lapsing at their
    expiry. Per scope, they are compiled into an `AccessList` without a default, rebuilt only
    when the set changes or the next expiry passes, so a lookup stays a bisect. A run-time
    entry is consulted before the config's lists: it can deny what they allow and allow what
    they deny."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], RuntimeEntry] = {}
        self._lists: dict[str, AccessList] = {}
        self._next_expiry = float("inf")
        self.version = 0  # bumped on every change: holders of compiled lists notice

    def add(self, entry: RuntimeEntry) -> None:
        self.entries[entry.key()] = entry
        self._changed()

    def remove(self, scope: str, network: str) -> bool:
        removed = self.entries.pop((scope, network), None) is not None
        if removed:
            self._changed()
        return removed

    def replace(self, entries: Iterable[RuntimeEntry]) -> None:
        self.entries = {entry.key(): entry for entry in entries}
        self._changed()

    def live(self, now: float) -> list[RuntimeEntry]:
        self.expire(now)
        return sorted(self.entries.values(), key=lambda e: (e.scope, e.network))

    def expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        for key in [k for k, e in self.entries.items() if e.has_expired(now)]:
            del self.entries[key]
        self._changed()

    def match(self, scope: str, ip: str, now: float) -> Action | None:
        """The action of the run-time entries for `ip` on listener `scope` (its own and the
        "*" ones, as one list: the most specific network decides, deny wins a tie), or None."""
        if not self.entries:
            return None
        if now >= self._next_expiry:
            self.expire(now)
        compiled = self._lists.get(scope)
        if compiled is None:
            compiled = self._compile(scope)
        return compiled.match(ip)

    def _compile(self, scope: str) -> AccessList:
        allow: list[Network] = []
        deny: list[Network] = []
        for entry in self.entries.values():
            if entry.scope in (scope, "*"):
                network = parse_network(entry.network)
                (allow if entry.action == "allow" else deny).append(network)
        compiled = self._lists[scope] = AccessList(allow, deny)
        return compiled

    def _changed(self) -> None:
        self._lists = {}
        self._next_expiry = min(
            (e.expires for e in self.entries.values() if e.expires is not None),
            default=float("inf"),
        )
        self.version += 1


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """What one listener or route checks: its run-time scope, its config list (None: none) and
    whether run-time entries apply (listeners: yes; routes: their config list only)."""

    scope: str
    configured: AccessList | None
    runtime: RuntimeEntries | None

    def allows(self, ip: str, now: float) -> bool:
        runtime = self.runtime
        if runtime is not None and runtime.entries:
            action = runtime.match(self.scope, ip, now)
            if action is not None:
                return action == "allow"
        configured = self.configured
        return configured is None or configured.allows(ip)


def forwarded_client(
    peer: str,
    chain: Iterable[str],
    is_trusted: AccessList,
) -> str:
    """The client address behind trusted proxies: `peer` if it is not trusted; else the
    right-most address of the forwarding `chain` (X-Forwarded-For order: client first) that is
    not trusted. Never the left-most: anyone may put anything there. An entry that is not an
    address stops the walk there (it was written by someone untrusted) and the last trusted
    hop's address is the answer; a chain wholly trusted gives its left-most entry."""
    if is_trusted.match(peer) != "allow":
        return peer
    current = peer
    for hop in reversed(list(chain)):
        if address_int(hop) is None:
            return current
        current = hop
        if is_trusted.match(hop) != "allow":
            return hop
    return current


def x_forwarded_for(values: Iterable[bytes]) -> list[str]:
    """The addresses of X-Forwarded-For fields, in order (several fields are one list)."""
    out = []
    for value in values:
        for part in value.split(b","):
            item = part.strip().decode("latin-1")
            if item:
                out.append(_strip_port(item))
    return out


def forwarded_for(values: Iterable[bytes]) -> list[str]:
    """The ``for=`` addresses of RFC 7239 Forwarded fields, in order; an element without one,
    or with an obfuscated or ``unknown`` node, gives "" (not an address: it stops the walk)."""
    out = []
    for value in values:
        for element in value.split(b","):
            found = ""
            for pair in element.split(b";"):
                name, _, node = pair.strip().partition(b"=")
                if name.strip().lower() == b"for":
                    found = _strip_port(node.strip().strip(b'"').decode("latin-1"))
            out.append(found)
    return out


def _strip_port(node: str) -> str:
    """``[2001:db8::1]:443`` → ``2001:db8::1``; ``192.0.2.1:80`` → ``192.0.2.1``."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node
