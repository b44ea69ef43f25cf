"""DNS lookups for discovery: dnspython's asyncio resolver, on the configured name servers.

Owns the resolver (`resolver.nameservers` as IP:port, or /etc/resolv.conf's) and the queries:
A and AAAA together for `dns:` entries, SRV and then its targets' addresses for `srv:`
entries, each with the smallest TTL of what it read. Never uses the blocking system resolver
(getaddrinfo) on the event loop, never caches (the TTL schedule in `plan` is the cache), never
decides what a failure means (the caller keeps the last good set).
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from portico.config.schema import DiscoveryConfig, ResolverConfig
from portico.discovery.plan import (
    Found,
    LookupFailed,
    SrvRecord,
    address_servers,
    srv_servers,
)

__all__ = ["Lookup"]


class Lookup:
    """Resolves discovery entries; one per supervisor (and per config)."""

    def __init__(self, config: ResolverConfig) -> None:
        self.timeout = config.timeout
        if config.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(str(a.host), a.port) for a in config.nameservers
            ]
        else:
            resolver = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf, a small file
        resolver.cache = None
        self.resolver = resolver

    async def _records(self, name: str, kind: str) -> tuple[list[object], float | None]:
        """The records of one type, and their TTL; none (and no TTL) when the name or the
        type does not exist. Raises LookupFailed when no server answered."""
        try:
            answer = await self.resolver.resolve(
                name, kind, lifetime=self.timeout, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise LookupFailed(f"{kind} {name}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{kind} {name}: {exc}") from None
        if answer.rrset is None:
            return [], None
        return list(answer.rrset), float(answer.rrset.ttl)

    async def addresses(self, name: str) -> tuple[list[str], float | None]:
        """Every A and AAAA address of `name`, and the smallest TTL."""
        (v4, ttl4), (v6, ttl6) = await asyncio.gather(
            self._records(name, "A"), self._records(name, "AAAA")
        )
        hosts = [r.address for r in (*v4, *v6)]  # type: ignore[attr-defined]
        ttls = [t for t in (ttl4, ttl6) if t is not None]
        return hosts, min(ttls) if ttls else None

    async def lookup(self, entry: DiscoveryConfig) -> tuple[list[Found], float]:
        """The servers `entry` names now and how long that holds. Raises LookupFailed when
        the answer cannot be had, or names no server (the caller keeps what it had)."""
        if entry.dns is not None:
            hosts, ttl = await self.addresses(entry.dns.host)
            found = address_servers(hosts, entry.dns.port, entry.weight)
        else:
            assert entry.srv is not None
            rows, ttl = await self._records(entry.srv, "SRV")
            records = [
                SrvRecord(r.priority, r.weight, r.port, r.target.to_text())  # type: ignore[attr-defined]
                for r in rows
            ]
            targets = sorted({r.target for r in records})
            answers = await asyncio.gather(*(self.addresses(t) for t in targets))
            addresses = {t: hosts for t, (hosts, _) in zip(targets, answers, strict=True)}
            ttls = [t for _, t in answers if t is not None] + ([ttl] if ttl is not None else [])
            ttl = min(ttls) if ttls else None
            found = srv_servers(records, addresses)
        if not found:
            raise LookupFailed(f"{entry.key}: the answer names no server")
        return found, ttl if ttl is not None else 0.0
