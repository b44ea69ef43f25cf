"""End-to-end: the `portico` process as an operator runs it: check, start, stop, worker crashes.

`portico check` and `portico run` report every problem of a config as `file:line key.path:
message` and start nothing; a taken port is said once, plainly. SIGTERM and SIGINT stop Portico
gracefully: requests in flight finish (bounded by `shutdown_grace`), idle connections close at
once, and nothing is left listening. A worker that dies is replaced.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import simple_config
from fakes import Portico, Reply, ResponseReader, connect, request

PROCESS_TIMEOUT = 20.0

VALID = """\
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:8001
      - address: 127.0.0.1:8002
"""

INVALID = """\
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    default_pool: app
pools:
  app:
    retires: 2
    servers:
      - address: 127.0.0.1:8001
      - address: 127.0.0.1:99999
"""
INVALID_PROBLEMS = [
    'portico.yaml:8 pools.app.retires: unknown key "retires"',
    "portico.yaml:11 pools.app.servers[1].address: port 99999 is out of range",
]


def portico_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `portico ARGS` in `tmp_path` as a user would, and wait for it to exit."""
    return subprocess.run(
        [sys.executable, "-m", "portico", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def refuses_connections(port: int) -> bool:
    """True if connecting is refused; False if it connects, or hangs in an accept queue."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> bool:
    """Poll `condition` until it holds; False if it still does not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def send_get(sock: socket.socket, target: str = "/") -> None:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())


def exit_code(proxy: Portico, timeout: float = PROCESS_TIMEOUT) -> int:
    return proxy.proc.wait(timeout=timeout)


# -- portico check / portico run on a config file -----------------------------------------------


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    (tmp_path / "portico.yaml").write_text(VALID.format(port=8080))
    result = portico_command(tmp_path, "check", "portico.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_reports_every_problem_with_file_line_and_key_path(tmp_path: Path) -> None:
    (tmp_path / "portico.yaml").write_text(INVALID.format(port=8080))
    result = portico_command(tmp_path, "check", "portico.yaml")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    for line, expected in zip(lines, INVALID_PROBLEMS, strict=True):
        assert line.startswith(expected)


def test_check_of_a_missing_file_says_so_plainly(tmp_path: Path) -> None:
    result = portico_command(tmp_path, "check", "nowhere.yaml")
    assert result.returncode != 0
    assert "nowhere.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_an_invalid_config_reports_it_and_listens_nowhere(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "portico.yaml").write_text(INVALID.format(port=port))
    result = portico_command(tmp_path, "run", "portico.yaml")
    assert result.returncode != 0
    for expected in INVALID_PROBLEMS:
        assert expected in result.stderr
    assert "ready" not in result.stdout
    assert not is_listening(port)


def test_run_on_a_taken_port_exits_at_once_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "portico.yaml").write_text(VALID.format(port=port))
        started = time.monotonic()
        result = portico_command(tmp_path, "run", "portico.yaml")
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stdout
    assert elapsed < 10.0


# -- graceful stop -------------------------------------------------------------------------------


def _send_to_supervisor(proxy: Portico, sig: int) -> None:
    proxy.proc.send_signal(sig)


def _send_to_every_process(proxy: Portico, sig: int) -> None:
    # Ctrl-C in a terminal: the signal reaches the supervisor and every worker at once
    workers = proxy.worker_pids()
    proxy.proc.send_signal(sig)
    for pid in workers:
        os.kill(pid, sig)


@pytest.mark.parametrize(
    ("sig", "deliver"),
    [
        (signal.SIGTERM, _send_to_supervisor),
        (signal.SIGINT, _send_to_supervisor),
        (signal.SIGINT, _send_to_every_process),
    ],
    ids=["sigterm", "sigint", "ctrl-c-to-process-group"],
)
def test_stop_signal_lets_the_request_in_flight_finish(backends, portico, sig, deliver) -> None:
    arrived = threading.Event()

    def handler(seen):
        arrived.set()
        return Reply(body=b"finished after the signal", delay=1.0)

    slow = backends("slow", handler)
    proxy = portico(simple_config([slow]))
    with connect(proxy.port) as sock:
        send_get(sock)
        assert arrived.wait(10)  # the request is at the server, its answer is a second away
        deliver(proxy, sig)
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert response.body == b"finished after the signal"
    assert response.header("Connection") == "close"  # the client knows not to send more
    assert exit_code(proxy) == 0
    assert not is_listening(proxy.port)


def test_new_connections_are_refused_while_a_request_drains(backends, portico) -> None:
    # A client (or a load balancer in front) must learn at once that this instance is going
    # away, not sit in an accept queue that nobody serves until the last request has finished.
    arrived = threading.Event()

    def handler(seen):
        arrived.set()
        return Reply(action="hang")

    hanging = backends("hanging", handler)
    proxy = portico(simple_config([hanging], top="shutdown_grace: 3s\n"))
    with connect(proxy.port) as sock:
        send_get(sock)
        assert arrived.wait(10)
        proxy.proc.send_signal(signal.SIGTERM)
        refused = wait_until(lambda: refuses_connections(proxy.port), timeout=1.5, interval=0.1)
        still_draining = proxy.proc.poll() is None
    assert still_draining  # checked within the grace time, with the request still in flight
    assert refused


def test_shutdown_grace_bounds_the_wait_for_a_hanging_server(backends, portico) -> None:
    arrived = threading.Event()

    def handler(seen):
        arrived.set()
        return Reply(action="hang")

    hanging = backends("hanging", handler)
    proxy = portico(simple_config([hanging], top="shutdown_grace: 300ms\n"))
    with connect(proxy.port) as sock:
        send_get(sock)
        assert arrived.wait(10)
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        code = exit_code(proxy)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 3.0  # the 300 ms grace, not the 30 s read timeout
    assert not is_listening(proxy.port)


def test_idle_keep_alive_connections_are_closed_at_once_on_stop(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]))  # shutdown_grace: the default 30 s
    with connect(proxy.port) as used, connect(proxy.port) as unused:
        send_get(used)
        assert ResponseReader(used).read().status == 200  # now idle between requests
        assert request(proxy.port).status == 200  # `unused` is surely accepted by now
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert used.recv(1024) == b""  # EOF, not a timeout
        assert unused.recv(1024) == b""
        code = exit_code(proxy)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 5.0


