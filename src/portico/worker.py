"""A data-plane worker process: accept connections on the inherited sockets and proxy them.

Owns one event loop (uvloop when installed), the live pools of one config snapshot, and the
client connections. Lifecycle: build (from the config the supervisor sends) → start (listen,
report ready) → drain (stop accepting, let requests in flight finish, bounded by the grace
time) → stop. Never binds sockets or reads the config file itself: the supervisor owns both, so
workers can be replaced without closing a listening socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from portico import channel, privileges, tasks
from portico.cache.disk import DiskStore
from portico.cache.key import KeyRule
from portico.cache.runtime import Cache, CacheRules, RouteCache
from portico.compression.stage import CompressionStage, compression_settings
from portico.config import plugins
from portico.config.access import AccessConfig
from portico.config.load import parse_config
from portico.config.plugins import FilterUse
from portico.config.schema import Config, ListenerConfig
from portico.filters.access import AccessFilter, BanFilter, ClientAddress
from portico.filters.base import RequestFilter
from portico.filters.plugin import (
    DoneHook,
    PluginFilter,
    ResponseHook,
    ResponseHooks,
    RouteChain,
    RouteFilters,
    overrides,
)
from portico.filters.ratelimit import RateLimitFilter, SharedRateLimitFilter
from portico.filters.redirect import RedirectToHttps
from portico.listeners.acceptor import Acceptor
from portico.listeners.http import (
    DRAIN_IDLE_GRACE,
    ClientConnection,
    Http2Settings,
    HttpListenerSettings,
    new_connection,
)
from portico.listeners.tcp import (
    TcpClientConnection,
    TcpListenerSettings,
    is_trusted,
    trusted_networks,
)
from portico.listeners.tls import TlsTerminator, build_server_context
from portico.listeners.tls_peek import SniRouter
from portico.observe.access_log import AccessLogStage, AccessLogWriter
from portico.observe.stats import WorkerStats
from portico.outbox import OUTBOX
from portico.persistence.session import StickBinding
from portico.persistence.stick import StickTable
from portico.pipeline import DoneStage
from portico.plugins import Filter
from portico.plugins.guard import Guard
from portico.proxy.context import ProxyContext
from portico.proxy.debug_header import DebugHeader
from portico.routing import Router
from portico.routing.actions import RouteActions
from portico.routing.stages import RouteActionStage
from portico.security.access import (
    AccessList,
    AccessPolicy,
    RuntimeEntries,
    RuntimeEntry,
    parse_network,
    read_file,
)
from portico.security.bans import Ban, BanTable
from portico.state.memory import MemoryStore
from portico.state.store import StateStore
from portico.static.site import StaticSite, static_site
from portico.upstreams.backend import BackendState
from portico.upstreams.connections import CLIENT_HIGH_WATER, reserve_read_buffer
from portico.upstreams.pool import Pool

if TYPE_CHECKING:
    from portico.state.redis_store import RedisStore

log = logging.getLogger("portico.worker")

IDLE_SWEEP_INTERVAL = 1.0
STATS_INTERVAL = 1.0
GC_GEN0_THRESHOLD = 50_000


def build_pools(config: Config, loop: asyncio.AbstractEventLoop) -> dict[str, Pool]:
    rng = random.Random()
    return {
        name: Pool.from_config(name, pool, loop.time, rng, config.plugins)
        for name, pool in config.pools.items()
    }


def request_filters(
    listener: ListenerConfig,
    loop: asyncio.AbstractEventLoop,
    store: StateStore | None = None,
    fallback: str = "local",
    https_port: int | None = None,
) -> tuple[RequestFilter, ...]:
    """The filters of one listener, in the order they run (`https_port`: where
    `redirect_https` sends clients, None for 443)."""
    out: list[RequestFilter] = []
    if listener.redirect_https:
        out.append(RedirectToHttps(https_port))
    if listener.rate_limit is not None:
        if store is not None:
            namespace = listener.name.encode()
            out.append(
                SharedRateLimitFilter(listener.rate_limit, loop.time, store, namespace, fallback)
            )
        else:
            out.append(RateLimitFilter(listener.rate_limit, loop.time))
    return tuple(out)


def debug_header(config: Config, listener: ListenerConfig) -> DebugHeader | None:
    """The listener's `debug_header`, resolved: its name, its trusted networks."""
    setting = listener.debug_header
    if setting is None:
        return None
    networks = trusted_networks(setting.trusted)
    return DebugHeader(
        setting.name.encode("ascii"),
        lambda ip: is_trusted(ip, networks),
        {name: pool.policy for name, pool in config.pools.items()},
    )


