"""Test doubles over real sockets: backends that record what they receive, and a running Portico.

`FakeBackend` is a real HTTP/1.1 server on 127.0.0.1 (port chosen by the kernel), run on its own
event loop in a thread so that plain synchronous tests can drive it. By default it answers
`200` with `X-Backend: <name>` and the body `<name>`; a test passes `handler` to answer
otherwise (status, headers, body as bytes or chunks, framing, or misbehaviour).
`Portico` starts the real `portico run` command on an inline config and waits for its ready
line, never for a fixed time.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT = 20.0


@dataclass
class Seen:
    """A request as a backend received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    connection: int = 0  # which of the backend's connections carried it (1 = the first)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Reply:
    """How a FakeBackend answers one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""
    framing: str = "length"  # length | chunked | close | none (no framing header at all)
    reason: str = "OK"
    delay: float = 0.0  # seconds before the head is sent
    interim: list[int] = field(default_factory=list)  # 1xx statuses sent first
    action: str = ""  # "" | "close" (drop without answering) | "hang" | "truncate"
    keep_alive: bool = True
    # the body's size given up front: an iterable body is then streamed chunk by chunk as it is
    # generated, never held whole (for bodies larger than memory should hold)
    length: int | None = None
    # close the connection right after this response without announcing it (no Connection:
    # close): a server dropping a keep-alive connection that a proxy may still have pooled
    silent_close: bool = False
    raw: bytes = b""  # sent as is instead of a response (garbage, say), then the connection closes
    trailers: list[tuple[str, str]] = field(default_factory=list)  # after a chunked body
    hold_last: threading.Event | None = None  # the last body chunk waits until this is set


Handler = Callable[["Seen"], Reply]


class _BackendProtocol(asyncio.Protocol):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Seen | None = None
        self.head_bytes = b""
        self.in_head = True
        self.body: list[bytes] = []
        self.queue: asyncio.Queue[Seen | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()
        self.backend._flow_changed(blocked=True)

    def resume_writing(self) -> None:
        self.writable.set()
        self.backend._flow_changed(blocked=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.connections += 1
        self.backend.open_connections += 1
        self.backend._transports.add(self.transport)  # type: ignore[arg-type]
        self.index = self.backend.connections
        self.task = asyncio.get_running_loop().create_task(self.serve())
        # held until done: a task the loop only knows weakly is garbage-collected mid-wait
        self.backend._tasks.add(self.task)
        self.task.add_done_callback(self.backend._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.open_connections -= 1
        self.backend._transports.discard(self.transport)
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        self.backend.bytes_received += len(data)
        if self.in_head:
            self.head_bytes += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the upgrade request itself is complete; this fake never switches protocols
        except httptools.HttpParserError:
            self.backend.errors.append(data)
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.current = Seen("", "", "", [], connection=self.index)
        self.body = []
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()
        self.current.version = self.parser.get_http_version()
        end = self.head_bytes.find(b"\r\n\r\n")
        self.current.raw_head = self.head_bytes[: end + 4]
        self.head_bytes = b""
        self.in_head = False
        with self.backend.lock:
            self.backend.in_flight += 1
            self.backend.max_in_flight = max(self.backend.max_in_flight, self.backend.in_flight)
        self.backend.heads.append(self.current)
        expect = (self.current.header("Expect") or "").lower()
        if self.backend.continue_on_expect and expect == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the body, as asked
        if self.backend.hold_body and self.transport is not None:
            self.transport.pause_reading()  # a server that does not take the body (yet)
            self.backend._held.append(self)
        if self.backend.answer_early:
            self.queue.put_nowait(self.current)  # answered now; the body is read after

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))
        self.backend.body_bytes += len(body)
        if self.backend.discard_body:
            self.backend.body_crc = zlib.crc32(body, self.backend.body_crc)
            self.body.clear()

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.body = b"".join(self.body)
        self.backend.seen.append(self.current)
        if not self.backend.answer_early:
            self.queue.put_nowait(self.current)
        self.in_head = True

    async def serve(self) -> None:
        while True:
            seen = await self.queue.get()
            if seen is None or self.transport is None:
                return
            reply = self.backend.handler(seen)
            try:
                await self.answer(seen, reply)
            finally:
                with self.backend.lock:
                    self.backend.in_flight -= 1
            if not reply.keep_alive or reply.framing == "close" or reply.action:
                return
            if reply.silent_close or reply.raw:
                return

    async def answer(self, seen: Seen, reply: Reply) -> None:
        transport = self.transport
        assert transport is not None
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.action == "close":
            transport.close()
            return
        if reply.action == "hang":
            await asyncio.Event().wait()
        if reply.raw:
            transport.write(reply.raw)
            transport.close()
            return
        for status in reply.interim:
            transport.write(f"HTTP/1.1 {status} Continue\r\n\r\n".encode())
        chunks: Iterable[bytes]
        if reply.length is not None and not isinstance(reply.body, bytes):
            chunks, total, last = reply.body, reply.length, -1  # streamed as generated
        else:
            chunks = [reply.body] if isinstance(reply.body, bytes) else list(reply.body)
            total, last = sum(len(c) for c in chunks), len(chunks) - 1
        headers = [("X-Backend", self.backend.name), *reply.headers]
        if reply.framing == "length":
            headers.append(("Content-Length", str(total)))
        elif reply.framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        if not reply.keep_alive or reply.framing == "close":
            headers.append(("Connection", "close"))
        head = f"HTTP/1.1 {reply.status} {reply.reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        transport.write(head.encode("latin-1"))
        no_body = seen.method == "HEAD" or reply.status in (204, 304)
        for index, chunk in enumerate(chunks):
            if no_body:
                break
            if reply.hold_last is not None and index == last:
                await asyncio.get_running_loop().run_in_executor(None, reply.hold_last.wait, 15)
            if reply.action == "truncate" and index == last:
                await asyncio.sleep(0)
                transport.abort()
                return
            if reply.framing == "chunked":
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            self.backend.body_bytes_sent += len(chunk)
            if transport.is_closing():
                return  # the peer is gone (a real server's send fails): no more to send
            await self.writable.wait()  # flow control: a slow reader slows this backend
        if reply.framing == "chunked" and not no_body:
            trailer = "".join(f"{k}: {v}\r\n" for k, v in reply.trailers)
            transport.write(b"0\r\n" + trailer.encode("latin-1") + b"\r\n")
        if reply.framing == "close" or reply.silent_close:
            transport.close()


class FakeBackend:
    """A real HTTP server on a free loopback port, in a thread; see the module docstring."""

    def __init__(
        self, name: str, handler: Handler | None = None, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.name = name
        self.host = host  # another loopback address (127.0.0.2) gives a second server a port
        self.handler: Handler = handler or (lambda seen: Reply(body=name.encode()))
        self.seen: list[Seen] = []  # complete requests
        self.heads: list[Seen] = []  # every request head, even if its body never completed
        self.errors: list[bytes] = []
        self.connections = 0
        self.open_connections = 0
        self.bytes_received = 0
        self.body_bytes = 0
        self.discard_body = False
        self.continue_on_expect = False  # answer `Expect: 100-continue` with 100 at the head
        self.body_crc = 0  # zlib.crc32 of the body bytes received while discard_body is set
        self.body_bytes_sent = 0  # response body bytes handed to the socket
        self.hold_body = False  # stop reading each request after its head, until release_body()
        # answer each request as soon as its head is in, before its body (NGINX's `return 200`
        # does); the body is read and thrown away after, unless hold_body
        self.answer_early = False
        self._held: list[_BackendProtocol] = []
        # flow control of the response writer, for wait_stalled()
        self.write_blocked = False
        self.flow_changes = 0
        self._flow = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()  # open connections, closed by stop()
        self._stopped = False
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        # port 0: any free port; a given port (one a stopped backend had): the same server back
        self._bind_port = port
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self._start())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self) -> int:
        # SO_REUSEADDR (asyncio's default on POSIX): a port left in TIME_WAIT can be bound again
        self._server = await self.loop.create_server(
            lambda: _BackendProtocol(self), self.host, self._bind_port, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _flow_changed(self, *, blocked: bool) -> None:
        with self._flow:
            self.write_blocked = blocked
            self.flow_changes += 1
            self._flow.notify_all()

    def wait_stalled(self, quiet: float = 0.5, timeout: float = 15.0) -> bool:
        """Wait until writing a response is held by flow control (the peer stopped reading) and
        stays held for `quiet` seconds; False if that does not happen within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._flow:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if not self._flow.wait_for(lambda: self.write_blocked, timeout=remaining):
                    return False
                seen = self.flow_changes
                if not self._flow.wait_for(
                    lambda seen=seen: self.flow_changes != seen,
                    timeout=min(quiet, remaining),
                ):
                    return True

    def release_body(self) -> None:
        """Resume reading the requests held by `hold_body`."""

        def resume() -> None:
            for protocol in self._held:
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.resume_reading()
            self._held.clear()

        self.loop.call_soon_threadsafe(resume)

    def stop(self) -> None:
        """Die as a killed server process does: the listener and every open connection are
        closed (reset), and its port is free to bind again. Stopping twice does nothing."""
        if self._stopped:
            return
        self._stopped = True

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            # a connection accepted just now gets its transport in the next turns of the loop;
            # cancelling that step would leak its socket (CPython 3.11 does not close it), so
            # let it finish, then abort everything
            for _ in range(3):
                await asyncio.sleep(0)
            # answers still waiting (delay, hang) end here, not as "Task was destroyed" noise;
            # waited for, since a cancelled accept step closes its half-made transport only as
            # it unwinds (and that close completes a turn later)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=2)
            # as Server.abort_clients() (Python 3.13+) does, on every version
            for transport in list(self._transports):
                transport.abort()
            for _ in range(3):  # let connection_lost close the sockets before the loop stops
                await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def isolated_resolver(tmp_path: Path) -> list[str]:
    """A command prefix under which the system resolver asks only 127.0.0.1 (where nothing
    answers DNS), in a mount namespace of its own: a test's name lookups never leave the
    machine. Needs root (unshare, mount), as CI has."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = f'mount --bind "{conf}" /etc/resolv.conf && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def pool_yaml(backends: Iterable[FakeBackend], indent: str = "      ") -> str:
    return "".join(f"{indent}- address: {b.address}\n{indent}  name: {b.name}\n" for b in backends)


FORKSERVER_NAME = "portico-zygote"  # its /proc/PID/comm (portico.forkserver)


class Portico:
    """`portico run` on an inline config, as a user runs it; `url` once it said it is ready."""

    def __init__(
        self,
        config: str,
        tmp_path: Path,
        prefix: Sequence[str] = (),
        before_ready: Callable[[subprocess.Popen[bytes]], None] | None = None,
        env: dict[str, str] | None = None,
        filename: str = "portico.yaml",
    ) -> None:
        """`prefix`: a command that runs Portico (e.g. `isolated_resolver`'s); `before_ready`
        is called with the process as soon as it started (e.g. to signal it while it starts);
        `env`: variables added to its environment; `filename`: the config file's name in
        `tmp_path` (several instances in one test need one each)."""
        path = tmp_path / filename
        path.write_text(config)
        self.path = path
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "portico", "run", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stderr_lines: list[str] = []
        self.stderr_times: list[float] = []  # when each line arrived (time.monotonic())
        self._stderr_changed = threading.Condition()
        self._pump: threading.Thread | None = None
        if before_ready is not None:
            before_ready(self.proc)
        self.ready_line = self._wait_ready()
        ports = re.findall(r"(?:https?|tcp)://[\d.]+:(\d+)", self.ready_line)
        self.port = int(ports[0])
        self.ports = [int(p) for p in ports]

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=deadline - time.monotonic()):
                line = key.fileobj.readline().decode()  # type: ignore[union-attr]
                if key.fileobj is self.proc.stderr:
                    if line:
                        self._stderr_line(line)
                    continue
                if line.startswith("portico: ready"):
                    sel.close()
                    self._drain_stderr()
                    return line
                if not line and self.proc.poll() is not None:
                    raise RuntimeError("portico exited:\n" + "".join(self.stderr_lines))
        raise RuntimeError("portico did not become ready:\n" + "".join(self.stderr_lines))

    def _drain_stderr(self) -> None:
        def pump() -> None:
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                self._stderr_line(raw.decode(errors="replace"))

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def _stderr_line(self, line: str) -> None:
        with self._stderr_changed:
            self.stderr_lines.append(line)
            self.stderr_times.append(time.monotonic())
            self._stderr_changed.notify_all()

    def wait_for_stderr(self, text: str, timeout: float = 10.0, start: int = 0) -> float | None:
        """Wait for a stderr line containing `text`, among the lines from index `start` on
        (pass `len(proxy.stderr_lines)` to ignore what was said before); the time.monotonic()
        at which it arrived, or None if none arrives within `timeout` seconds."""

        def arrived() -> float | None:
            for index in range(start, len(self.stderr_lines)):
                if text in self.stderr_lines[index]:
                    return self.stderr_times[index]
            return None

        with self._stderr_changed:
            self._stderr_changed.wait_for(lambda: arrived() is not None, timeout=timeout)
            return arrived()

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and for all it wrote to stderr (`stderr_lines`)."""
        code = self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout)
        return code

    def wait_stdout(self, prefix: str, timeout: float = 20.0) -> str:
        """The next stdout line starting with `prefix` (the supervisor prints one per reload)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                code = self.proc.wait(10)
                raise AssertionError(
                    f"portico exited ({code}):\n" + "".join(self.stderr_lines[-30:])
                )
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line:\n" + "".join(self.stderr_lines[-30:]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        return self.children(self.proc.pid)

    def forkserver_pids(self) -> list[int]:
        """The fork server (none with PORTICO_NO_FORKSERVER=1 or off Linux)."""
        return self.children(self.proc.pid, FORKSERVER_NAME)

    @staticmethod
    def children(pid: int, name: str | None = None) -> list[int]:
        """`pid`'s worker processes (its children but the fork server), or its children
        named `name`."""
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        found = []
        for child in map(int, out.stdout.split()):
            try:
                comm = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if (comm == name) if name is not None else (comm != FORKSERVER_NAME):
                found.append(child)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.close()
        return self.proc.returncode

    def __enter__(self) -> Portico:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection made through `listener`, both non-blocking."""
    near = socket.create_connection(listener.getsockname())
    far, _ = listener.accept()
    near.setblocking(False)
    far.setblocking(False)
    return near, far


