"""Reloads that drop nothing: SIGHUP / `portico reload` under steady load."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import simple_config
from fakes import Load, connect, request
from h2client import H2Client

LOAD_SECONDS = 90.0  # a bound on any load loop below, whatever happens to the reloads
WORKERS = 2  # the reported setup; 4 (the target) passes too, at twice the start-up cost


class KeepAliveLoad:
    """HTTP/1.1 GETs one after another on a keep-alive connection, as a pooling client sends
    them: a new connection once Portico said `Connection: close` or closed the idle one (seen
    before reuse, as urllib3's `is_connection_dropped` sees it), until stopped (bounded)."""

    def __init__(self, port: int, limit: int = 50_000) -> None:
        self.port = port
        self.limit = limit
        self.ok = 0
        self.closed_by_server = 0  # answers with Connection: close: a draining worker's
        self.closed_idle = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        served = 0  # requests the current connection has served
        deadline = time.monotonic() + LOAD_SECONDS
        for _ in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # readable while idle: the server closed it
                self.closed_idle += 1
                served = 0
            try:
                conn.request("GET", "/keep-alive")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{exc!r} after {served} request(s) on the connection")
                conn.close()
                served = 0
                continue
            served += 1
            if response.status != 200:
                self.failures.append(f"status {response.status}")
            else:
                self.ok += 1
            if response.will_close:
                self.closed_by_server += 1
                served = 0  # http.client opens a new connection for the next request
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class H2Load:
    """HTTP/2 GETs one after another on an h2c connection, as a well-behaved client sends them:
    it handles what arrived before it opens a stream (real clients read all the time), and
    after a GOAWAY opens no new stream on that connection (RFC 9113 §6.8) but a new
    connection. A refused or reset stream is a failure: a graceful drain refuses none."""

    def __init__(self, port: int, limit: int = 50_000) -> None:
        self.port = port
        self.limit = limit
        self.ok = 0
        self.goaways = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client: H2Client | None = None
        served = 0
        deadline = time.monotonic() + LOAD_SECONDS
        for _ in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            if client is not None and not self._usable(client):
                client.close()
                client = None
            try:
                if client is None:
                    client = H2Client(connect(self.port))
                    served = 0
                response = client.response(client.request("GET", "/h2-keep-alive"))
            except (OSError, EOFError, AssertionError) as exc:
                self.failures.append(f"{exc!r} after {served} request(s) on the connection")
                if client is not None:
                    client.close()
                client = None
                continue
            served += 1
            if response.reset is not None:
                self.failures.append(f"stream reset ({response.reset}) after {served - 1}")
            elif response.status != 200:
                self.failures.append(f"status {response.status}")
            else:
                self.ok += 1
            if client.goaway is not None:
                self.goaways += 1
                client.close()
                client = None
        if client is not None:
            client.close()

    def _usable(self, client: H2Client) -> bool:
        """Handle the frames that arrived while the connection was idle (a GOAWAY, a PING);
        False if it may carry no new stream."""
        try:
            while select.select([client.sock], [], [], 0)[0]:
                client.read_once()
        except (OSError, EOFError):
            return False  # closed while idle: no request was lost
        if client.goaway is not None:
            self.goaways += 1
            return False
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_five_reloads_under_load_drop_no_request(backends, portico, tmp_path) -> None:
    pool = [backends(name) for name in ("a", "b", "c")]
    pools = [[pool[0]], [pool[1]], [pool[0], pool[2]], [pool[2]], [pool[1], pool[2]], [pool[0]]]
    pid_file = tmp_path / "portico.pid"
    top = f"pid_file: {pid_file}\nshutdown_grace: 5s\n"
    proxy = portico(simple_config(pools[0], top=top))
    load = Load(proxy.port)
    try:
        for version, members in enumerate(pools[1:], start=1):
            proxy.path.write_text(simple_config(members, top=top))
            if version % 2:
                proxy.proc.send_signal(signal.SIGHUP)
            else:  # the command a user types
                done = subprocess.run(
                    [sys.executable, "-m", "portico", "reload", str(proxy.path)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
            assert f"generation {version}" in proxy.wait_stdout("portico: reloaded")
            # every new connection now lands on the new pool
            names = {m.name for m in members}
            for _ in range(6):
                assert request(proxy.port).header("X-Backend") in names
    finally:
        load.stop()
    assert load.failures == []
    assert load.ok > 50


def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b]))
    proxy.path.write_text(proxy.path.read_text().replace("policy: round_robin", "policy: nope"))
    done = subprocess.run(
        [sys.executable, "-m", "portico", "reload", str(proxy.path), "--pid", str(proxy.proc.pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "pools.app.policy" in done.stderr
    assert "reload refused" in done.stderr
    # a SIGHUP with the bad file on disk is refused by the supervisor too
    proxy.proc.send_signal(signal.SIGHUP)
    assert proxy.wait_for_stderr("reload refused", timeout=20) is not None, "no refusal logged"
    assert request(proxy.port).status == 200


def test_slow_download_survives_three_reloads(backends, portico) -> None:
    from fakes import Reply, connect

    total = 8 * 1024 * 1024
    chunk = b"z" * (256 * 1024)
    release = threading.Event()

    def slow_body():  # type: ignore[no-untyped-def]
        for index in range(total // len(chunk)):
            if index == 1:
                release.wait(30)  # hold the download open across the reloads
            yield chunk

    b = backends("slow", lambda seen: Reply(body=slow_body(), length=total))
    proxy = portico(simple_config([b], top="shutdown_grace: 30s\n"))
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        for version in range(1, 4):
            proxy.proc.send_signal(signal.SIGHUP)
            assert f"generation {version}" in proxy.wait_stdout("portico: reloaded")
        release.set()
        received = len(first) - first.index(b"\r\n\r\n") - 4
        while received < total:
            data = sock.recv(1 << 20)
            assert data, f"download cut at {received} of {total} bytes"
            received += len(data)
    assert received == total


# The soak's size: 10 reloads of 2 workers in CI (the code before the fix failed 9-26 requests
# per 20 reloads so); PORTICO_RELOAD_SOAK=20 PORTICO_RELOAD_WORKERS=4 is the target run.
SOAK_RELOADS = int(os.environ.get("PORTICO_RELOAD_SOAK", "10"))
SOAK_WORKERS = int(os.environ.get("PORTICO_RELOAD_WORKERS", str(WORKERS)))


def test_reloads_under_keep_alive_load_fail_no_request(backends, portico) -> None:
    """Clients reusing keep-alive connections (HTTP/1.1 and HTTP/2) across fast reloads: a
    draining worker answers what arrives on its connections (with `Connection: close`, or
    after a GOAWAY) and closes an idle one only in a way no request can cross."""
    b = backends("b")
    config = simple_config([b], top="shutdown_grace: 10s\n", extra_listener="    http2: true\n")
    proxy = portico(config.replace("workers: 1\n", f"workers: {SOAK_WORKERS}\n"))
    http1 = [KeepAliveLoad(proxy.port) for _ in range(2)]
    http2 = [H2Load(proxy.port) for _ in range(2)]
    try:
        for generation in range(1, SOAK_RELOADS + 1):
            proxy.proc.send_signal(signal.SIGHUP)
            assert f"generation {generation}" in proxy.wait_stdout("portico: reloaded")
    finally:
        for load in (*http1, *http2):
            load.stop()
    failures = [f for load in (*http1, *http2) for f in load.failures]
    assert failures == [], f"{len(failures)} failed: {failures[:5]}"
    assert all(load.ok > SOAK_RELOADS for load in (*http1, *http2))
    # the connections were in use when their workers drained, every time
    assert sum(load.closed_by_server for load in http1) >= SOAK_RELOADS
    assert sum(load.goaways for load in http2) >= SOAK_RELOADS


# -- portico reload: which process, which file ------------------------------------------------


def portico_reload(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`portico reload PATH ARGS` as a user types it; waits for it to exit."""
    return subprocess.run(
        [sys.executable, "-m", "portico", "reload", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reload_of_another_file_is_refused_and_the_running_one_stays(
    backends, portico, tmp_path
) -> None:
    a, b = backends("a"), backends("b")
    top = f"pid_file: {tmp_path / 'portico.pid'}\n"
    proxy = portico(simple_config([a], top=top))
    other = tmp_path / "other.yaml"
    other.write_text(simple_config([b], top=top))
    done = portico_reload(other)
    assert done.returncode == 2
    assert str(proxy.path) in done.stderr  # the file it runs, named
    assert "refused" in done.stderr
    assert request(proxy.port).header("X-Backend") == "a"
    # the file it runs is reloaded, and the command waits for the outcome
    proxy.path.write_text(simple_config([b], top=top))
    done = portico_reload(proxy.path)
    assert done.returncode == 0, done.stderr
    assert "generation 1" in done.stdout
    assert request(proxy.port).header("X-Backend") == "b"  # done when the command returned


def test_reload_with_a_stale_pid_file_signals_nothing(tmp_path) -> None:
    pid_file = tmp_path / "portico.pid"
    config = tmp_path / "portico.yaml"
    config.write_text(
        f"pid_file: {pid_file}\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
        "    default_pool: app\npools:\n  app:\n    servers:\n      - address: 127.0.0.1:9\n"
    )
    # the pid was given since to an unrelated process, which SIGHUP would kill
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file.write_text(f"{unrelated.pid}\n")
        done = portico_reload(config)
        assert done.returncode == 2
        assert "not a running Portico" in done.stderr
        assert unrelated.poll() is None  # alive: never signalled
        done = portico_reload(config, "--pid", str(unrelated.pid))
        assert done.returncode == 2
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


def test_the_pid_file_follows_the_config_and_goes_with_portico(backends, portico, tmp_path) -> None:
    first, second = tmp_path / "first.pid", tmp_path / "second.pid"
    b = backends("b")
    proxy = portico(simple_config([b], top=f"pid_file: {first}\n"))
    assert first.read_text().strip() == str(proxy.proc.pid)
    # a second Portico with the same pid file would fight over it: refused
    twin = tmp_path / "twin.yaml"
    twin.write_text(simple_config([b], top=f"pid_file: {first}\n"))
    started = subprocess.run(
        [sys.executable, "-m", "portico", "run", str(twin)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 1
    assert f"names a running Portico (pid {proxy.proc.pid}" in started.stderr
    proxy.path.write_text(simple_config([b], top=f"pid_file: {second}\n"))
    # the new pid file does not exist yet: the running Portico is named by its pid
    assert "give --pid" in portico_reload(proxy.path).stderr
    assert portico_reload(proxy.path, "--pid", str(proxy.proc.pid)).returncode == 0
    assert not first.exists()  # no stale pid file left behind
    assert second.read_text().strip() == str(proxy.proc.pid)
    assert proxy.stop() == 0
    assert not second.exists()


def test_portico_reload_reports_a_reload_the_running_portico_refused(backends, portico) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = portico(simple_config([backends("b")]))
        extra = f"  - name: more\n    bind: 127.0.0.1:{port}\n    default_pool: app\n"
        proxy.path.write_text(proxy.path.read_text().replace("pools:\n", extra + "pools:\n"))
        done = portico_reload(proxy.path, "--pid", str(proxy.proc.pid))
    assert done.returncode == 1
    assert "address already in use" in done.stderr
    assert request(proxy.port).status == 200