def plugin_filters(
    uses: Sequence[FilterUse], where: str, config: Config
) -> tuple[tuple[RequestFilter, ...], ResponseHooks | None, tuple[DoneHook, ...]]:
    """Users' filters named in one `filters:` list (`where`: "listener web", for logs): their
    request hooks in order, their response hooks in reverse order (the first filter named
    sees the request first and the response last), and their done hooks in reverse order
    too. Only overridden hooks are kept."""
    settings = config.plugins
    request: list[RequestFilter] = []
    response: list[tuple[ResponseHook, Guard]] = []
    local: list[bool] = []
    done: list[DoneHook] = []
    for use in uses:
        cls, options = plugins.build(
            "filters", use.use, use.options, config.pools, settings.path, settings.base_dir
        )
        plugin: Filter = plugins.instantiate(cls, options)
        guard = Guard(f"{use.use} ({where})", settings.block_budget)
        if overrides(plugin, "on_request"):
            request.append(PluginFilter(plugin, guard, settings.timeout))
        if overrides(plugin, "on_response"):
            response.append((plugin.on_response, guard))
            local.append(bool(plugin.local_answers))
        if overrides(plugin, "on_done"):
            done.append(DoneHook(plugin, guard))
    hooks = ResponseHooks(response[::-1], local[::-1]) if response else None
    return tuple(request), hooks, tuple(done[::-1])


def access_list(access: AccessConfig) -> AccessList:
    """An `access:` section as a lookup, its files read now (so a reload re-reads them)."""
    allow = [parse_network(entry) for entry in access.allow]
    deny = [parse_network(entry) for entry in access.deny]
    for path in access.allow_files:
        allow.extend(read_file(path))
    for path in access.deny_files:
        deny.extend(read_file(path))
    return AccessList(allow, deny, access.default_action())


def client_address(listener: ListenerConfig) -> ClientAddress:
    """Who the client is on `listener`: the peer, or what its trusted proxies say."""
    trusted = (
        AccessList([parse_network(n) for n in listener.trusted_proxies])
        if listener.trusted_proxies
        else None
    )
    return ClientAddress(trusted, listener.trusted_header)


def route_action_stages(listener: ListenerConfig) -> tuple[RouteActionStage | None, ...] | None:
    """Each route's request actions (redirect, respond, rewrite, request header edits) as a
    named stage, by route index (the last entry is the default route's, which has none); None
    when no route has any, so such a listener pays one attribute check."""
    scheme = b"https" if listener.protocol == "https" else b"http"
    stages: list[RouteActionStage | None] = []
    for route in listener.routes:
        actions = RouteActions.from_config(route)
        stages.append(None if actions is None else RouteActionStage(actions, scheme))
    if not any(stages):
        return None
    stages.append(None)  # the default route
    return tuple(stages)


def route_filters(listener: ListenerConfig, config: Config) -> RouteFilters | None:
    """The filters of each route of `listener` (its access list, then its plugins), by route
    index (the last entry is the default route's, which has none); None when no route has any
    (the usual case)."""
    if not any(route.filters or route.access for route in listener.routes):
        return None
    address = client_address(listener)
    chains: list[RouteChain | None] = []
    for i, route in enumerate(listener.routes):
        name = route.name if route.name is not None else f"routes[{i}]"
        request, response, done = plugin_filters(
            route.filters, f"route {name} of listener {listener.name}", config
        )
        if route.access is not None:
            policy = AccessPolicy(f"{listener.name}/{name}", access_list(route.access), None)
            guard = AccessFilter(policy, address, route.access.status, route.access.body)
            request = (guard, *request)
        chains.append(
            RouteChain(request, response, done_stages=done) if request or response or done else None
        )
    chains.append(None)  # the default route
    return tuple(chains)


def route_caches(
    listener: ListenerConfig, cache: Cache | None
) -> tuple[RouteCache | None, ...] | None:
    """The cache of each route of `listener`, by route index (the last entry is the default
    route's, which has none); None when no route caches (the usual case)."""
    if cache is None or not any(r.cache is not None and r.cache.enabled for r in listener.routes):
        return None
    out: list[RouteCache | None] = []
    for i, route in enumerate(listener.routes):
        rules = route.cache
        if rules is None or not rules.enabled:
            out.append(None)
            continue
        name = route.name if route.name is not None else f"routes[{i}]"
        out.append(
            cache.route(
                (listener.name, name),
                CacheRules(
                    key=KeyRule(
                        frozenset(rules.ignore_query),
                        tuple(h.lower().encode("ascii") for h in rules.key_headers),
                    ),
                    heuristic_fraction=rules.heuristic_fraction,
                    heuristic_max=rules.heuristic_max,
                    max_entry=rules.max_entry_size,
                    collapse=rules.collapse,
                    collapse_timeout=rules.collapse_timeout,
                    max_waiters=rules.collapse_max_waiters,
                    cache_status=rules.cache_status,
                    stale_if_unreachable=rules.stale_if_unreachable,
                ),
            )
        )
    out.append(None)  # the default route
    return tuple(out)


