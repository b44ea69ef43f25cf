"""The fork server ("zygote"): a process that has imported the worker's code once, and forks
each worker from itself, so every worker shares those pages with it and with the supervisor.

Why: each Python process pays ~40 MiB before it does anything (the interpreter, asyncio,
pydantic, the config models). A worker spawned as `python -m portico.worker` pays it again; a
forked one shares those pages copy-on-write. The supervisor imports the worker's modules too
before it forks the fork server (`preload`), and freezes everything imported out of the
collector's reach (`gc.freeze`): the fork server then writes almost nothing after the fork, and
each page stays one physical page for the supervisor, the fork server and every worker until
one of them writes to it. (Importing the worker's modules in the fork server instead keeps them
out of the supervisor's RSS, but its imports dirty pages both had shared: one run each, 63.8
against 57.9 MiB of PSS for the one-worker tree.)

Owns: starting the fork server (before the supervisor's event loop or any thread exists:
`start`), its request loop (blocking, single-threaded, no event loop ever: `_serve`), and the
supervisor's side of one spawn (`ForkServer.spawn`, `ForkedProcess`). Never imports the
worker or the supervisor: the caller (the CLI) passes what to preload and what to run.

One spawn: the supervisor sends the worker's arguments and file descriptors (its channel and
listening sockets, by SCM_RIGHTS); the fork server forks twice, and the grandchild, orphaned
at once, is re-parented to the supervisor (a child subreaper, Linux's `PR_SET_CHILD_SUBREAPER`):
so the supervisor waits for its workers as before (a pidfd tells it when one exits) and a dead
fork server loses no worker. The grandchild closes every descriptor but 0-2 and those sent,
restores the signal dispositions, and runs the worker. Plug-ins are imported by each worker
after the fork (the fork server is started before any config is parsed), so a reload still
runs the current plug-in code; Portico's own code is the fork server's (upgrading Portico
needs a restart, not a reload). With the supervisor gone, the fork server reads EOF and exits.

Linux only (subreaper, pidfd); elsewhere, or with `PORTICO_NO_FORKSERVER=1`, or if the fork
server dies, workers are spawned as new processes as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence

DISABLE_ENV = "PORTICO_NO_FORKSERVER"
MAX_FDS = 1024  # descriptors one spawn may pass (a channel and the slot's listening sockets)
MAX_REQUEST = 1 << 20
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
# what the fork server ignores: Ctrl-C and `kill` to the process group reach it too, and it
# ends when the supervisor does (EOF on its socket), never before a worker it may still start
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# one argument of a worker: a string, fds[i] (an int i), or a prefix and fds[i] ("web=", i)
Arg = str | int | tuple[str, int]


def render(argv: Sequence[Arg | list[str | int]], fds: Sequence[int]) -> list[str]:
    """The worker's argv with each descriptor reference replaced by its number in `fds`."""
    out = []
    for arg in argv:
        if isinstance(arg, str):
            out.append(arg)
        elif isinstance(arg, int):
            out.append(str(fds[arg]))
        else:
            prefix, index = arg
            out.append(f"{prefix}{fds[int(index)]}")
    return out


class ForkServerGone(Exception):
    """The fork server is not there to ask (it died, or never started)."""


def _prctl(option: int, value: int | bytes) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim): what start-up
    allocated and freed (parsing, imports) stops counting in this process's memory, and
    before a fork, is not inherited. A no-op without glibc."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def set_name(name: str) -> None:
    """Name this process for `ps -o comm`, `top` and `pgrep` (at most 15 bytes; Linux)."""
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_NAME, name.encode()[:15])


def available() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        return False
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))  # Linux 5.3: how the supervisor waits for workers
    except (AttributeError, OSError):
        return False
    return True


