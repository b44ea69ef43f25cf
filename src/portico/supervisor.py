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
from portico.config.load import ConfigError, parse_config
from portico.config.schema import Config, ListenerConfig
from portico.health.checker import HealthChecker

log = logging.getLogger("portico")

RESTART_BACKOFF_MAX = 5.0
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

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for listener in self.config.listeners:
            self.sockets[listener.name] = bind(listener)
        count = self.config.worker_count()
        for slot in range(count):
            await self._spawn(slot)
        self.checker.start()
        await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))
        listening = ", ".join(
            f"{listener.name} {_SCHEMES[listener.protocol]}://{_bound(self.sockets[listener.name])}"
            for listener in self.config.listeners
        )
        print(f"portico: ready, {count} worker(s), listening on {listening}", flush=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        _write_pid(self.config.pid_file)
        await self._stopped.wait()
        self.checker.stop()
        await self._stop_workers()
        for sock in self.sockets.values():
            sock.close()
        _remove_pid(self.config.pid_file)
        log.info("stopped")
        return 0

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): every worker reopens its access log files."""
        message = channel.encode("reopen")
        for worker in self.workers.values():
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.writer.write(message)

    def request_reload(self) -> None:
        if not self.stopping:
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
                return False
            except OSError as exc:
                log.error("reload refused, cannot read %s: %s", self.filename, exc.strerror)
                return False
            try:
                sockets = self._sockets_for(config)
            except StartupError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                return False
            old_workers = list(self.workers.values())
            old_sockets = self.sockets
            self.config, self.config_text, self.sockets = config, text, sockets
            self.generation += 1
            self.checker.stop()
            self.checker = HealthChecker(config, self._health_changed)
            self.workers = {}
            for slot in range(config.worker_count()):
                await self._spawn(slot)
            self.checker.start()
            await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))
            for worker in old_workers:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    worker.writer.write(channel.encode("stop"))
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
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        writer.write(channel.encode("config", text=self.config_text, filename=self.filename))
        for health in self.checker.down():  # a new worker learns what the others know
            writer.write(channel.encode("health", pool=health.pool, server=health.server, up=False))
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
        code = await worker.process.wait()
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
        _ = os  # keep import for platforms without pass_fds