def read_until_closed(sock: socket.socket, limit: int = 1 << 24) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class ResponseReader:
    """Reads HTTP/1.1 responses one after another from a socket (httptools-parsed)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.eof = False

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(bytes(body))

    def on_message_complete(self) -> None:
        self.done.append(
            Response(
                self.parser.get_status_code(),
                self._headers,
                b"".join(self._body),
                self.parser.get_http_version(),
            )
        )

    def read(self, head_only: bool = False) -> Response:
        """The next complete response; raises EOFError if the connection closes first."""
        while not self.done:
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                with contextlib.suppress(httptools.HttpParserError):
                    self.parser.feed_data(b"")
                if not self.done:
                    raise EOFError("connection closed before a complete response")
                break
            self.parser.feed_data(data)
        return self.done.pop(0)


def request(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Response:
    """One request on a fresh connection."""
    with connect(port) as sock:
        hdrs = {"Host": "test.local", **(headers or {})}
        if body:
            hdrs.setdefault("Content-Length", str(len(body)))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        sock.sendall(head.encode() + b"\r\n" + body)
        return ResponseReader(sock).read()


def iter_chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = os.urandom(size)
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield block[:n]
        sent += n


class Load:
    """Requests on fresh connections, one after another, until stopped (bounded)."""

    def __init__(self, port: int, limit: int = 20_000) -> None:
        self.port = port
        self.limit = limit
        self.ok = 0
        self.failures: list[str] = []
        self.answered_by: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            try:
                response = request(self.port, target="/load")
            except (OSError, EOFError) as exc:
                self.failures.append(repr(exc))
                continue
            if response.status != 200:
                self.failures.append(f"status {response.status}")
            else:
                self.ok += 1
                self.answered_by.append(response.header("X-Backend") or "")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll state no client can read an event for (what a backend saw, the admin API, a
    snapshot sent every second) until `check` returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # a polling interval, bounded by the deadline


def three_free_ports() -> int:
    """A base port whose next two are free too (checked by binding them, with SO_REUSEADDR as
    the demo's servers bind): `portico demo`'s --backend-port. Drawn below the kernel's
    ephemeral range: next to a port bind(0) picks lie those it hands to outgoing connections,
    which a busy machine (a benchmark, the suite's other tests) keeps in TIME_WAIT."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first, last = (10000, low - 3) if low > 12000 else (low + 20000, 65000)
    draw = random.Random()
    for _ in range(100):
        base = draw.randrange(first, last)
        socks = []
        try:
            for port in (base, base + 1, base + 2):
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no three consecutive free ports")


def demo_port(proc: subprocess.Popen[str], timeout: float = READY_TIMEOUT) -> int:
    """The port `portico demo --port 0` (started with stdout=PIPE, text=True) listens on, read
    from its ready line."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                assert line, "demo exited before it was ready"
                found = re.search(r"listening on web http://127\.0\.0\.1:(\d+)", line)
                if found:
                    return int(found.group(1))
    raise AssertionError(f"the demo did not say it was listening within {timeout} s")


class ClientTransport(asyncio.Transport):
    """A client's transport for unit tests that drive a protocol object directly: keeps each
    write (a `writelines` is one write, as a real transport sends it in one go), reports a
    loopback peer, knows which protocol it feeds."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.protocol: Any = None
        self.closing = False
        self.high_water: int | None = None  # the last set_write_buffer_limits(high)

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(bytes(part) for part in parts))

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@contextlib.contextmanager
def worker_with_idle_servers(config: str, idle: int) -> Iterator[Any]:
    """A `Worker` on its own (not running) loop whose listener `web`'s first server already has
    `idle` pooled connections on `ClientTransport`s: a request attaches at once, no socket."""
    from portico.config.load import parse_config
    from portico.upstreams.connections import UpstreamConnection
    from portico.worker import Worker

    loop = asyncio.new_event_loop()
    try:
        worker = Worker(loop, parse_config(config, "<test>"), {})
        backend = worker.settings["web"].pool.backends[0]
        for _ in range(idle):
            upstream = UpstreamConnection(backend, 30.0, 30.0)
            upstream.transport = ClientTransport()
            upstream._deadline = None  # no timers without a running loop
            backend.put_idle(upstream, 0.0)
        yield worker
    finally:
        loop.close()


class FakeTimerHandle:
    """What `FakeLoop.call_at` returns: when it is due, its callback, and whether cancelled."""

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """A clock without an event loop, for timers (`timers.Deadline` and who uses it): time(),
    call_at() and call_exception_handler(); `advance` runs the handles that fall due, in order."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[FakeTimerHandle] = []
        self.errors: list[BaseException] = []

    def time(self) -> float:
        return self.now

    def call_at(
        self, when: float, callback: Callable[[], None], *, context: object = None
    ) -> FakeTimerHandle:
        handle = FakeTimerHandle(when, callback)
        self.handles.append(handle)
        return handle

    def call_exception_handler(self, context: dict[str, object]) -> None:
        exc = context["exception"]
        assert isinstance(exc, BaseException)
        self.errors.append(exc)

    def pending(self) -> list[FakeTimerHandle]:
        return [h for h in self.handles if not h.cancelled]

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [h for h in self.pending() if h.when() <= end]
            if not due:
                break
            handle = min(due, key=FakeTimerHandle.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when())
            handle.callback()
        self.now = end


# -- what a running Portico holds and counts ------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        found = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert found
    return int(found.group(1))


def pipe_kib(pid: int) -> int:
    """KiB held in the pipes of process `pid`: a response body spliced to a client
    (portico.upstreams.splice) waits there, in the kernel's memory, not in the worker's RSS.
    Each pipe is opened again through /proc (a pipe's /proc link opens the pipe itself) and
    asked how many bytes it holds (FIONREAD), once per pipe (both its ends are listed)."""
    total = 0
    seen = set()
    fds = f"/proc/{pid}/fd"
    for name in os.listdir(fds):
        try:
            link = os.readlink(f"{fds}/{name}")
        except OSError:
            continue  # closed meanwhile
        if not link.startswith("pipe:") or link in seen:
            continue
        seen.add(link)
        try:
            fd = os.open(f"{fds}/{name}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            count = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, count)
            total += count[0]
        finally:
            os.close(fd)
    return total // 1024


def held_kib(pid: int) -> int:
    """What the worker holds: its RSS and the bytes in its pipes."""
    return rss_kib(pid) + pipe_kib(pid)


def settled(read: Callable[[], int], quiet: float = 0.5, timeout: float = 20.0) -> int:
    """Poll `read()` until it stops changing for `quiet` seconds; its value then."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def metrics(proxy: Portico, listener: str) -> dict[str, float]:
    """The samples of `listener` in /metrics now, by name (the last one of each name)."""
    port = int(proxy.ready_line.rsplit("admin http://127.0.0.1:", 1)[1].split()[0].rstrip(";"))
    body = request(port, target="/metrics", headers={"Host": f"127.0.0.1:{port}"}).body.decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.labels.get("listener") == listener:
                found[sample.name] = sample.value
    return found


def client_bytes(proxy: Portico, listener: str) -> tuple[float, float]:
    """(received, sent) on `listener`'s client connections, as /metrics says now."""
    found = metrics(proxy, listener)
    return (
        found.get("portico_client_received_bytes_total", -1),
        found.get("portico_client_sent_bytes_total", -1),
    )
