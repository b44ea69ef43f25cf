"""Access lists: the most specific entry decides, checked against a brute-force reference
built on the `ipaddress` module (hypothesis generates the lists and the addresses)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portico.security.access import (
    AccessList,
    AccessPolicy,
    EntryError,
    RuntimeEntries,
    RuntimeEntry,
    address_int,
    forwarded_client,
    forwarded_for,
    parse_lines,
    parse_network,
    x_forwarded_for,
)


def nets(*texts: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [parse_network(t) for t in texts]


def test_most_specific_entry_decides() -> None:
    access = AccessList(allow=nets("10.1.0.0/16"), deny=nets("10.0.0.0/8", "10.1.2.3"))
    assert not access.allows("10.1.2.3")  # the /32 deny inside the allowed /16
    assert access.allows("10.1.2.4")
    assert not access.allows("10.200.0.1")
    assert access.allows("192.0.2.1")  # no entry: the default


def test_same_network_in_both_lists_denies() -> None:
    access = AccessList(allow=nets("192.0.2.0/24"), deny=nets("192.0.2.0/24"))
    assert not access.allows("192.0.2.9")


def test_default_deny_and_ipv6() -> None:
    access = AccessList(allow=nets("2001:db8::/32"), default="deny")
    assert access.allows("2001:db8::1")
    assert not access.allows("2001:db9::1")
    assert not access.allows("192.0.2.1")


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    access = AccessList(deny=nets("203.0.113.0/24"))
    assert not access.allows("::ffff:203.0.113.7")
    assert parse_network("::ffff:203.0.113.0/120") == ipaddress.ip_network("203.0.113.0/24")


def test_not_an_address_gets_the_default() -> None:
    access = AccessList(deny=nets("0.0.0.0/0", "::/0"), default="allow")
    assert access.match("127.1") is None  # inet_aton would read 127.0.0.1: refused
    assert access.match("unknown") is None


def test_file_entries_with_comments() -> None:
    text = "# blocked\n203.0.113.7\n\n198.51.100.0/24   # a whole net\n2001:db8::/48\n"
    assert [str(n) for n in parse_lines(text)] == [
        "203.0.113.7/32",
        "198.51.100.0/24",
        "2001:db8::/48",
    ]
    with pytest.raises(EntryError, match=r"list\.txt:2: 'nope'"):
        parse_lines("10.0.0.1\nnope\n", "list.txt")


def test_runtime_entries_win_and_expire() -> None:
    runtime = RuntimeEntries()
    policy = AccessPolicy("web", AccessList(allow=nets("10.0.0.0/8"), default="deny"), runtime)
    assert policy.allows("10.0.0.5", now=0.0)
    runtime.add(RuntimeEntry("10.0.0.5/32", "deny", "*", expires=100.0))
    assert not policy.allows("10.0.0.5", now=50.0)
    assert policy.allows("10.0.0.5", now=100.0)  # lapsed
    runtime.add(RuntimeEntry("192.0.2.1/32", "allow", "other"))
    assert not policy.allows("192.0.2.1", now=0.0)  # another listener's entry
    runtime.add(RuntimeEntry("192.0.2.1/32", "allow", "web"))
    assert policy.allows("192.0.2.1", now=0.0)
    assert runtime.remove("web", "192.0.2.1/32")
    assert not policy.allows("192.0.2.1", now=0.0)


def test_json_round_trip() -> None:
    entry = RuntimeEntry("2001:db8::/32", "deny", "web", 12.5, "admin")
    assert RuntimeEntry.from_json(entry.to_json()) == entry


# -- the client address behind trusted proxies ---------------------------------------------------

TRUSTED = AccessList(allow=nets("10.0.0.0/8"))


def test_right_most_untrusted_address_is_the_client() -> None:
    chain = x_forwarded_for([b"6.6.6.6, 198.51.100.7", b"10.0.0.2"])
    assert chain == ["6.6.6.6", "198.51.100.7", "10.0.0.2"]
    # the spoofed left-most entry is never taken
    assert forwarded_client("10.0.0.1", chain, TRUSTED) == "198.51.100.7"


def test_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert forwarded_client("198.51.100.1", ["10.0.0.9"], TRUSTED) == "198.51.100.1"


def test_garbage_in_the_chain_stops_the_walk() -> None:
    assert forwarded_client("10.0.0.1", ["1.2.3.4", "junk"], TRUSTED) == "10.0.0.1"
    assert forwarded_client("10.0.0.1", ["10.0.0.3"], TRUSTED) == "10.0.0.3"  # all trusted


def test_forwarded_header_nodes() -> None:
    values = [b'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"', b"for=unknown"]
    assert forwarded_for(values) == ["192.0.2.60", "2001:db8::1", "unknown"]
    assert forwarded_client("10.0.0.1", forwarded_for(values), TRUSTED) == "10.0.0.1"


# -- properties ---------------------------------------------------------------------------------

v4_networks = st.builds(
    lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
networks = st.one_of(v4_networks, v6_networks)


def reference(allow: list, deny: list, default: str, ip: str) -> bool:  # type: ignore[type-arg]
    """Longest prefix by brute force; a tie denies."""
    address = ipaddress.ip_address(ip)
    best: tuple[int, int] | None = None  # (prefix length, 1 for deny)
    for rank, group in ((0, allow), (1, deny)):
        for network in group:
            if network.version == address.version and address in network:
                candidate = (network.prefixlen, rank)
                if best is None or candidate > best:
                    best = candidate
    if best is None:
        return default == "allow"
    return best[1] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(networks, max_size=12),
    st.lists(networks, max_size=12),
    st.sampled_from(["allow", "deny"]),
    st.lists(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1)), max_size=10),
)
def test_lookup_agrees_with_ipaddress(allow, deny, default, values) -> None:  # type: ignore[no-untyped-def]
    access = AccessList(allow, deny, default)
    probes = [str(ipaddress.ip_address(v)) for v in values]
    # and the edges of every network, where an interval sweep goes wrong first
    for network in [*allow, *deny]:
        probes.append(str(network.network_address))
        probes.append(str(network.broadcast_address))
        top = 2**network.max_prefixlen - 1
        after = int(network.broadcast_address) + 1
        before = int(network.network_address) - 1
        for value in (before, after):
            if 0 <= value <= top:
                cls = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
                probes.append(str(cls(value)))
    for ip in probes:
        if ip.startswith("::ffff:"):
            continue  # mapped addresses are IPv4 by design, not by the reference
        assert access.allows(ip) == reference(allow, deny, default, ip), ip


@given(st.text(max_size=60))
def test_any_text_is_an_address_or_refused(text: str) -> None:
    parsed = address_int(text)
    try:
        reference_value = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        reference_value = None
    if parsed is None:
        assert reference_value is None or "%" in text
    else:
        assert reference_value is not None
        if reference_value.version == 6 and reference_value.ipv4_mapped is not None:
            assert parsed == (4, int(reference_value.ipv4_mapped))
        else:
            assert parsed == (reference_value.version, int(reference_value))


@given(st.text(max_size=80))
def test_entries_parse_or_raise_entry_error(text: str) -> None:
    try:
        network = parse_network(text)
    except EntryError:
        return
    assert network.version in (4, 6)


@given(st.lists(st.binary(max_size=40), max_size=4))
def test_forwarding_headers_never_raise(values: list[bytes]) -> None:
    chain = x_forwarded_for(values) + forwarded_for(values)
    forwarded_client("10.0.0.1", chain, TRUSTED)
