"""The client side of a TCP (layer 4) listener: one protocol object per client connection,
until its bytes can be relayed.

Owns what happens before the relay: the per-client connection limit at accept, the PROXY
header from a trusted load balancer in front (and refusing one from anyone else), peeking at
the TLS ClientHello to route by server name (TLS passthrough: nothing is decrypted), the pool
that follows, and the time allowed for all that. The bytes read meanwhile are kept, less the
PROXY header, and handed to `portico.proxy.l4.Relay`, which connects to a server and copies
bytes both ways; from then on the relay owns the client's transport (and, with the native
engine, takes its socket out of it). The engine is used when the checks are done by the time
the relay connects, so that `begin` follows the server connection at once; a relay started
while the spoof check still waits for the client's first bytes copies in Python, so that a
server that speaks first is heard meanwhile.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, cast

from portico.listeners.tls_peek import SniRouter, SniState, peek_sni
from portico.proxy import proxy_protocol
from portico.proxy.context import Network, ProxyContext
from portico.proxy.l4 import Relay, RelayState, engine_for
from portico.proxy.proxy_protocol import Address, ParseState
from portico.timers import Deadline
from portico.upstreams.pool import Pool

PENDING_LIMIT: Final = 64 * 1024  # client bytes held while the server connection is set up


@dataclass(frozen=True, slots=True)
class TcpListenerSettings:
    """One TCP listener's rules, resolved from the config once per config version."""

    name: str
    pool: Pool  # the default pool
    pools: Mapping[str, Pool]  # every pool, by name (fallbacks)
    idle_timeout: float  # silent both ways this long -> closed
    hello_timeout: float  # the PROXY header and ClientHello must be in within this
    sni: SniRouter[Pool] | None = None  # route by the ClientHello's server name
    close_on_bad_hello: bool = False  # unparsable ClientHello: close (else: default pool)
    trusted: tuple[Network, ...] | None = None  # PROXY headers accepted from these; None: off
    send_proxy: Mapping[str, str] = field(default_factory=dict)  # pool name -> "v1" | "v2"
    max_conns_per_client: int = 0  # 0 = no limit
    # the access check of the client a PROXY header names (the peer was checked at accept)
    allows: Callable[[str], bool] | None = None


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether `ip` is in one of `networks` (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class TcpClientConnection(asyncio.Protocol):
    """One client connection of a TCP listener, until the relay takes it over."""

    def __init__(self, settings: TcpListenerSettings, context: ProxyContext) -> None:
        self.settings = settings
        self.context = context
        self.loop = context.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = "unknown"  # the peer at accept (the per-client limit counts it)
        self.source: Address = ("0.0.0.0", 0)  # the real client: the PROXY header's, if any
        self.destination: Address = ("0.0.0.0", 0)
        self.pool = settings.pool
        self._relay: Relay | None = None
        self._buffer = bytearray()  # bytes read before the relay took over
        self._bytes = context.stats.client_bytes(settings.name)  # ... and counted here
        self._eof = False
        self._deadline = Deadline(self.loop, self._on_timeout)
        self._counted = False
        self._done = False  # forgotten by the worker
        # what must happen before the relay: each flag is cleared once done
        self._want_proxy = False  # a trusted peer: a PROXY header comes first
        self._check_spoof = False  # an untrusted peer: refuse a PROXY header
        self._want_hello = settings.sni is not None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if peer:
            self.client_ip = peer[0]
            self.source = (peer[0], peer[1])
        if local:
            self.destination = (local[0], local[1])
        limit = self.settings.max_conns_per_client
        if limit:
            if not self.context.admit(self.client_ip, limit):
                self._done = True  # refused at accept: never counted, never relayed
                self.transport.abort()
                return
            self._counted = True
        self.context.remember(self)
        self.context.stats.connection_opened(self.settings.name)
        trusted = self.settings.trusted
        if trusted is not None:
            if is_trusted(self.client_ip, trusted):
                self._want_proxy = True
            else:
                self._check_spoof = True
        if self._want_proxy or self._want_hello or self._check_spoof:
            self._deadline.set(self.settings.hello_timeout)
        if not (self._want_proxy or self._want_hello):
            self._start_relay()  # connect now: some protocols wait for the server to speak

    def data_received(self, data: bytes) -> None:
        self._bytes.received += len(data)
        self._buffer += data
        self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        self._advance()
        return True  # half-close: the answer may still come

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.client_writable(False)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.client_writable(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        relay, self._relay = self._relay, None
        if relay is not None and relay.client_lost(exc):
            return  # the relay ends the connection and calls relay_closed
        self._forget()

    # -- from the relay ----------------------------------------------------------------------

    def upstream_ready(self) -> None:
        self._maybe_begin()

    def upstream_failed(self) -> None:
        self._relay = None
        self.abort()

    def relay_closed(self) -> None:
        self._relay = None
        self._forget()

    # -- used by the worker ------------------------------------------------------------------

    def drain(self) -> None:
        """Shutdown or reload: nothing to do. A TCP stream has no request boundary to stop
        at, so the connection runs on until it ends or the worker's grace time does; one just
        accepted is not dropped either (a reload hands the socket over at any moment)."""

    def abort(self) -> None:
        """Close at once (reset), both sides."""
        self._deadline.cancel()
        relay = self._relay
        if relay is not None and relay.state in (RelayState.CONNECTED, RelayState.RELAYING):
            relay.abort()  # resets both sockets; relay_closed follows
            return
        if relay is not None:
            relay.abort()
            self._relay = None
        if self.transport is not None and not self._done:
            self.transport.abort()

    # -- internals ---------------------------------------------------------------------------

    def _advance(self) -> None:
        """Go as far as the bytes read so far allow: PROXY header, spoof check, ClientHello,
        then the relay."""
        if self._done:
            return
        if self._want_proxy:
            result = proxy_protocol.parse(bytes(self._buffer))
            if result.state is ParseState.NEED_MORE and not self._eof:
                return
            if result.state is not ParseState.COMPLETE:
                self.abort()  # malformed or cut short: the spec says drop the connection
                return
            del self._buffer[: result.length]
            self._want_proxy = False
            if result.source is not None and result.destination is not None:
                self.source, self.destination = result.source, result.destination
                allows = self.settings.allows
                if allows is not None and not allows(self.source[0]):
                    self.abort()  # the listener's access list refuses the real client
                    return
        if self._check_spoof:
            verdict = proxy_protocol.is_header(bytes(self._buffer))
            if verdict is None and not self._eof:
                return
            if verdict:
                self.abort()  # a PROXY header from a peer not trusted to send one
                return
            self._check_spoof = False
        if self._want_hello:
            hello = peek_sni(bytes(self._buffer))
            if hello.state is SniState.NEED_MORE and not self._eof:
                return
            self._want_hello = False
            if hello.state is SniState.COMPLETE:
                router = self.settings.sni
                assert router is not None
                self.pool = router.route(hello.server_name) or self.settings.pool
            elif self.settings.close_on_bad_hello:
                self.abort()
                return
        self._deadline.cancel()
        if self._relay is None:
            self._start_relay()
        else:
            self._maybe_begin()

    def _start_relay(self) -> None:
        assert self.transport is not None
        # the native copy only when `begin` follows the server connection at once (see above)
        engine = None if self._check_spoof else engine_for(self.loop)
        relay = self._relay = Relay(
            self,
            self.loop,
            self.transport,
            self.pool,
            self.settings.pools,
            self.settings.send_proxy,
            self.source,
            self.destination,
            self.settings.idle_timeout,
            self._bytes,
            engine,
        )
        relay.connect()

    def _maybe_begin(self) -> None:
        """Hand the client over once the server is connected and the checks are done; until
        then, hold at most about PENDING_LIMIT bytes."""
        relay = self._relay
        checks = self._want_proxy or self._want_hello or self._check_spoof
        if relay is not None and relay.state is RelayState.CONNECTED and not checks:
            pending, self._buffer = bytes(self._buffer), bytearray()
            relay.begin(pending, self._eof)
            return
        if len(self._buffer) >= PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # the relay resumes it in `begin`

    def _on_timeout(self) -> None:
        """The PROXY header or ClientHello did not come in time."""
        if self._done:
            return
        if self._want_proxy:
            self.abort()
            return
        self._check_spoof = False  # nothing that looks like a PROXY header came
        if self._want_hello:
            self._want_hello = False  # a client that waits for the server: a bad hello
            if self.settings.close_on_bad_hello:
                self.abort()
                return
        if self._relay is None:
            self._start_relay()
        else:
            self._maybe_begin()

    def _forget(self) -> None:
        if self._done:
            return
        self._done = True
        if self._counted:
            self.context.release(self.client_ip)
        self.context.forget(self)
        self.context.stats.connection_closed(self.settings.name)


def trusted_networks(specs: tuple[str, ...]) -> tuple[Network, ...]:
    """The `proxy_protocol.trusted` setting as networks (the config checked each one)."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)