def test_sigterm_repeated_until_it_exits_still_ends_in_a_clean_exit(backends, portico) -> None:
    # an impatient operator or service manager: SIGTERM after SIGTERM (1 ms apart) through the
    # whole stop, its last steps after the event loop closed included; once the loop was closed
    # SIGTERM had its default action back and one arriving then killed the process (-15)
    proxy = portico(simple_config([backends("b0")]))
    assert request(proxy.port).status == 200
    sent = 0
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while proxy.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proxy.proc.send_signal(signal.SIGTERM)
            sent += 1
        time.sleep(0.001)  # the pace of the signals, not a wait for anything
    assert exit_code(proxy) == 0, f"after {sent} SIGTERMs"
    assert sent > 1
    assert not is_listening(proxy.port)


# -- workers ---------------------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_requests_keep_being_served(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]).replace("workers: 1\n", "workers: 2\n"))
    workers = proxy.worker_pids()
    assert len(workers) == 2
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    assert [request(proxy.port).status for _ in range(10)] == [200] * 10  # the other one serves

    def replaced() -> bool:
        now = proxy.worker_pids()
        return len(now) == 2 and victim not in now

    assert wait_until(replaced), proxy.worker_pids()
    replacement = next(pid for pid in proxy.worker_pids() if pid not in workers)
    assert proxy.proc.poll() is None
    assert [request(proxy.port).status for _ in range(10)] == [200] * 10
    assert replacement in proxy.worker_pids()  # the new worker is alive, serving alongside
    assert proxy.stop() == 0  # and a restarted worker stops like the others
    assert not is_listening(proxy.port)


def test_workers_exit_when_the_supervisor_is_killed(backends, portico) -> None:
    # kill -9 of the supervisor must not leave orphan workers holding the port
    proxy = portico(simple_config([backends("b0")]).replace("workers: 1\n", "workers: 2\n"))
    assert len(proxy.worker_pids()) == 2
    proxy.proc.kill()
    assert proxy.proc.wait(timeout=PROCESS_TIMEOUT) == -signal.SIGKILL
    assert wait_until(lambda: refuses_connections(proxy.port), interval=0.1)


# -- signals around a reload -----------------------------------------------------------------


def _trouble(proxy: Portico) -> list[str]:
    """What the log says went wrong: tracebacks, task exceptions nobody retrieved, errors."""
    return [
        line
        for line in proxy.stderr_lines
        if "Traceback" in line or "never retrieved" in line or " ERROR " in line
    ]


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _hup_then_term(proxy: Portico) -> None:
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.proc.send_signal(signal.SIGTERM)


def _two_hups_then_term(proxy: Portico) -> None:
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.proc.send_signal(signal.SIGHUP)  # waits for the first reload
    proxy.proc.send_signal(signal.SIGTERM)


def _term_while_new_workers_start(proxy: Portico) -> None:
    old = set(proxy.worker_pids())
    proxy.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: bool(set(proxy.worker_pids()) - old), interval=0.005)
    proxy.proc.send_signal(signal.SIGTERM)  # the reload waits for them to be ready