def make_cache(config: Config, loop: asyncio.AbstractEventLoop) -> Cache | None:
    """The worker's cache: only when some route caches."""
    if not any(
        route.cache is not None and route.cache.enabled
        for listener in config.listeners
        for route in listener.routes
    ):
        return None
    storage = config.cache
    disk = None
    if storage.disk_path is not None:
        try:
            disk = DiskStore(storage.disk_path, storage.disk_size, storage.disk_max_entry_size)
        except OSError as exc:  # serve from memory rather than not at all
            log.error(
                "cache: the disk tier at %s cannot be used (%s): memory only",
                storage.disk_path,
                exc,
            )
    return Cache(storage.memory_size, storage.max_entry_size, time.time, loop, disk)


def static_sites(listener: ListenerConfig) -> tuple[StaticSite | None, ...] | None:
    """Each route's `static:` site, by route index; None when no route serves files."""
    if not any(route.static is not None for route in listener.routes):
        return None
    return tuple(
        static_site(route.static, route.compression or listener.compression)
        if route.static is not None
        else None
        for route in listener.routes
    )


def compression_stage(
    listener: ListenerConfig, stats: WorkerStats | None
) -> tuple[CompressionStage, ...]:
    """The listener's compression stage, or () when neither it nor a route compresses."""
    own = listener.compression
    by_route = [route.compression for route in listener.routes]
    if own is None and not any(section is not None for section in by_route):
        return ()
    return (
        CompressionStage(
            compression_settings(own) if own is not None else None,
            [compression_settings(c) if c is not None else None for c in by_route],
            stats.coding_bytes if stats is not None else None,
        ),
    )


def compression_by_route(
    listener: ListenerConfig, stages: tuple[CompressionStage, ...]
) -> tuple[tuple[CompressionStage, ...], ...] | None:
    """By route index (the last: the default route's), the listener's compression stage where
    that route's answers may be compressed (the route's or the listener's `compression:`),
    else none; None without a compression stage."""
    if not stages:
        return None
    count = len(listener.routes)
    return tuple(
        tuple(s for s in stages if s.settings_for(i if i < count else None) is not None)
        for i in range(count + 1)
    )


def done_stages(
    listener: ListenerConfig, logs: dict[tuple[str, str], AccessLogWriter] | None
) -> tuple[DoneStage, ...]:
    """The built-in stages of a listener's done phase: its access log, if it keeps one."""
    log = listener.access_log
    writer = (logs or {}).get((log.path, log.format)) if log is not None else None
    return (AccessLogStage(writer),) if writer is not None else ()


def access_logs(config: Config) -> dict[tuple[str, str], AccessLogWriter]:
    """One writer per distinct (path, format): listeners sharing a file share its writer."""
    writers: dict[tuple[str, str], AccessLogWriter] = {}
    for listener in config.listeners:
        log_config = listener.access_log
        if log_config is not None:
            key = (log_config.path, log_config.format)
            if key not in writers:
                writers[key] = AccessLogWriter(log_config.path, log_config.format)
    return writers