def start(preload: Callable[[], object], run: Callable[[list[str]], int]) -> ForkServer | None:
    """Fork the fork server from this process; None where it cannot run (see `available`).

    Call before any event loop or thread exists. `preload` runs here, before the fork (it
    imports the worker's modules); `run(argv)` runs a worker in each forked grandchild and
    returns its exit code."""
    if not available() or not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    preload()
    # what is imported now is shared with the fork server and every worker: keep the
    # collector from writing to it (the Instagram recipe: collect, then freeze, then fork)
    gc.collect()
    gc.freeze()
    trim_heap()
    _flush()  # nothing buffered is written twice (once per process)
    pid = os.fork()
    if pid == 0:  # the fork server
        code = 1
        try:
            ours.close()
            for signum in _IGNORED:
                signal.signal(signum, signal.SIG_IGN)
            set_name("portico-zygote")
            code = _serve(theirs, run)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    return ForkServer(ours, pid)


def _serve(sock: socket.socket, run: Callable[[list[str]], int]) -> int:
    """Answer spawn requests until EOF; the fork server's whole life."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
        except ConnectionError:
            return 0
        if not data:
            return 0  # the supervisor is gone (or closed us): so are we
        try:
            argv = render(json.loads(data)["argv"], fds)
            reply: dict[str, object] = {"pid": _fork_worker(sock, fds, argv, run)}
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            return 0


def _fork_worker(
    sock: socket.socket, fds: Sequence[int], argv: list[str], run: Callable[[list[str]], int]
) -> int:
    """Fork twice: the grandchild runs the worker, re-parented to the supervisor (the subreaper)
    once the intermediate child exits. Returns the grandchild's pid."""
    r, w = os.pipe()
    _flush()
    middle = os.fork()
    if middle == 0:
        code = 1
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_worker(sock, fds, argv, run)  # never returns
            os.write(w, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(middle, 0)  # the grandchild is the supervisor's child from here on
    if not answer:
        raise OSError("the intermediate child died before forking the worker")
    return int(answer)


def _become_worker(
    sock: socket.socket, fds: Sequence[int], argv: list[str], run: Callable[[list[str]], int]
) -> None:
    code = 1
    try:
        sock.close()
        _close_fds_except({0, 1, 2, *fds})
        # the signals the worker handles go back to their defaults; SIGHUP and SIGUSR1 stay
        # ignored until its loop handles them (a reload's SIGHUP must not kill a starting one)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        set_name("portico-worker")
        code = run(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        import logging

        logging.shutdown()
        _flush()
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor not in `keep` (what subprocess's close_fds does, after a fork)."""
    try:
        open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(os.sysconf("SC_OPEN_MAX")))
    for fd in open_fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


class ForkedProcess:
    """A worker forked by the fork server, as the supervisor waits for it: the part of
    `asyncio.subprocess.Process` the supervisor uses (pid, returncode, wait, kill)."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = loop.create_future()
        self._loop = loop
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        """The pidfd became readable: the process has exited; collect its status."""
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # not our child after all (reaped elsewhere)
            code = 255
        self.returncode = code
        self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """The supervisor's side: ask for a worker, stop the fork server."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = asyncio.Lock()  # one request at a time: answers come in order

    async def spawn(self, argv: Sequence[Arg], fds: Sequence[int]) -> ForkedProcess:
        """Fork a worker running `argv` (see `render`: the descriptors are numbered as the
        worker will see them). Raises ForkServerGone if the fork server is not there."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self.sock.fileno() < 0:
                raise ForkServerGone("closed")
            try:
                self.sock.setblocking(False)
                socket.send_fds(self.sock, [json.dumps({"argv": list(argv)}).encode()], fds)
                data = await loop.sock_recv(self.sock, MAX_REQUEST)
            except OSError as exc:
                self.close()
                raise ForkServerGone(str(exc)) from None
            if not data:
                self.close()
                raise ForkServerGone("it exited")
            reply = json.loads(data)
            if "pid" not in reply:
                raise OSError(f"the fork server could not start a worker: {reply.get('error')}")
            return ForkedProcess(int(reply["pid"]), loop)

    def close(self) -> None:
        """Stop the fork server (EOF on its socket) and collect it."""
        if self.sock.fileno() >= 0:
            self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
