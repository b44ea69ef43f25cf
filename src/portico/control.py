"""The supervisor's control socket: how `portico reload` (and a starting Portico) finds out
whether a pid belongs to a running Portico supervisor, which file it runs, and asks it to
reload.

A pid alone proves nothing: a stale pid file may name a process that died, or a pid the system
gave since to an unrelated server, which a signal would kill. So the supervisor listens on a
Unix socket named after its own pid, and only a process that answers there is one. On Linux
the name is in the abstract namespace: nothing on disk, nothing left behind by a crash, gone
with the process. Elsewhere it is a file in /tmp (mode 0600), removed on exit.

One request per connection, one line each way in the channel's format (`portico.channel`):
``hello`` → ``hello`` (pid, absolute config path, generation); ``reload`` (config path) →
``reloaded`` (ok, generation, detail). Only the supervisor's own user, or root, is answered
(SO_PEERCRED on Linux, the file's mode elsewhere): the same people who may signal it. Never
decides anything itself: the supervisor answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from portico import channel

log = logging.getLogger("portico")

REQUEST_TIMEOUT = 5.0  # a client has this long to send its one line
MAX_LINE = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class NotRunning(Exception):
    """No Portico supervisor answers for this pid."""


def address(pid: int) -> str:
    """The control socket of the supervisor whose pid is `pid`."""
    if sys.platform == "linux":
        return f"\0portico-supervisor-{pid}"
    return f"/tmp/portico-supervisor-{pid}.sock"


def _peer_allowed(sock: socket.socket | None) -> bool:
    """The peer runs as this process's user or as root (on Linux; elsewhere the socket file's
    mode already said so)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return sys.platform != "linux"
    size = struct.calcsize("3i")
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, size))
    return uid in (0, os.getuid())


class ControlServer:
    """Listens on this process's control socket and hands each request to `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.path = address(os.getpid())
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Listen; False (logged) if the socket cannot be made: Portico runs on without it,
        and `portico reload` will say it cannot find this supervisor."""
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_LINE
            )
        except OSError as exc:
            log.warning("no control socket (portico reload will not find this process): %s", exc)
            return False
        if not self.path.startswith("\0"):
            os.chmod(self.path, 0o600)
        return True

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), REQUEST_TIMEOUT)
        if not self.path.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _peer_allowed(writer.get_extra_info("socket")):
                return
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            try:
                request = channel.decode(line)
            except ValueError:
                return
            try:
                reply = await self.handler(request)
            except Exception:
                log.exception("control request %r failed", request.get("type"))
                return
            writer.write(channel.encode(reply.pop("type"), **reply))
            await writer.drain()
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("control request failed: %s", exc)
        finally:
            writer.close()


def ask(pid: int, kind: str, timeout: float, **fields: Any) -> dict[str, Any]:
    """Send one request to the supervisor `pid` and return its answer (blocking: for the
    command line). Raises NotRunning if no Portico supervisor listens for that pid,
    PermissionError if it runs as another user, TimeoutError if it does not answer in time."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(address(pid))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(pid) from None
        sock.sendall(channel.encode(kind, **fields))
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_LINE:
            chunk = sock.recv(MAX_LINE)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise
        raise NotRunning(pid) from exc
    finally:
        sock.close()
    if not data:
        # it accepted, then closed without a word: our user may not ask it (SO_PEERCRED)
        raise PermissionError(f"process {pid} closed the control connection without answering")
    try:
        return channel.decode(data)
    except ValueError:
        raise NotRunning(pid) from None
