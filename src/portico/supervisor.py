"""The control plane: owns the listening sockets and the worker processes.

Binds every listener once, starts `workers` processes that inherit the sockets, hands each the
validated config over its channel, restarts a worker that dies, and on SIGTERM/SIGINT asks every
worker to drain and waits for them (bounded by the grace time). Never touches a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from portico import channel, tasks
from portico.admin import AdminError, AdminServer, ReloadResult, resolve_token
from portico.admin.api import ListenerView, PoolView, ServerState, listener_views, pool_views
from portico.config.load import ConfigError, parse_config
from portico.config.schema import Config, ListenerConfig, ServerConfig
from portico.health.checker import HealthChecker
from portico.observe.prometheus import PrometheusExporter
from portico.observe.stats import StatsAggregator

log = logging.getLogger("portico")

RESTART_BACKOFF_MAX = 5.0
CHANNEL_LIMIT = 16 * 1024 * 1024  # longest channel line: a stats snapshot of a large config
_SCHEMES = {"http": "http", "https": "https", "tcp": "tcp"}


class StartupError(Exception):
    """Portico cannot start (a port is taken, say): said once, plainly, and exit non-zero."""


def bind(listener: ListenerConfig) -> socket.socket:
    host, port = listener.bind.host, listener.bind.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(
            f"cannot listen on {listener.bind} (listener {listener.name!r}): {reason}"
        ) from None
    sock.listen(listener.backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _write_pid(path: str | None) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")


def _remove_pid(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            Path(path).unlink()


def _bound(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class WorkerProcess:
    slot: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    draining: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Start, watch and stop the workers of one Portico instance."""

    def __init__(self, config: Config, config_text: str, filename: str) -> None:
        self.config = config
        self.config_text = config_text
        self.filename = filename
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self.stopping = False
        self._stopped = asyncio.Event()
        self._failures: dict[int, int] = {}
        self.checker = HealthChecker(config, self._health_changed)
        self._reloading = asyncio.Lock()
        self.generation = 0
        self._ready = False
        self.reload_detail = ""
        # what the workers report, summed; served as /metrics
        self.stats = StatsAggregator()
        self.exporter = PrometheusExporter(self.stats)
        self.admin: AdminServer | None = None
        # changes made through the admin API since the last (re)load: replayed to new workers
        self.overrides: list[bytes] = []
        self.server_states: dict[tuple[str, str], ServerState] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # before anything else: SIGHUP's default action would kill the supervisor
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        for listener in self.config.listeners:
            self.sockets[listener.name] = bind(listener)
        await self._start_admin()
        count = self.config.worker_count()
        for slot in range(count):
            await self._spawn(slot)
        self.checker.start()
        await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))
        listening = ", ".join(
            f"{listener.name} {_SCHEMES[listener.protocol]}://{_bound(self.sockets[listener.name])}"
            for listener in self.config.listeners
        )
        if self.admin is not None:
            listening += f"; admin http://{self.admin.address}"
        _write_pid(self.config.pid_file)
        self._ready = True
        print(f"portico: ready, {count} worker(s), listening on {listening}", flush=True)
        await self._stopped.wait()
        if self.admin is not None:
            await self.admin.close()
        self.checker.stop()
        await self._stop_workers()
        for sock in self.sockets.values():
            sock.close()
        _remove_pid(self.config.pid_file)
        log.info("stopped")
        return 0

    async def _start_admin(self) -> None:
        admin = self.config.admin
        if admin is None:
            return
        try:
            token = resolve_token(admin.token, admin.token_env)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.admin = AdminServer(SupervisorAdmin(self), token)
        try:
            await self.admin.start(admin.bind.host, admin.bind.port)
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
        if not self._ready:
            log.warning("still starting: reload ignored (send it again once ready)")
        elif not self.stopping:
            tasks.spawn(self.reload())

    async def reload(self) -> bool:
        """Zero-downtime reload (SIGHUP): validate the file again; if it is bad, say so and keep
        running as before. If it is good, start new workers with it on the same listening
        sockets, and only once they are ready ask the old ones to drain and exit."""
        async with self._reloading:
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
                sockets = self._sockets_for(config)
            except StartupError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                self.reload_detail = str(exc)
                return False
            old_workers = list(self.workers.values())
            old_sockets = self.sockets
            self.config, self.config_text, self.sockets = config, text, sockets
            self.generation += 1
            self.overrides = []  # the file is the truth again
            self.server_states = {}
            self.checker.stop()
            self.checker = HealthChecker(config, self._health_changed)
            self.workers = {}
            for slot in range(config.worker_count()):
                await self._spawn(slot)
            self.checker.start()
            await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))
            for worker in old_workers:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    worker.writer.write(channel.encode("stop", reload=True))
            # when reload() returns, every new connection reaches a new worker
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(w.draining.wait() for w in old_workers)), 10.0
                )
            kept = {id(sock) for sock in sockets.values()}
            for sock in old_sockets.values():
                if id(sock) not in kept:
                    sock.close()  # a listener the new config dropped
            log.info(
                "reloaded %s: generation %d, %d worker(s); the old ones drain",
                self.filename,
                self.generation,
                len(self.workers),
            )
            print(f"portico: reloaded, generation {self.generation}", flush=True)
            self.reload_detail = f"reloaded {self.filename}"
            return True

    def _sockets_for(self, config: Config) -> dict[str, socket.socket]:
        """Listening sockets for `config`: the running ones where the address is the same (so
        no connection is refused during a reload), new ones for new addresses."""
        running = {
            (listener.bind if listener.bind.port else listener.name): self.sockets[listener.name]
            for listener in self.config.listeners
        }
        out: dict[str, socket.socket] = {}
        made: list[socket.socket] = []
        try:
            for listener in config.listeners:
                key = listener.bind if listener.bind.port else listener.name
                sock = running.get(key)
                if sock is None:
                    sock = bind(listener)
                    made.append(sock)
                out[listener.name] = sock
        except StartupError:
            for sock in made:
                sock.close()
            raise
        return out

    def request_stop(self) -> None:
        if not self.stopping:
            log.info("stopping: draining workers (grace %.1fs)", self.config.shutdown_grace)
        self.stopping = True
        self._stopped.set()

    async def _spawn(self, slot: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child.set_inheritable(True)
        args = [sys.executable, "-m", "portico.worker", "--channel", str(child.fileno())]
        fds = [child.fileno()]
        for name, sock in self.sockets.items():
            args += ["--listen", f"{name}={sock.fileno()}"]
            fds.append(sock.fileno())
        process = await asyncio.create_subprocess_exec(*args, pass_fds=fds)
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=CHANNEL_LIMIT)
        writer.write(channel.encode("config", text=self.config_text, filename=self.filename))
        for health in self.checker.down():  # a new worker learns what the others know
            writer.write(channel.encode("health", pool=health.pool, server=health.server, up=False))
        for message in self.overrides:  # ... and the changes made through the admin API
            writer.write(message)
        self.stats.started(process.pid)
        worker = WorkerProcess(slot, process, writer, reader, time.monotonic())
        self.workers[slot] = worker
        tasks.spawn(self._watch(worker))

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
            elif message["type"] == "stats":
                try:
                    self.stats.update(worker.process.pid, message["stats"])
                except ValueError as exc:
                    log.error("worker pid %d: bad stats snapshot: %s", worker.process.pid, exc)
        code = await worker.process.wait()
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
        workers = list(self.workers.values())
        for worker in workers:
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(channel.encode("stop"))
        # refuse new connections at once rather than queue them where no one will accept them
        for sock in self.sockets.values():
            sock.close()
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
        s = self.supervisor
        addresses = {name: _bound(sock) for name, sock in s.sockets.items()}
        return listener_views(s.config.listeners, addresses, s.stats.merged())

    def pools(self) -> list[PoolView]:
        s = self.supervisor
        health = {(h.pool, h.server): (h.state.up, h.last_detail) for h in s.checker.servers}
        return pool_views(s.config.pools, s.stats.merged(), health=health, states=s.server_states)

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

    def add_server(self, pool: str, server: ServerConfig) -> None:
        self._change_servers(pool, (*self.supervisor.config.pools[pool].servers, server))
        message = channel.encode(
            "add_server",
            pool=pool,
            name=server.name,
            host=server.address.host,
            port=server.address.port,
            weight=server.weight,
        )
        self.supervisor.broadcast(message)

    def remove_server(self, pool: str, server: str) -> None:
        servers = self.supervisor.config.pools[pool].servers
        self._change_servers(pool, tuple(x for x in servers if x.name != server))
        self.supervisor.server_states.pop((pool, server), None)
        self.supervisor.broadcast(channel.encode("remove_server", pool=pool, server=server))

    async def reload(self) -> ReloadResult:
        s = self.supervisor
        if s.stopping:
            raise AdminError("Portico is stopping", error="stopping")
        ok = await s.reload()
        return {"reloaded": ok, "generation": s.generation, "detail": s.reload_detail}

    def metrics(self, accept: str) -> tuple[bytes, str]:
        return self.supervisor.exporter.render(accept)

    def running_config(self) -> Config:
        return self.supervisor.config


def run(config: Config, config_text: str, filename: str) -> int:
    supervisor = Supervisor(config, config_text, filename)
    try:
        return asyncio.run(supervisor.run())
    except StartupError as exc:
        print(f"portico: {exc}", file=sys.stderr)
        return 1
    finally:
        for sock in supervisor.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