def listener_settings(
    config: Config,
    pools: dict[str, Pool],
    loop: asyncio.AbstractEventLoop,
    logs: dict[tuple[str, str], AccessLogWriter] | None = None,
    store: StateStore | None = None,
    bound: Mapping[str, int] | None = None,
    cache: Cache | None = None,
    stats: WorkerStats | None = None,
    guards: Mapping[str, ListenerGuards] | None = None,
) -> dict[str, HttpListenerSettings]:
    """`bound`: the port each listener is bound to (those bound to port 0 in the config);
    `stats`: where compressors count their bytes; `guards`: each listener's access and ban
    filters (the worker's: they share its tables)."""
    out = {}
    for listener in config.listeners:
        if listener.protocol == "tcp":
            continue
        limits, timeouts = listener.limits, listener.timeouts
        plugin_request, response_hooks, plugin_done = plugin_filters(
            listener.filters, f"listener {listener.name}", config
        )
        compression = compression_stage(listener, stats)
        out[listener.name] = HttpListenerSettings(
            name=listener.name,
            pool=pools[listener.default_pool],
            max_request_line=limits.max_request_line,
            max_header_size=limits.max_header_size,
            max_headers=limits.max_headers,
            max_body_size=limits.max_body_size,
            max_discard_size=limits.max_discard_size,
            response_buffer=limits.response_buffer,
            header_timeout=timeouts.header,
            keepalive_timeout=timeouts.keepalive,
            body_timeout=timeouts.body,
            send_timeout=timeouts.send,
            tunnel_timeout=timeouts.tunnel,
            linger_timeout=timeouts.linger,
            x_forwarded=listener.forwarded.x_forwarded,
            forwarded=listener.forwarded.forwarded,
            proto=b"https" if listener.protocol == "https" else b"http",
            response_headers=(
                ((b"Strict-Transport-Security", listener.tls.hsts.encode()),)
                if listener.tls is not None and listener.tls.hsts
                else ()
            ),
            client_subject=listener.tls is not None and listener.tls.client_auth != "none",
            proxy_trusted=(
                trusted_networks(listener.proxy_protocol.trusted)
                if listener.proxy_protocol is not None
                else None
            ),
            access_log=(
                (logs or {}).get((listener.access_log.path, listener.access_log.format))
                if listener.access_log is not None
                else None
            ),
            filters=(
                *(guards[listener.name].filters if guards else ()),
                *request_filters(
                    listener,
                    loop,
                    store,
                    config.state.rate_limit_fallback,
                    config.https_port(listener, bound),
                ),
                *plugin_request,
            ),
            response_hooks=response_hooks,
            route_stages=route_action_stages(listener),
            route_filters=route_filters(listener, config),
            route_caches=route_caches(listener, cache),
            response_stages=compression,
            route_response_stages=compression_by_route(listener, compression),
            done_stages=(*done_stages(listener, logs), *plugin_done),
            static_sites=static_sites(listener),
            http2=(
                Http2Settings(
                    max_concurrent_streams=listener.http2.max_concurrent_streams,
                    initial_window_size=listener.http2.initial_window_size,
                    connection_window_size=listener.http2.connection_window_size,
                    only=listener.http2.only,
                )
                if listener.http2 is not None and listener.http2.enabled
                else None
            ),
            max_conns_per_client=listener.max_conns_per_client,
            router=Router.compile(listener.routes, listener.default_pool)
            if listener.routes
            else None,
            debug_header=debug_header(config, listener),
            done_hooks=guards[listener.name].done_hooks if guards else (),
        )
    return out


def tcp_listener_settings(
    config: Config,
    pools: dict[str, Pool],
    guards: Mapping[str, ListenerGuards] | None = None,
) -> dict[str, TcpListenerSettings]:
    """The settings of each TCP (layer 4) listener."""
    send_proxy = {
        name: pool.proxy_protocol
        for name, pool in config.pools.items()
        if pool.proxy_protocol is not None
    }
    out = {}
    for listener in config.listeners:
        if listener.protocol != "tcp":
            continue
        routes = listener.sni_routes
        accept = listener.proxy_protocol
        out[listener.name] = TcpListenerSettings(
            name=listener.name,
            pool=pools[listener.default_pool],
            pools=pools,
            idle_timeout=listener.idle_timeout,
            hello_timeout=listener.timeouts.header,
            sni=SniRouter({p: pools[name] for p, name in routes.items()}) if routes else None,
            close_on_bad_hello=listener.on_bad_hello == "close",
            trusted=trusted_networks(accept.trusted) if accept is not None else None,
            send_proxy=send_proxy,
            max_conns_per_client=listener.max_conns_per_client,
            allows=guards[listener.name].allows_client if guards else None,
        )
    return out