@pytest.mark.parametrize(
    "signals",
    [_hup_then_term, _two_hups_then_term, _term_while_new_workers_start],
    ids=["reload-starting", "reload-queued", "reload-waiting-for-workers"],
)
def test_sigterm_during_a_reload_stops_cleanly(backends, portico, signals) -> None:
    proxy = portico(simple_config([backends("b0")]).replace("workers: 1\n", "workers: 4\n"))
    workers = set(proxy.worker_pids())
    signals(proxy)
    workers |= set(proxy.worker_pids())  # and those of the new generation, started by now
    assert proxy.wait_exit(PROCESS_TIMEOUT) == 0
    assert _trouble(proxy) == [], "".join(proxy.stderr_lines)
    # no worker of either generation outlives the supervisor, or holds the socket
    assert [pid for pid in workers if _running(pid)] == []
    assert refuses_connections(proxy.port)


def test_a_sighup_while_starting_reloads_once_ready(backends, portico) -> None:
    def hup_while_starting(proc: subprocess.Popen[bytes]) -> None:
        # the supervisor has its signal handlers once it starts workers; it is ready only
        # when all four are
        assert wait_until(lambda: bool(Portico.children(proc.pid)), interval=0.005)
        proc.send_signal(signal.SIGHUP)

    config = simple_config([backends("b0")]).replace("workers: 1\n", "workers: 4\n")
    proxy = portico(config, before_ready=hup_while_starting)
    assert proxy.wait_for_stderr("reload asked for while starting") is not None
    assert "generation 1" in proxy.wait_stdout("portico: reloaded")
    assert request(proxy.port).status == 200
    assert proxy.stop() == 0
    assert _trouble(proxy) == []


# -- one listening socket per worker (SO_REUSEPORT) ------------------------------------------------


ESTABLISHED, LISTEN = "01", "0A"  # /proc/net/tcp's states


def _sockets_on(pid: int, port: int, state: str) -> set[str]:
    """The inodes of `pid`'s TCP sockets on local `port` (IPv4) in `state`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    with open(f"/proc/{pid}/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, st, inode = fields[1], fields[3], fields[9]
            if st == state and int(local.split(":")[1], 16) == port and inode in inodes:
                found.add(inode)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_connections_spread_over_both_workers(backends, portico) -> None:
    # each worker accepts on its own socket: the kernel spreads connections by their 4-tuple's
    # hash (every connection has its own source port), not by which worker woke first
    proxy = portico(simple_config([backends("b0")]).replace("workers: 1\n", "workers: 2\n"))
    workers = proxy.worker_pids()
    assert len(workers) == 2
    listening = [_sockets_on(pid, proxy.port, LISTEN) for pid in workers]
    assert all(listening), listening
    assert not listening[0] & listening[1], listening  # not one queue both wake up for
    conns = []
    try:
        for _ in range(200):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            conns.append(conn)  # kept open: its worker still holds it below
        counts = [len(_sockets_on(pid, proxy.port, ESTABLISHED)) for pid in workers]
    finally:
        for conn in conns:
            conn.close()
    assert sum(counts) == 200, counts
    assert min(counts) >= 50, counts  # each ~100; below 50 of 200 by chance: ~1e-13


def test_run_on_a_port_held_with_so_reuseport_exits_naming_the_address(tmp_path: Path) -> None:
    # the workers' sockets share their port with SO_REUSEPORT: another program of this user
    # listening there with it too must not be joined silently (it would take a share)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "portico.yaml").write_text(
            VALID.format(port=port).replace("workers: 1", "workers: 2")
        )
        result = portico_command(tmp_path, "run", "portico.yaml")
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr
    assert "ready" not in result.stdout


def test_reload_to_fewer_workers_leaves_no_socket_unserved(backends, portico) -> None:
    # slot 2's socket stays open (it may hold queued connections): a remaining worker takes
    # it over, so every new connection is answered, whichever socket the kernel picks
    config = simple_config([backends("b0")])
    proxy = portico(config.replace("workers: 1\n", "workers: 3\n"))
    proxy.path.write_text(config.replace("workers: 1\n", "workers: 2\n"))
    proxy.proc.send_signal(signal.SIGHUP)
    assert "generation 1" in proxy.wait_stdout("portico: reloaded")
    assert [request(proxy.port).status for _ in range(60)] == [200] * 60
    assert len(proxy.worker_pids()) == 2
    proxy.path.write_text(config.replace("workers: 1\n", "workers: 4\n"))  # and back up
    proxy.proc.send_signal(signal.SIGHUP)
    assert "generation 2" in proxy.wait_stdout("portico: reloaded")
    assert [request(proxy.port).status for _ in range(60)] == [200] * 60
    assert proxy.stop() == 0
    assert not is_listening(proxy.port)
