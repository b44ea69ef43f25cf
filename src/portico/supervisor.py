"""The control plane: owns the listening sockets and the worker processes.

Binds every listener, one socket per worker slot (`bind`), starts `workers` processes that
inherit them (each its slot's), hands each the validated config over its channel, restarts a
worker that dies, and on SIGTERM/SIGINT asks every worker to drain and waits for them (bounded
by the grace time). Answers `portico reload` on its control socket (`portico.control`) and owns
the pid file. Never touches a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portico import channel, control, forkserver, notify, privileges, tasks
from portico.config.load import ConfigError, parse_config
from portico.config.schema import Config, ListenerConfig, ServerConfig
from portico.config.units import parse_address
from portico.discovery import Discovery
from portico.discovery.plan import Changes
from portico.health.checker import HealthChecker
from portico.health.readiness import Check, Readiness, readiness
from portico.observe.stats import StatsAggregator
from portico.security.access import EntryError, RuntimeEntries, RuntimeEntry
from portico.security.bans import Ban, BanTable
from portico.state.store import StoreUnavailable

if TYPE_CHECKING:  # redis-py (~20 MiB) is imported only when the config has state.redis
    from portico.fleet import Change, Fleet
    from portico.state.redis_store import RedisStore

if TYPE_CHECKING:  # the admin API and /metrics (~2 MiB RSS): imported only with `admin:`
    from portico.admin import AdminServer, ReloadResult
    from portico.admin.api import FleetView, ListenerView, PoolView, ServerState
    from portico.observe.prometheus import Metric, PrometheusExporter

log = logging.getLogger("portico")

RESTART_BACKOFF_MAX = 5.0
STORE_CHECK_INTERVAL = 1.0  # how often /readyz's state store check pings Redis
FLEET_KINDS = ("weight", "state", "add_server", "remove_server")  # + reset
DRAIN_CHECK_INTERVAL = 0.5  # how often servers DNS dropped are checked for requests in flight
CHANNEL_LIMIT = 16 * 1024 * 1024  # longest channel line: a stats snapshot of a large config
_SCHEMES = {"http": "http", "https": "https", "tcp": "tcp"}
SHARED_POLL = 1.0  # with state.redis: how often other instances' access changes are looked for


class StartupError(Exception):
    """Portico cannot start (a port is taken, say): said once, plainly, and exit non-zero."""


REUSEPORT = hasattr(socket, "SO_REUSEPORT")  # Linux, the BSDs; without it one shared socket


def _socket(listener: ListenerConfig, port: int, *, reuseport: bool) -> socket.socket:
    host = listener.bind.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(
            f"cannot listen on {listener.bind} (listener {listener.name!r}): {reason}"
        ) from None
    return sock


def _listen(listener: ListenerConfig, sock: socket.socket) -> socket.socket:
    sock.listen(listener.backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def bind(listener: ListenerConfig, count: int = 1) -> list[socket.socket]:
    """The listening sockets of `listener`, one per worker slot (`count`), all bound to one
    address with SO_REUSEPORT so that the kernel spreads new connections over them by their
    4-tuple's hash, instead of every worker waking on one shared queue. A first socket without
    SO_REUSEPORT checks that nothing else listens there (otherwise another program running as
    the same user could join the group and take a share of the connections unnoticed); its
    port (port 0: the one the kernel chose) is the one every slot binds."""
    probe = _socket(listener, listener.bind.port, reuseport=False)
    if not REUSEPORT:
        return [_listen(listener, probe)]  # every worker accepts on this one
    port = probe.getsockname()[1]
    probe.close()  # never connected: nothing lingers in TIME_WAIT
    return add_slots(listener, [], count, port)


def add_slots(
    listener: ListenerConfig, sockets: list[socket.socket], count: int, port: int | None = None
) -> list[socket.socket]:
    """`sockets` and as many more (SO_REUSEPORT, same address) as make `count` slots."""
    if not REUSEPORT:
        return sockets
    if port is None:
        port = sockets[0].getsockname()[1]
    made: list[socket.socket] = []
    try:
        while len(sockets) + len(made) < count:
            made.append(_listen(listener, _socket(listener, port, reuseport=True)))
    except StartupError:
        for sock in made:
            sock.close()
        raise
    return [*sockets, *made]


def slot_sockets(sockets: list[socket.socket], slot: int, count: int) -> list[socket.socket]:
    """The sockets worker `slot` of `count` accepts on: its own, and after a reload to fewer
    workers those of the slots gone (slot k's go to k mod count), so no socket with a queue
    is ever left without a worker; with one shared socket (no SO_REUSEPORT), that one."""
    own = [sock for k, sock in enumerate(sockets) if k % count == slot]
    return own or sockets[:1]


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def read_pid(path: str) -> int | None:
    """The pid a pid file names; None if there is no such file or it holds no pid."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _check_pid_file(path: str | None) -> None:
    """Refuse to start while the pid file names a running Portico (two instances would fight
    over it, and `portico reload` would reach only one); a stale one is replaced later."""
    if not path:
        return
    pid = read_pid(path)
    if pid is None or pid == os.getpid():
        return
    try:
        hello = control.ask(pid, "hello", timeout=2.0)
    except (control.NotRunning, TimeoutError):
        log.info("pid file %s is stale (process %d is not a running Portico)", path, pid)
        return
    except PermissionError:
        hello = {"config": "(run by another user)"}
    raise StartupError(
        f"pid_file {path} names a running Portico (pid {pid}, {hello.get('config')}): "
        "stop it first, or give this one another pid_file"
    )


def _write_pid(path: str | None) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")


def _remove_pid(path: str | None) -> None:
    """Remove the pid file if it is still ours."""
    if path and read_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            Path(path).unlink()


def _bound(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)  # one per process: compared, and hashed, by identity
class WorkerProcess:
    slot: int
    process: asyncio.subprocess.Process | forkserver.ForkedProcess
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    draining: asyncio.Event = field(default_factory=asyncio.Event)


class SecurityTables:
    """Run-time access entries and bans of one instance: what the admin API and the workers'
    ban rules add, told to every worker in full at each change (the tables are small) and to
    every new worker at its start. Kept across reloads: they are not the file's. With
    `state.redis`, every change is also written to Redis and other instances' changes are
    read back every `SHARED_POLL` seconds, so one call bans an address on the whole fleet."""

    ACCESS = "access"
    BANS = "bans"

    def __init__(self, tell: Callable[[bytes], None], redis: RedisStore | None) -> None:
        self.tell = tell
        self.redis = redis
        self.access = RuntimeEntries()
        self.bans = BanTable()
        self._versions = {self.ACCESS: -1, self.BANS: -1}

    def messages(self) -> list[bytes]:
        """What a new worker is told."""
        now = time.time()
        return [
            channel.encode("access", entries=[e.to_json() for e in self.access.live(now)]),
            channel.encode("bans", bans=[b.to_json() for b in self.bans.live(now)]),
        ]

    def _push(self) -> None:
        for message in self.messages():
            self.tell(message)

    def add_access(self, entry: RuntimeEntry) -> None:
        self.access.add(entry)
        self._push()
        self._share(self.ACCESS, f"{entry.scope}|{entry.network}", json.dumps(entry.to_json()))

    def remove_access(self, scope: str, network: str) -> bool:
        removed = self.access.remove(scope, network)
        if removed:
            self._push()
        if self.redis is not None:
            tasks.spawn(self._unshare(self.ACCESS, f"{scope}|{network}"))
        return removed

    def add_ban(self, ban: Ban) -> None:
        if self.bans.add(ban):
            self._push()
            self._share(self.BANS, f"{ban.listener}|{ban.key}", json.dumps(ban.to_json()))

    def remove_ban(self, listener: str, key: str) -> bool:
        removed = self.bans.remove(listener, key)
        if removed:
            self._push()
        if self.redis is not None:
            tasks.spawn(self._unshare(self.BANS, f"{listener}|{key}"))
        return removed

    def _share(self, table: str, field: str, value: str) -> None:
        if self.redis is not None:
            tasks.spawn(self._put(table, field, value))

    async def _put(self, table: str, field: str, value: str) -> None:
        assert self.redis is not None
        try:
            await self.redis.shared_put(table, field, value)
        except StoreUnavailable as exc:
            log.warning("%s change not shared with other instances: %s", table, exc)

    async def _unshare(self, table: str, field: str) -> None:
        assert self.redis is not None
        try:
            await self.redis.shared_delete(table, field)
        except StoreUnavailable as exc:
            log.warning("%s removal not shared with other instances: %s", table, exc)

    async def poll(self) -> None:
        """Follow the other instances' changes (with Redis), forever."""
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.sync()
            await asyncio.sleep(SHARED_POLL)

    async def sync(self) -> None:
        """Read the shared tables if they changed since last time; lapsed entries are deleted."""
        redis = self.redis
        assert redis is not None
        now = time.time()
        changed = False
        for table in (self.ACCESS, self.BANS):
            version = await redis.shared_version(table)
            if version == self._versions[table]:
                continue
            fields = await redis.shared_read(table)
            self._versions[table] = version
            live: list[Any] = []
            for name, text in fields.items():
                try:
                    data = json.loads(text)
                    item = (
                        RuntimeEntry.from_json(data)
                        if table == self.ACCESS
                        else Ban.from_json(data)
                    )
                except (ValueError, KeyError, TypeError, EntryError):
                    log.warning("ignored a bad shared %s entry %r", table, name)
                    continue
                expired = (
                    item.has_expired(now) if isinstance(item, RuntimeEntry) else item.expires <= now
                )
                if expired:
                    tasks.spawn(self._unshare(table, name))
                else:
                    live.append(item)
            if table == self.ACCESS:
                self.access.replace(live)
            else:
                self.bans.replace(live)
            changed = True
        if changed:
            self._push()


class Supervisor:
    """Start, watch and stop the workers of one Portico instance."""

    def __init__(
        self,
        config: Config,
        config_text: str,
        filename: str,
        fork_server: forkserver.ForkServer | None = None,
    ) -> None:
        self.config = config
        self.forkserver = fork_server  # None: workers are spawned as new processes
        self.config_text = config_text
        self.filename = filename
        self.path = os.path.abspath(filename)  # as `portico reload` names it from elsewhere
        # per listener, one listening socket per worker slot (`bind`), kept for the listener's
        # life: a restarted or reloaded worker of a slot accepts on the same one
        self.sockets: dict[str, list[socket.socket]] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self.stopping = False
        self._stopped = asyncio.Event()
        self._failures: dict[int, int] = {}
        self.checker = HealthChecker(config, self._health_changed)
        self._reloading = asyncio.Lock()
        self.generation = 0
        self._ready = False
        self._ready_event = asyncio.Event()
        self.pid_file: str | None = None  # the pid file written (removed on exit)
        self.identity: privileges.Identity | None = None  # workers run as this user
        self._reload_pending = False  # a SIGHUP before the ready line: run once ready
        # every worker process not yet reaped, of any generation: all are stopped on shutdown
        self.all_workers: set[WorkerProcess] = set()
        self._spawning = asyncio.Lock()  # held while a worker is being started
        self.control = control.ControlServer(self._control_request)
        self.reload_detail = ""
        # what the workers report, summed; served as /metrics
        self.stats = StatsAggregator()
        self._exporter: PrometheusExporter | None = None  # built at the first /metrics
        self.admin: AdminServer | None = None
        # changes made through the admin API since the last (re)load: replayed to new workers
        self.overrides: list[bytes] = []
        self.server_states: dict[tuple[str, str], ServerState] = {}
        # systemd (Type=notify): READY, RELOADING, STOPPING, watchdog pings; no-ops without it
        self.notifier = notify.Notifier()
        # the state store as /readyz sees it: None until first checked
        self.store_check: Check | None = None
        self._store: RedisStore | None = None
        # servers found in DNS (`discover`), and those of them draining until they are removed
        self.view = SupervisorAdmin(self)
        self.discovery = Discovery(config, self)
        self.dynamic: set[tuple[str, str]] = set()  # (pool, server) added by discovery
        # the fleet (with state.redis): changes every instance applies, in the log's order;
        # those applied since the last reset are applied again after a reload
        self.fleet: Fleet | None = None
        self.fleet_log: list[Change] = []
        self.instance = config.state.instance or f"{socket.gethostname()}:{os.getpid()}"
        self.draining: dict[tuple[str, str], float] = {}  # -> deadline (time.monotonic())
        # run-time access entries and bans: kept across reloads
        state = config.state
        redis: RedisStore | None = None
        if state.redis:  # redis-py costs ~20 MiB per process: imported only where it is used
            from portico.state.redis_store import RedisStore

            redis = RedisStore(state.redis, state.timeout)
        self.security = SecurityTables(lambda m: self.broadcast(m, keep=False), redis)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # before anything else: SIGHUP's default action would kill the supervisor
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        _check_pid_file(self.config.pid_file)
        await self.control.start()
        try:
            return await self._run()
        finally:
            await self.control.close()
            _remove_pid(self.pid_file)
            # closing the loop would give SIGTERM/SIGINT their default action back: a second
            # SIGTERM during the last steps of a stop (a service manager's, an impatient
            # operator's) would kill the process, and its exit status, instead of being the
            # no-op it is while stopping
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_IGN)

    async def _run(self) -> int:
        count = self.config.worker_count()
        for listener in self.config.listeners:
            self.sockets[listener.name] = bind(listener, count)
        await self._start_admin()
        self.identity = self._identity(self.config)  # before any worker starts
        self._watch_store()
        await self.discovery.first()  # workers start with the servers DNS names
        await self._start_fleet()  # ... and the fleet's changes (after: they may drain those)
        for slot in range(count):
            await self._spawn(slot)
        self.checker.start()
        self.discovery.start()
        tasks.spawn(self._drain_removed())
        if self.security.redis is not None:
            tasks.spawn(self.security.poll())
        if await self._unless_stopping([w.ready for w in self.workers.values()]):
            self._say_ready(count)
        await self._stopped.wait()
        # a reload under way gives up (it sees `stopping`); one queued behind it is refused
        async with self._reloading:
            pass
        if self.admin is not None:
            await self.admin.close()
        if self.security.redis is not None:
            await self.security.redis.close()
        self.checker.stop()
        self.discovery.stop()
        if self.fleet is not None:
            await self.fleet.close()
        await self._stop_workers()
        if self._store is not None:
            await self._store.close()
        self._close_sockets()
        log.info("stopped")
        return 0

    def _say_ready(self, count: int) -> None:
        listening = ", ".join(
            f"{listener.name} {_SCHEMES[listener.protocol]}://{_bound(self.sockets[listener.name][0])}"
            for listener in self.config.listeners
        )
        if self.admin is not None:
            scheme = "https" if self.admin.tls else "http"
            listening += f"; admin {scheme}://{self.admin.address}"
        self.pid_file = self.config.pid_file
        _write_pid(self.pid_file)
        self._ready = True
        self._ready_event.set()
        forkserver.trim_heap()  # what starting freed goes back to the kernel
        print(f"portico: ready, {count} worker(s), listening on {listening}", flush=True)
        self.notifier.ready(f"{count} worker(s), listening on {listening}")
        interval = notify.watchdog_interval()
        if interval:
            tasks.spawn(self._watchdog(interval))
        if self._reload_pending:
            self._reload_pending = False
            log.info("running the reload asked for while starting")
            tasks.spawn(self.reload())

    async def _unless_stopping(self, events: list[asyncio.Event]) -> bool:
        """Wait until every one of `events` is set; False if shutdown begins first. Whatever
        it waited on is ended and retrieved before it returns (or is cancelled), so no task
        or future outlives it."""

        async def every() -> None:
            for event in events:
                await event.wait()

        waits = [tasks.spawn(every()), tasks.spawn(self._stopped.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        done = waits[0]
        return done.done() and not done.cancelled() and not self.stopping

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 while this event loop turns: a supervisor stuck in a blocking call
        misses its pings, and systemd restarts it (WatchdogSec=)."""
        while not self.stopping:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    @staticmethod
    def _identity(config: Config) -> privileges.Identity | None:
        """The user workers switch to (`user:`/`group:`), as NGINX's and HAProxy's do: the
        supervisor keeps its own, so a reload can still bind a new port below 1024."""
        try:
            identity = privileges.resolve(config.user, config.group)
        except privileges.PrivilegeError as exc:
            raise StartupError(str(exc)) from None
        if identity is not None and os.geteuid() not in (0, identity.uid):
            raise StartupError(
                f"user {identity.user!r} is set, but Portico runs as uid {os.geteuid()}, not "
                "root: start it as root (workers switch once listening), or remove user/group"
            )
        return identity

    def _watch_store(self) -> None:
        """With `state.redis`, ping it every second for /readyz (an instance that cannot reach
        the shared state would split rate limits and stick tables from the fleet's)."""
        url = self.config.state.redis
        if url is None:
            return
        from portico.state.redis_store import RedisStore

        self._store = RedisStore(url, max(self.config.state.timeout, 0.5))
        tasks.spawn(self._ping_store(self._store))

    async def _ping_store(self, store: RedisStore) -> None:
        while not self.stopping and store is self._store:
            ok = await store.ping()
            detail = "answers PING" if ok else f"{store.url_for_logs} does not answer"
            self.store_check = {"ok": ok, "detail": detail}
            await asyncio.sleep(STORE_CHECK_INTERVAL)

    # -- servers found in DNS ------------------------------------------------------------------

    def discovered(self, pool: str, change: Changes, *, initial: bool) -> None:
        """What a DNS lookup changed in `pool` (`Discovery`'s sink): new servers are added
        (slow start, except those Portico starts with), removed ones drain first, weights
        follow the SRV records."""
        if pool not in self.config.pools:
            return
        names = {server.name for server in self.config.pools[pool].servers}
        for found in change.added:
            key = (pool, found.name)
            if key in self.draining:  # back before it was gone: take traffic again
                del self.draining[key]
                self.view.set_state(pool, found.name, "ready")
                self.view.set_weight(pool, found.name, found.weight)
                continue
            if found.name in names:
                if key not in self.dynamic:
                    log.info("pool %s: %s is in the config already", pool, found.name)
                continue
            server = ServerConfig(
                address=parse_address(found.name), weight=found.weight, name=found.name
            )
            self.dynamic.add(key)
            self.view.add_server(pool, server, slow_start=not initial)
        for found in change.reweighted:
            if (pool, found.name) in self.dynamic:
                self.view.set_weight(pool, found.name, found.weight)
        for name in change.removed:
            key = (pool, name)
            if key in self.dynamic and key not in self.draining:
                self.view.set_state(pool, name, "drain")
                self.draining[key] = time.monotonic() + self.config.resolver.drain_timeout

    async def _drain_removed(self) -> None:
        """Take out servers DNS no longer names once nothing is in flight on them (as the
        workers' next stats say) or their drain time is over."""
        while not self.stopping:
            await asyncio.sleep(DRAIN_CHECK_INTERVAL)
            now = time.monotonic()
            merged = self.stats.merged()
            for key, deadline in list(self.draining.items()):
                pool, name = key
                busy = merged.value("backend_in_flight", pool, name) or 0
                # the drain must have reached the workers' stats first (sent every second)
                started = deadline - self.config.resolver.drain_timeout
                if now - started < 1.5 or (busy and now < deadline):
                    continue
                del self.draining[key]
                self.dynamic.discard(key)
                if pool in self.config.pools and any(
                    s.name == name for s in self.config.pools[pool].servers
                ):
                    self.view.remove_server(pool, name)
                    log.info("pool %s: %s removed (no longer in DNS, drained)", pool, name)

    @property
    def exporter(self) -> PrometheusExporter:
        """/metrics, built when first asked for (prometheus-client is loaded only then)."""
        if self._exporter is None:
            from portico.observe.prometheus import PrometheusExporter

            self._exporter = PrometheusExporter(self.stats, self._own_metrics)
        return self._exporter

    def _own_metrics(self) -> Iterator[Metric]:
        """The supervisor's own series for /metrics: DNS discovery's lookups and failures."""
        from portico.observe.prometheus import CounterMetricFamily, GaugeMetricFamily

        discovery = self.discovery
        labels = ["pool", "entry"]
        lookups = CounterMetricFamily(
            "portico_discovery_lookups", "DNS lookups of discovery entries.", labels=labels
        )
        failures = CounterMetricFamily(
            "portico_discovery_failures",
            "DNS lookups that failed or named no server (the last good set was kept).",
            labels=labels,
        )
        servers = GaugeMetricFamily(
            "portico_discovery_servers", "Servers the last good answer named.", labels=labels
        )
        for key in sorted(discovery.entries):
            lookups.add_metric(list(key), discovery.lookups[key])
            failures.add_metric(list(key), discovery.failures[key])
            servers.add_metric(list(key), len(discovery.known.get(key, ())))
        yield from (lookups, failures, servers)

    def _restart_discovery(self, config: Config) -> None:
        """A reload: discovery for the new config, keeping the last good set of every entry
        still there, added to the new workers at once (no slow start: they are not new)."""
        self.discovery.stop()
        self.discovery = Discovery(config, self, known=self.discovery.known)
        self.dynamic = set()
        self.draining = {}
        for (pool, _), found in self.discovery.carried().items():
            self.discovered(pool, Changes(added=found), initial=True)

    # -- the fleet --------------------------------------------------------------------------------

    async def _start_fleet(self) -> None:
        url = self.config.state.redis
        if url is None:
            return
        from portico.fleet import RESET, Fleet

        fleet = Fleet(url, self.instance, self._fleet_info, timeout=1.0)
        for kind in FLEET_KINDS:
            fleet.register(kind, self._fleet_apply)
        fleet.register(RESET, self._fleet_reset)
        self.fleet = fleet
        await fleet.start()

    def _fleet_info(self) -> dict[str, Any]:
        """What this instance's heartbeat says (GET /api/fleet lists them)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "admin": self.admin.address if self.admin is not None else None,
            "generation": self.generation,
            "ready": self.readiness()["ready"],
            "workers": len(self.workers),
            "changes": len(self.fleet_log),
        }

    def _fleet_apply(self, change: Change, *, record: bool = True) -> None:
        """Apply one change of the fleet's log here, if this instance has its pool and
        server (an instance with another config skips what does not concern it)."""
        kind, pool, server = change.get("kind"), change.get("pool"), change.get("server")
        pools = self.config.pools
        if not isinstance(pool, str) or pool not in pools:
            log.info("fleet: %s for pool %r: no such pool here, skipped", kind, pool)
            return
        names = {s.name for s in pools[pool].servers}
        if kind == "add_server":
            new = ServerConfig.model_validate(change["new"])
            if new.name not in names:
                self.view.add_server(pool, new)
        elif server not in names:
            log.info("fleet: %s for %s/%s: no such server here, skipped", kind, pool, server)
            return
        elif kind == "weight":
            self.view.set_weight(pool, server, int(change["weight"]))
        elif kind == "state":
            self.view.set_state(pool, server, change["state"])
        elif kind == "remove_server" and len(pools[pool].servers) > 1:
            self.view.remove_server(pool, server)
        if record:
            self.fleet_log.append(change)

    def _fleet_reset(self, change: Change) -> None:
        """Asked through any instance: forget the fleet's changes and go back to the file."""
        log.info("fleet: reset by %s: reloading the file", change.get("by", {}).get("instance"))
        self.fleet_log = []
        tasks.spawn(self.reload())

    async def fleet_change(self, change: Change, by: dict[str, str]) -> None:
        from portico.admin.api import AdminError, FleetDown  # asked through the admin API

        if self.fleet is None:
            raise AdminError(
                "fleet-wide changes go through Redis: set state.redis", error="no fleet"
            )
        from portico.fleet import FleetUnavailable

        try:
            await self.fleet.publish(change, by)
        except FleetUnavailable as exc:
            raise FleetDown(str(exc)) from None

    async def fleet_view(self) -> FleetView:
        from portico.admin.api import AdminError, FleetDown  # asked through the admin API

        if self.fleet is None:
            raise AdminError("the fleet needs state.redis", error="no fleet")
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(2.0):
                instances = await self.fleet.instances()
                changes = await self.fleet.history(50)
        except (OSError, TimeoutError, RedisError) as exc:
            raise FleetDown(f"Redis does not answer: {exc}") from None
        return {"instance": self.instance, "instances": instances, "changes": changes}

    def readiness(self) -> Readiness:
        """What /readyz and `portico health --ready` report: listening, workers up, config
        loaded, and the state store reachable when the config has one."""
        expected = self.config.worker_count()
        # any generation: during a reload the old workers serve until the new ones are ready
        up = sum(
            1
            for worker in self.all_workers
            if worker.ready.is_set()
            and not worker.draining.is_set()
            and worker.process.returncode is None
        )
        listening = self._ready and all(
            sock.fileno() != -1 for socks in self.sockets.values() for sock in socks
        )
        store: Check | None = None
        if self.config.state.redis is not None:
            store = self.store_check or {"ok": False, "detail": "not checked yet"}
        return readiness(
            started=self._ready,
            stopping=self.stopping,
            listening=listening,
            listeners=len(self.sockets),
            workers_up=up,
            workers_expected=expected,
            config=f"{self.path}, generation {self.generation}",
            store=store,
        )

    async def _control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request on the control socket (`portico.control`)."""
        running = self.path
        if request["type"] == "hello":
            return {"type": "hello", "pid": os.getpid(), "config": running}
        if request["type"] == "health":
            return {"type": "health", **self.readiness()}
        if request["type"] != "reload":
            return {"type": "error", "detail": f"unknown request {request['type']!r}"}
        refused = {"type": "reloaded", "ok": False, "config": running}
        asked = str(request.get("config", ""))
        if not _same_file(asked, self.filename):
            return {**refused, "error": "other-config", "detail": f"this Portico runs {running}"}
        if self.stopping:
            return {**refused, "error": "stopping", "detail": "Portico is stopping"}
        ok = await self.reload()
        return {
            "type": "reloaded",
            "ok": ok,
            "config": running,
            "generation": self.generation,
            "detail": self.reload_detail,
        }

    async def _start_admin(self) -> None:
        admin = self.config.admin
        if admin is None:
            return  # and the admin API, the explain engine, prometheus-client are never loaded
        from portico.admin import AdminServer, resolve_token
        from portico.admin.server import admin_tls_context

        try:
            token = resolve_token(admin.token, admin.token_env)
            users = {u.name: resolve_token(u.token, u.token_env) or "" for u in admin.users}
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.admin = AdminServer(SupervisorAdmin(self), token, users=users)
        try:
            tls = admin_tls_context(admin.tls) if admin.tls is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"admin.tls: {exc}") from None
        try:
            await self.admin.start(admin.bind.host, admin.bind.port, tls=tls)
        except OSError as exc:
            self.admin = None
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {admin.bind} (admin): {reason}") from None

    def broadcast(self, message: bytes, *, keep: bool = True) -> None:
        """Tell every worker; with `keep`, every worker started later too."""
        if keep:
            self.overrides.append(message)
        for worker in self.workers.values():
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(message)

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): every worker reopens its access log files."""
        message = channel.encode("reopen")
        for worker in self.workers.values():
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(message)

    def request_reload(self) -> None:
        if self.stopping:
            log.warning("stopping: reload ignored")
        elif not self._ready:
            if not self._reload_pending:
                log.info("reload asked for while starting: it runs once ready")
            self._reload_pending = True
        else:
            tasks.spawn(self.reload())

    async def reload(self) -> bool:
        """Zero-downtime reload (SIGHUP): validate the file again; if it is bad, say so and keep
        running as before. If it is good, start new workers with it on the same listening
        sockets, and only once they are ready ask the old ones to drain and exit. One asked
        for while Portico starts runs once it is ready; none runs once it stops."""
        if not self._ready:
            await self._unless_stopping([self._ready_event])
        async with self._reloading:
            if self.stopping:
                log.warning("reload not started: Portico is stopping")
                self.reload_detail = "Portico is stopping"
                return False
            log.info("reloading %s", self.filename)
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                if not self.stopping:
                    self.notifier.ready(f"generation {self.generation}")

    async def _reload(self) -> bool:
        """The reload itself, under the reload lock."""
        try:
            text = _read(self.filename)  # a small local file: the control plane may block
            config = parse_config(text, self.filename)
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            self.reload_detail = str(exc)
            return False
        except OSError as exc:
            log.error("reload refused, cannot read %s: %s", self.filename, exc.strerror)
            self.reload_detail = f"cannot read {self.filename}: {exc.strerror}"
            return False
        try:
            identity = self._identity(config)
            sockets = self._sockets_for(config)
        except StartupError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            self.reload_detail = str(exc)
            return False
        old_workers = list(self.workers.values())
        old_sockets = self.sockets
        self.config, self.config_text, self.sockets = config, text, sockets
        self.identity = identity
        self.generation += 1
        self.overrides = []  # the file is the truth again
        self.server_states = {}
        self.checker.stop()
        self.checker = HealthChecker(config, self._health_changed)
        self.workers = {}
        self._restart_discovery(config)  # before the new workers start: they get its servers
        for change in self.fleet_log:  # a reload does not undo what the fleet decided
            self._fleet_apply(change, record=False)
        for slot in range(config.worker_count()):
            await self._spawn(slot)  # none once stopping: the sockets are closing
        self.checker.start()
        self.discovery.start()
        ready = await self._unless_stopping([w.ready for w in self.workers.values()])
        if ready:
            for worker in old_workers:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    worker.writer.write(channel.encode("stop", reload=True))
            # when reload() returns, every new connection reaches a new worker
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    await self._unless_stopping([w.draining for w in old_workers])
        kept = {id(sock) for socks in sockets.values() for sock in socks}
        for socks in old_sockets.values():
            for sock in socks:
                if id(sock) not in kept:
                    sock.close()  # a listener the new config dropped, or whose address changed
        if not ready:
            # shutdown began: it stops every worker, the old ones and those started here
            log.warning("reload interrupted: Portico is stopping")
            self.reload_detail = "interrupted: Portico is stopping"
            return False
        if config.pid_file != self.pid_file:  # it moved: no stale one left behind
            _remove_pid(self.pid_file)
            self.pid_file = config.pid_file
            _write_pid(self.pid_file)
        log.info(
            "reloaded %s: generation %d, %d worker(s); the old ones drain",
            self.filename,
            self.generation,
            len(self.workers),
        )
        print(f"portico: reloaded, generation {self.generation}", flush=True)
        self.reload_detail = f"reloaded {self.filename}"
        return True

    def _sockets_for(self, config: Config) -> dict[str, list[socket.socket]]:
        """Listening sockets for `config`: the running ones where the address is the same (so
        no connection is refused, and none queued for a slot is lost, during a reload), more of
        them if there are more workers now, new ones for new addresses."""
        running = {
            (listener.bind if listener.bind.port else listener.name): self.sockets[listener.name]
            for listener in self.config.listeners
        }
        count = config.worker_count()
        out: dict[str, list[socket.socket]] = {}
        made: list[socket.socket] = []
        try:
            for listener in config.listeners:
                key = listener.bind if listener.bind.port else listener.name
                socks = running.get(key)
                if socks is None:
                    socks = bind(listener, count)
                else:
                    socks = add_slots(listener, socks, count)
                made += [sock for sock in socks if sock not in running.get(key, ())]
                out[listener.name] = socks
        except StartupError:
            for sock in made:
                sock.close()
            raise
        return out

    def _close_sockets(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()

    def request_stop(self) -> None:
        if not self.stopping:
            log.info("stopping: draining workers (grace %.1fs)", self.config.shutdown_grace)
            self.notifier.stopping()
        self.stopping = True
        self._stopped.set()

    async def _spawn(self, slot: int) -> None:
        """Start the worker of `slot` on the current sockets; nothing once shutdown began
        (`_stop_workers` waits for a start under way, then closes the sockets)."""
        async with self._spawning:
            if not self.stopping:
                await self._start_worker(slot)

    async def _start_worker(self, slot: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # the worker's arguments; an int i stands for fds[i] (numbered as the worker sees it)
        argv: list[forkserver.Arg] = ["--channel", 0]
        if self.identity is not None:
            identity = self.identity
            argv += ["--user", f"{identity.user}:{identity.uid}:{identity.gid}"]
        fds = [child.fileno()]
        count = self.config.worker_count()
        for name, socks in self.sockets.items():
            for sock in slot_sockets(socks, slot, count):
                argv += ["--listen", (f"{name}=", len(fds))]
                fds.append(sock.fileno())
        process = await self._fork_or_spawn(argv, fds)
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=CHANNEL_LIMIT)
        writer.write(channel.encode("config", text=self.config_text, filename=self.filename))
        for health in self.checker.down():  # a new worker learns what the others know
            writer.write(channel.encode("health", pool=health.pool, server=health.server, up=False))
        for message in self.overrides:  # ... and the changes made through the admin API
            writer.write(message)
        for message in self.security.messages():  # ... and the access entries and bans
            writer.write(message)
        self.stats.started(process.pid)
        worker = WorkerProcess(slot, process, writer, reader, time.monotonic())
        self.workers[slot] = worker
        self.all_workers.add(worker)
        tasks.spawn(self._watch(worker))

    async def _fork_or_spawn(
        self, argv: list[forkserver.Arg], fds: list[int]
    ) -> asyncio.subprocess.Process | forkserver.ForkedProcess:
        """A worker process: forked by the fork server (sharing its pages), or spawned as a new
        Python process when there is none (not Linux, disabled) or it has died."""
        if self.forkserver is not None:
            try:
                return await self.forkserver.spawn(argv, fds)
            except forkserver.ForkServerGone as exc:
                log.error("the fork server is gone (%s): workers start as new processes", exc)
                self.forkserver = None
        args = [sys.executable, "-m", "portico.worker", *forkserver.render(argv, fds)]
        return await asyncio.create_subprocess_exec(*args, pass_fds=fds)

    def _health_changed(self, pool: str, server: str, up: bool) -> None:
        """An active check changed its verdict: every worker hears it at once."""
        message = channel.encode("health", pool=pool, server=server, up=up)
        for worker in self.workers.values():
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(message)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Read a worker's messages; when its channel closes, it has died or stopped."""
        while True:
            try:
                message = await channel.receive(worker.reader)
            except (ValueError, ConnectionError):
                message = None
            if message is None:
                break
            if message["type"] == "ready":
                self._failures.pop(worker.slot, None)
                worker.ready.set()
            elif message["type"] == "draining":
                worker.draining.set()
            elif message["type"] == "invalidate":
                # a worker's cache invalidated a URI (an unsafe request): the others drop it
                relay = channel.encode("invalidate", uri=str(message.get("uri", "")))
                for other in self.workers.values():
                    if other is not worker:
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            other.writer.write(relay)
            elif message["type"] == "ban":
                try:
                    self.security.add_ban(Ban.from_json(message["ban"]))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("worker pid %d: bad ban: %s", worker.process.pid, exc)
            elif message["type"] == "stats":
                try:
                    self.stats.update(worker.process.pid, message["stats"])
                except ValueError as exc:
                    log.error("worker pid %d: bad stats snapshot: %s", worker.process.pid, exc)
        code = await worker.process.wait()
        self.all_workers.discard(worker)
        self.stats.exited(worker.process.pid)
        worker.ready.set()
        worker.draining.set()
        if self.stopping or self.workers.get(worker.slot) is not worker:
            return
        failures = self._failures[worker.slot] = self._failures.get(worker.slot, 0) + 1
        delay = min(RESTART_BACKOFF_MAX, 0.1 * 2 ** (failures - 1))
        log.error(
            "worker %d (pid %d) exited with %s; restarting in %.1fs",
            worker.slot,
            worker.process.pid,
            code,
            delay,
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(worker.slot)

    async def _stop_workers(self) -> None:
        async with self._spawning:
            pass  # a worker being started is known once this returns; none starts after
        # every generation: old workers still draining after a reload, and the workers a
        # reload cut short by this shutdown started
        workers = list(self.all_workers)
        for worker in workers:
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(channel.encode("stop"))
        # refuse new connections at once rather than queue them where no one will accept them
        self._close_sockets()
        limit = self.config.shutdown_grace + 5.0
        waits = [asyncio.create_task(w.process.wait()) for w in workers]  # noqa: TID251
        _, pending = await asyncio.wait(waits, timeout=limit)
        for worker in workers:
            if worker.process.returncode is None:
                log.error("worker pid %d did not stop in time: killing it", worker.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)


class SupervisorAdmin:
    """The supervisor as the admin API sees it (`portico.admin.SupervisorView`)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def listeners(self) -> list[ListenerView]:
        from portico.admin.api import listener_views

        s = self.supervisor
        addresses = {name: _bound(socks[0]) for name, socks in s.sockets.items()}
        return listener_views(s.config.listeners, addresses, s.stats.merged())

    def pools(self) -> list[PoolView]:
        from portico.admin.api import pool_views

        s = self.supervisor
        health = {(h.pool, h.server): (h.state.up, h.last_detail) for h in s.checker.servers}
        return pool_views(s.config.pools, s.stats.merged(), health=health, states=s.server_states)

    def purge_cache(self, url: str | None, tag: str | None) -> int:
        s = self.supervisor
        s.broadcast(channel.encode("purge", url=url, tag=tag), keep=False)
        return len(s.workers)

    def _change_servers(self, pool: str, servers: tuple[ServerConfig, ...]) -> None:
        s = self.supervisor
        pools = dict(s.config.pools)
        pools[pool] = pools[pool].model_copy(update={"servers": servers})
        s.config = s.config.model_copy(update={"pools": pools})

    def set_weight(self, pool: str, server: str, weight: int) -> None:
        servers = self.supervisor.config.pools[pool].servers
        self._change_servers(
            pool,
            tuple(
                x.model_copy(update={"weight": weight}) if x.name == server else x for x in servers
            ),
        )
        self.supervisor.broadcast(channel.encode("server", pool=pool, server=server, weight=weight))

    def set_state(self, pool: str, server: str, state: ServerState) -> None:
        states = self.supervisor.server_states
        if state == "ready":
            states.pop((pool, server), None)
        else:
            states[pool, server] = state
        self.supervisor.broadcast(channel.encode("server", pool=pool, server=server, state=state))

    def add_server(self, pool: str, server: ServerConfig, *, slow_start: bool = True) -> None:
        """Add `server`; with `slow_start`, it ramps up over the pool's slow_start."""
        self._change_servers(pool, (*self.supervisor.config.pools[pool].servers, server))
        message = channel.encode(
            "add_server",
            pool=pool,
            name=server.name,
            host=server.address.host,
            port=server.address.port,
            weight=server.weight,
            slow_start=slow_start,
        )
        self.supervisor.broadcast(message)

    def remove_server(self, pool: str, server: str) -> None:
        servers = self.supervisor.config.pools[pool].servers
        self._change_servers(pool, tuple(x for x in servers if x.name != server))
        self.supervisor.server_states.pop((pool, server), None)
        self.supervisor.broadcast(channel.encode("remove_server", pool=pool, server=server))

    async def reload(self) -> ReloadResult:
        from portico.admin.api import AdminError

        s = self.supervisor
        if s.stopping:
            raise AdminError("Portico is stopping", error="stopping")
        ok = await s.reload()
        return {"reloaded": ok, "generation": s.generation, "detail": s.reload_detail}

    def metrics(self, accept: str) -> tuple[bytes, str]:
        return self.supervisor.exporter.render(accept)

    def running_config(self) -> Config:
        return self.supervisor.config

    def readiness(self) -> Readiness:
        return self.supervisor.readiness()

    async def fleet_change(self, change: Change, by: dict[str, str]) -> None:
        await self.supervisor.fleet_change(change, by)

    async def fleet(self) -> FleetView:
        return await self.supervisor.fleet_view()

    async def fleet_reset(self, by: dict[str, str]) -> None:
        await self.supervisor.fleet_change({"kind": "reset"}, by)

    def access_entries(self) -> list[RuntimeEntry]:
        return self.supervisor.security.access.live(time.time())

    def add_access(self, entry: RuntimeEntry) -> None:
        self.supervisor.security.add_access(entry)

    def remove_access(self, listener: str, network: str) -> bool:
        return self.supervisor.security.remove_access(listener, network)

    def bans(self) -> list[Ban]:
        return self.supervisor.security.bans.live(time.time())

    def remove_ban(self, listener: str, key: str) -> bool:
        return self.supervisor.security.remove_ban(listener, key)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def run(
    config: Config,
    config_text: str,
    filename: str,
    fork_server: forkserver.ForkServer | None = None,
) -> int:
    supervisor = Supervisor(config, config_text, filename, fork_server)
    try:
        return asyncio.run(supervisor.run())
    except StartupError as exc:
        print(f"portico: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            supervisor._close_sockets()
        if supervisor.forkserver is not None:
            supervisor.forkserver.close()