class ListenerGuards:
    """One listener's access list and abuse rules in one worker: the check at accept, the
    request filters (clients behind trusted proxies, bans) and the hook counting responses."""

    def __init__(
        self,
        listener: ListenerConfig,
        runtime: RuntimeEntries,
        bans: BanTable,
        announce: Callable[[Ban], None],
        store: StateStore | None = None,
    ) -> None:
        self.name = listener.name
        configured = access_list(listener.access) if listener.access is not None else None
        self.policy = AccessPolicy(listener.name, configured, runtime)
        self.address = client_address(listener)
        self.bans = bans
        self.ip_bans = any(rule.key == "client_ip" for rule in listener.bans)
        proxied = listener.proxy_protocol is not None
        self.proxy_trusted = (
            trusted_networks(listener.proxy_protocol.trusted)
            if listener.proxy_protocol is not None
            else ()
        )
        filters: list[RequestFilter] = []
        self.access_filter: AccessFilter | None = None
        if proxied or listener.trusted_proxies:
            # the real client is known only from the PROXY header or each request's headers
            self.access_filter = AccessFilter(self.policy, self.address)
            filters.append(self.access_filter)
        self.ban_filter: BanFilter | None = None
        hooks: list[Callable[[Any, int], None]] = []
        if listener.bans:
            self.ban_filter = BanFilter(
                listener.name, listener.bans, bans, self.address, announce, store=store
            )
            filters.append(self.ban_filter)
            if any(rule.status is not None for rule in listener.bans):
                hooks.append(self.ban_filter.on_done)
        self.filters: tuple[RequestFilter, ...] = tuple(filters)
        self.done_hooks = tuple(hooks)
        self.denied_later = 0  # tcp: refused once the PROXY header named the client
        # no configured list and no ban by address: then only run-time entries (added at any
        # moment) can deny a peer, and while there are none `allows_peer` need not look
        self._only_runtime = (
            self.policy.runtime if configured is None and not self.ip_bans else None
        )
        # for the acceptor (compiled): while these have no entries, `allows_peer` lets every
        # peer in, so it need not be called (an interpreted frame per connection)
        self.open_rules = self._only_runtime

    def allows_peer(self, ip: str) -> bool:
        """The check at accept: a peer that speaks for its clients (a trusted proxy, a PROXY
        header sender) is let in, and each client judged later."""
        runtime = self._only_runtime
        if runtime is not None and not runtime.entries:
            return True  # nothing that could deny anyone (the usual case: once per connection)
        if self.proxy_trusted and is_trusted(ip, self.proxy_trusted):
            return True
        if self.address.is_trusted_peer(ip):
            return True
        return self.allows_client(ip)

    def allows_client(self, ip: str) -> bool:
        now = time.time()
        if self.ip_bans and self.bans.is_banned(self.name, ip, now):
            return False
        return self.policy.allows(ip, now)

    def counters(self, acceptors: list[Acceptor], counters: dict[str, list[list[Any]]]) -> None:
        name = self.name
        at_accept = sum(acceptor.counters.denied for acceptor in acceptors)
        counters["access_denied"].append([name, "accept", at_accept + self.denied_later])
        later = self.access_filter.denied if self.access_filter is not None else 0
        counters["access_denied"].append([name, "request", later])
        if self.ban_filter is not None:
            counters["banned_requests"].append([name, self.ban_filter.refused])
            for rule, count in self.ban_filter.banned.items():
                counters["bans"].append([name, rule, count])
        if acceptors:
            exhausted = sum(acceptor.counters.exhausted for acceptor in acceptors)
            paused = sum(acceptor.counters.paused_full for acceptor in acceptors)
            counters["accept_exhausted"].append([name, exhausted])
            counters["accept_paused"].append([name, paused])


class Worker:
    """One worker's loop, servers and connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        sockets: dict[str, list[socket.socket]],
    ) -> None:
        self.loop = loop
        self.config = config
        self.sockets = sockets
        self.pools = build_pools(config, loop)
        self.stats = WorkerStats.for_config(config)
        # what connections and exchanges see of this worker
        self.context = ProxyContext(loop, self.stats, self.pools)
        self.connections = self.context.connections
        self.all_closed = self.context.all_closed  # set while no client connection is open
        self.access_logs = access_logs(config)
        state = config.state
        # one store per worker process, used on this loop only
        if any(lc.http2 is not None and lc.http2.enabled for lc in config.listeners):
            # loaded here, not at a client's first HTTP/2 connection (the listener's import)
            import portico.listeners.h2  # noqa: F401
        self.store: RedisStore | None = None
        if state.redis:  # redis-py costs ~20 MiB per process: imported only where it is used
            from portico.state.redis_store import RedisStore

            self.store = RedisStore(state.redis, state.timeout)
        memory = MemoryStore(loop.time)
        for name, pool in self.pools.items():
            stick = config.pools[name].stick
            if stick is not None:
                store = self.store if self.store is not None else memory
                pool.bind_stick_table(
                    StickBinding(
                        StickTable(store, name, stick.ttl, stick.size),
                        stick.key,
                        stick.learn_from_response,
                    )
                )
        bound = {name: socks[0].getsockname()[1] for name, socks in sockets.items()}
        self.cache = make_cache(config, loop)
        # who may connect: run-time access entries and bans, as the supervisor sends them
        self.runtime_access = RuntimeEntries()
        self.bans = BanTable()
        self.tell_supervisor: Callable[[bytes], None] | None = None  # set once connected
        self.guards = {
            listener.name: ListenerGuards(
                listener, self.runtime_access, self.bans, self._banned, self.store
            )
            for listener in config.listeners
        }
        self.settings = listener_settings(
            config,
            self.pools,
            loop,
            self.access_logs,
            self.store,
            bound,
            self.cache,
            self.stats,
            self.guards,
        )
        self.tcp_settings = tcp_listener_settings(config, self.pools, self.guards)
        # one shared server read buffer, as large as the largest `limits.response_buffer`
        reserve_read_buffer(max((s.response_buffer for s in self.settings.values()), default=0))
        self.servers: list[Acceptor] = []
        self.terminators: list[TlsTerminator] = []
        self._listeners = {listener.name: listener for listener in config.listeners}

    def handle(self, message: dict[str, Any]) -> None:
        """A control-plane message other than stop."""
        if message["type"] == "reopen":
            for writer in self.access_logs.values():
                writer.reopen()
        elif message["type"] == "health":
            pool = self.pools.get(message["pool"])
            if pool is not None:
                pool.set_active_health(message["server"], bool(message["up"]), self.loop.time())
        elif message["type"] == "server":
            pool = self.pools.get(message["pool"])
            if pool is None:
                return
            now = self.loop.time()
            if "weight" in message:
                pool.set_weight(message["server"], int(message["weight"]), now)
            if "state" in message:
                pool.set_state(message["server"], str(message["state"]), now)
        elif message["type"] == "add_server":
            pool = self.pools.get(message["pool"])
            if pool is not None:
                backend = BackendState(
                    message["name"],
                    message["host"],
                    int(message["port"]),
                    int(message["weight"]),
                    max_idle=self.config.pools[message["pool"]].keepalive.max_idle,
                    clock=self.loop.time,
                )
                if message.get("slow_start") and pool.slow_start:
                    backend.up_since = self.loop.time()  # new: ramps up as one back from down
                pool.add_backend(backend, self.loop.time())
        elif message["type"] == "access":
            self.runtime_access.replace(RuntimeEntry.from_json(e) for e in message["entries"])
        elif message["type"] == "bans":
            self.bans.replace(Ban.from_json(b) for b in message["bans"])
        elif message["type"] == "remove_server":
            pool = self.pools.get(message["pool"])
            if pool is not None:
                pool.remove_backend(message["server"], self.loop.time())
        elif message["type"] == "invalidate" and self.cache is not None:
            self.cache.store.remove_uri(str(message["uri"]).encode("latin-1"))
        elif message["type"] == "purge" and self.cache is not None:
            url, tag = message.get("url"), message.get("tag")
            if url:
                self.cache.purge_uri(str(url).encode("latin-1"))
            if tag:
                self.cache.purge_tag(str(tag).encode("latin-1"))

    def _banned(self, ban: Ban) -> None:
        """A ban rule was broken here: the supervisor spreads it to every worker."""
        log.warning(
            "listener %s: %s banned until %s by rule %s",
            ban.listener,
            ban.key,
            time.strftime("%H:%M:%S", time.localtime(ban.expires)),
            ban.rule,
        )
        if self.tell_supervisor is not None:
            self.tell_supervisor(channel.encode("ban", ban=ban.to_json()))

    def store_counters(self, counters: dict[str, list[list[Any]]]) -> None:
        """The state store's failures and the shared rate limits' fallbacks, for /metrics."""
        acceptors: dict[str, list[Acceptor]] = {}
        for acceptor in self.servers:  # one per socket: several after a reload to fewer workers
            acceptors.setdefault(acceptor.name, []).append(acceptor)
        for name, guards in self.guards.items():
            guards.counters(acceptors.get(name, []), counters)
        if self.store is not None:
            counters["store_errors"].append(["redis", self.store.failures + self.store.skipped])
        for name, settings in self.settings.items():
            for request_filter in settings.filters:
                if isinstance(request_filter, SharedRateLimitFilter):
                    counters["ratelimit_fallbacks"].append([name, request_filter.fallbacks])
        cache = self.cache
        if cache is not None:
            for (listener, route), count in cache.counters.items():
                counters["cache_hits"].append([listener, route, count.hits])
                counters["cache_misses"].append([listener, route, count.misses])
                counters["cache_stale"].append([listener, route, count.stale])
                counters["cache_revalidations"].append([listener, route, count.revalidations])
                counters["cache_stored"].append([listener, route, count.stored])
            counters["cache_evictions"].append(["memory", cache.store.evictions])
            if cache.disk is not None:
                counters["cache_evictions"].append(["disk", cache.disk.evictions])

    def cache_gauges(self, gauges: dict[str, list[list[Any]]]) -> None:
        """The HTTP cache's size now, for /metrics."""
        cache = self.cache
        if cache is not None:
            gauges["cache_bytes"].append(["memory", cache.store.bytes])
            gauges["cache_entries"].append(["memory", len(cache.store)])
            if cache.disk is not None:
                # the directory is shared: each worker's view of it, the largest one counts
                gauges["cache_disk_bytes"].append(["disk", cache.disk.bytes])

    async def start(self, before_serving: Callable[[], None] | None = None) -> None:
        """Serve every listener. `before_serving` runs once what needs the supervisor's
        privileges is done (TLS certificates and keys read) and before the first connection
        is accepted: the worker switches user there."""
        terminators: dict[str, TlsTerminator | None] = {}
        for name in self.sockets:
            listener = self._listeners[name]
            tls = listener.tls
            if name in self.tcp_settings or tls is None:
                terminators[name] = None
                continue
            http2 = listener.http2 is not None and listener.http2.enabled
            only = http2 and listener.http2 is not None and listener.http2.only
            built = build_server_context(tls, http2=http2, http2_only=only)
            terminators[name] = built
            self.terminators.append(built)
        if before_serving is not None:
            before_serving()
        OUTBOX.start(self.loop)  # small writes leave at the end of each turn, together
        for name, sock in ((name, sock) for name, socks in self.sockets.items() for sock in socks):
            listener = self._listeners[name]
            # create_server calls listen() again on the inherited socket: without the configured
            # backlog it would reset the queue to asyncio's default of 100
            sock.listen(listener.backlog)
            guards = self.guards[name]
            tcp = self.tcp_settings.get(name)
            if tcp is not None:
                self._accept(
                    name,
                    sock,
                    lambda _peer, tcp=tcp: TcpClientConnection(tcp, self.context),  # type: ignore[misc]
                    guards,
                    listener.max_conns,
                )
                continue
            settings = self.settings[name]
            self._accept(
                name,
                sock,
                # called with the peer's address (no interpreted frame of ours per connection)
                partial(new_connection, settings, self.context),
                guards,
                listener.max_conns,
                terminators[name],
                write_high=0,  # ClientConnection.connection_made sets `response_buffer` // 2
            )
        tasks.spawn(self._sweep_idle())
        for writer in self.access_logs.values():
            writer.start(self.loop)

    def _accept(
        self,
        name: str,
        sock: socket.socket,
        factory: Callable[[Any], asyncio.Protocol],
        guards: ListenerGuards,
        max_conns: int,
        terminator: TlsTerminator | None = None,
        write_high: int = CLIENT_HIGH_WATER,
    ) -> None:
        stats = self.stats
        acceptor = Acceptor(
            self.loop,
            sock,
            name,
            factory,
            allows=guards.allows_peer,
            rules=guards.open_rules,
            max_conns=max_conns,
            active=lambda: stats.active_connections(name),
            ssl_context=terminator.context if terminator is not None else None,
            handshake_timeout=terminator.handshake_timeout if terminator is not None else None,
            write_high=write_high,
        )
        acceptor.start()
        self.servers.append(acceptor)

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL)
            now = self.loop.time()
            for pool in self.pools.values():
                # pooled server connections unused for two sweeps rest, as client ones do
                pool.close_idle(now - pool.settings.idle_timeout, now - 2 * IDLE_SWEEP_INTERVAL)
            for conn in self.context.connections:
                if isinstance(conn, ClientConnection):
                    conn.rest()  # an idle HTTP/1 connection gives up its parser

    async def drain(
        self, grace: float, stopped_accepting: Callable[[], None], idle_grace: float = 0.0
    ) -> None:
        """Stop accepting, let in-flight requests finish for at most `grace` seconds; idle
        HTTP/1 keep-alive connections stay open `idle_grace` seconds (`ClientConnection.drain`)."""
        for server in self.servers:
            server.close()
        stopped_accepting()
        # connections accepted in the loop's last turn get `connection_made` in the next one:
        # let those callbacks run, so that no such connection is dropped at exit
        for _ in range(2):
            await asyncio.sleep(0)
        idle_grace = min(idle_grace, grace)
        for conn in list(self.connections):
            if isinstance(conn, ClientConnection):
                conn.drain(idle_grace)
            else:
                conn.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        for pool in self.pools.values():
            pool.close_idle(float("inf"))
        OUTBOX.stop()


async def _run(
    channel_fd: int, fds: dict[str, list[int]], identity: privileges.Identity | None = None
) -> int:
    loop = asyncio.get_running_loop()
    # first of all: a SIGHUP or SIGUSR1 to the process group must not kill a starting worker
    stop = asyncio.Event()
    idle_grace = 0.0  # a reload's stop keeps idle keep-alive connections open a moment
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor handles reloads
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)  # ... and log reopening
    chan = socket.socket(fileno=channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=chan)
    first = await channel.receive(reader)
    if first is None or first["type"] != "config":
        log.error("no config from the supervisor")
        return 1
    config = parse_config(first["text"], first["filename"])
    sockets = {name: [socket.socket(fileno=fd) for fd in group] for name, group in fds.items()}
    worker = Worker(loop, config, sockets)

    def switch_user() -> None:
        # the sockets were bound by the supervisor (ports below 1024 too) and certificates
        # are read: before the first client byte, this process stops being root
        if identity is not None:
            privileges.drop(identity)

    try:
        await worker.start(switch_user)
    except privileges.PrivilegeError as exc:
        log.error("%s", exc)
        return 1
    # The request path allocates many short-lived containers but makes no reference cycles in
    # steady state: collect the youngest generation less often, and never scan what was built
    # at start-up (the Instagram recipe; measured ~3% of worker CPU on small responses).
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    # no malloc_trim here: the pages it gives back are faulted in again by the first busy
    # moment (measured: the slow-reader test's RSS rise per reader went from ~64 to 65-78 KiB)
    writer.write(channel.encode("ready", pid=os.getpid()))
    await writer.drain()
    if worker.cache is not None:

        def invalidated(uri: bytes) -> None:
            # the other workers' memory tiers hold their own copies (RFC 9111 §4.4)
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(channel.encode("invalidate", uri=uri.decode("latin-1")))

        worker.cache.on_invalidate = invalidated

    def tell(message: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(message)

    worker.tell_supervisor = tell

    async def listen() -> None:
        nonlocal idle_grace
        while True:
            message = await channel.receive(reader)
            if message is None or message["type"] == "stop":
                if message is not None and message.get("reload"):
                    idle_grace = DRAIN_IDLE_GRACE
                stop.set()
                return
            worker.handle(message)

    tasks.spawn(listen())

    def report() -> None:
        snapshot = worker.stats.snapshot(worker.pools)
        worker.store_counters(snapshot["counters"])
        worker.cache_gauges(snapshot["gauges"])
        with contextlib.suppress(ConnectionError, RuntimeError):  # the supervisor is gone
            writer.write(channel.encode("stats", pid=os.getpid(), stats=snapshot))

    async def reporting() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            report()

    tasks.spawn(reporting())
    await stop.wait()

    def stopped_accepting() -> None:
        # from now on every new connection goes to the other workers (a reload waits for this)
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(channel.encode("draining", pid=os.getpid()))

    await worker.drain(config.shutdown_grace, stopped_accepting, idle_grace)
    for access_log in worker.access_logs.values():
        access_log.close()
    if worker.store is not None:
        await worker.store.close()
    tasks.cancel_all()
    report()  # the last counts, so the supervisor's totals lose nothing
    with contextlib.suppress(ConnectionError, RuntimeError):
        await writer.drain()
    writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portico-worker")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument(
        "--listen", action="append", default=[], help="NAME=FD (a listener may have several)"
    )
    parser.add_argument("--user", help="NAME:UID:GID to switch to once listening")
    args = parser.parse_args(argv)
    identity = privileges.Identity.parse(args.user) if args.user else None
    logging.basicConfig(  # force: a worker forked by the fork server has the supervisor's
        level=logging.INFO,
        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s",
        force=True,
    )
    fds: dict[str, list[int]] = {}
    for item in args.listen:
        name, _, fd = item.rpartition("=")
        fds.setdefault(name, []).append(int(fd))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(args.channel, fds, identity))
    # outside the try: an ImportError inside the worker (after it switched user, say) is an
    # error to see, not a reason to run it a second time on a channel already closed
    return int(uvloop.run(_run(args.channel, fds, identity)))


if __name__ == "__main__":
    sys.exit(main())
