"""Running Portico as a service, end to end: /healthz and /readyz, `portico health`'s exit
codes, systemd's notify protocol on a fake NOTIFY_SOCKET, and binding a port below 1024 as
root with workers running as another user."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import simple_config
from fakes import Portico, eventually, request
from redis_server import RedisServer, free_port, redis_server_binary

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed: scripts/test installs it when run as root")
    server = RedisServer(tmp_path / "redis", binary)
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.stop()


def admin_port(proxy: Portico) -> int:
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, proxy.ready_line
    return int(found.group(1))


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portico", "health", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_probes_answer_anyone_and_portico_health_says_ready_or_why_not(
    portico, backends, redis: RedisServer
) -> None:
    """/healthz and /readyz need no token and accept any Host (balancers probe by name); with
    state.redis, /readyz is 503 while Redis does not answer and `portico health --ready` exits
    1 (alive: 0); once Portico is gone, 2."""
    app = backends("a")
    top = f"admin: {{bind: 127.0.0.1:0, token: secret}}\nstate: {{redis: '{redis.url}'}}\n"
    proxy = portico(simple_config([app], top=top.replace("workers: 1\n", "")))
    port = admin_port(proxy)
    url = f"http://127.0.0.1:{port}"
    refused = request(port, "GET", "/api/pools", headers={"Host": "lb.example.com"})
    assert refused.status == 401
    ready = eventually(
        lambda: (
            (r := request(port, "GET", "/readyz", headers={"Host": "lb.example.com"}))
            and r.status == 200
            and r
        ),
        "/readyz 200",
    )
    checks = json.loads(ready.body)["checks"]
    assert checks["workers"] == {"ok": True, "detail": "1/1 ready"}
    assert checks["state_store"]["ok"] is True
    assert request(port, "GET", "/healthz").status == 200
    assert health("--url", url, "--ready").returncode == 0

    redis.stop()
    eventually(lambda: request(port, "GET", "/readyz").status == 503, "/readyz 503 without Redis")
    result = health("--url", url, "--ready")
    assert result.returncode == 1, result
    assert '"state_store": {"ok": false' in result.stderr
    assert health("--url", url).returncode == 0  # alive all the same
    assert request(proxy.port, "GET", "/").status == 200  # and serving

    redis.start()
    eventually(lambda: health("--url", url, "--ready").returncode == 0, "ready again")
    # ready all through a reload: the old workers serve until the new ones are
    start = len(proxy.stderr_lines)
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20.0
    while not proxy.wait_for_stderr("reloaded", timeout=0.0, start=start):
        assert time.monotonic() < deadline, "no reload"
        answer = request(port, "GET", "/readyz")
        assert answer.status == 200, answer.body
    assert request(port, "GET", "/readyz").status == 200
    proxy.stop()
    result = health("--url", url)
    assert result.returncode == 2, result
    assert "no answer" in result.stderr


def test_portico_health_asks_the_control_socket_without_an_admin_listener(
    portico, backends, tmp_path: Path
) -> None:
    app = backends("a")
    pid_file = tmp_path / "portico.pid"
    proxy = portico(simple_config([app], top=f"pid_file: {pid_file}\n"))
    result = health(str(proxy.path), "--ready")
    assert result.returncode == 0, result
    assert json.loads(result.stdout.removeprefix("portico: "))["checks"]["workers"]["ok"]
    assert health(str(proxy.path), "-q").stdout == ""
    proxy.stop()
    assert health(str(proxy.path)).returncode == 2
    assert health().returncode == 3  # neither a config nor --url
    assert health("--url", "ftp://x").returncode == 3


class FakeNotifySocket:
    """systemd's side of sd_notify: a datagram socket collecting what Portico says."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        """The first message (from those not yet returned) that sets `key` (to `value`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, message in enumerate(self.messages):
                if key in message and (value is None or message[key] == value):
                    del self.messages[: i + 1]
                    return message
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().splitlines()
            self.messages.append(dict(line.split("=", 1) for line in lines))
        raise AssertionError(f"no {key}={value} from Portico; got {self.messages}")


def test_systemd_notify_ready_reloading_stopping_and_watchdog(
    portico, backends, tmp_path: Path
) -> None:
    """Type=notify: READY=1 with MAINPID once serving, WATCHDOG=1 at half WATCHDOG_USEC,
    RELOADING=1 with MONOTONIC_USEC and READY=1 again around a SIGHUP reload, STOPPING=1.
    On an abstract socket (@name); tests/unit/test_notify.py sends to a path."""
    name = f"portico-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeNotifySocket("\0" + name)
    app = backends("a")
    env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
    proxy = portico(simple_config([app]), env=env)
    ready = fake.wait_for("READY", "1")
    assert ready["MAINPID"] == str(proxy.proc.pid)
    assert "listening on web http://127.0.0.1:" in ready["STATUS"]
    for _ in range(3):
        fake.wait_for("WATCHDOG", "1", timeout=2.0)

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proxy.proc.send_signal(signal.SIGHUP)
    reloading = fake.wait_for("RELOADING", "1")
    assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 20_000_000
    again = fake.wait_for("READY", "1")
    assert again["STATUS"] == "generation 1"
    assert request(proxy.port).status == 200

    proxy.proc.send_signal(signal.SIGTERM)
    fake.wait_for("STOPPING", "1")
    assert proxy.wait_exit() == 0
    fake.sock.close()


def _free_low_port() -> int:
    for port in range(900, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1000 on 127.0.0.1")


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert found, status
    real, effective, saved = (int(x) for x in found.groups())
    assert real == effective == saved, status  # no way back to root
    return real


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_binds_a_port_below_1024_and_workers_run_as_the_configured_user(
    portico, backends
) -> None:
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup").gr_gid
    app = backends("a")
    low = _free_low_port()
    config = (
        simple_config([app], top="user: nobody\ngroup: nogroup\n")
        .replace("workers: 1", "workers: 2")
        .replace("bind: 127.0.0.1:0", f"bind: 127.0.0.1:{low}")
    )
    proxy = portico(config)
    assert proxy.port == low
    assert request(low).status == 200
    workers = eventually(lambda: len(w := proxy.worker_pids()) == 2 and w, "two workers")
    for pid in workers:
        assert _uid_of(pid) == nobody.pw_uid
        groups = re.search(r"^Groups:\s*(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
        assert groups is not None
        assert groups.group(1).split() == [str(nogroup)]
    assert _uid_of(proxy.proc.pid) == 0  # the supervisor binds new ports on reloads
    # a worker that dies comes back as the same user
    os.kill(workers[0], signal.SIGKILL)
    replaced = eventually(
        lambda: (w := proxy.worker_pids()) and len(w) == 2 and workers[0] not in w and w,
        "a new worker",
    )
    # it starts as root (to read certificates) and switches before accepting anything
    eventually(
        lambda: all(_uid_of(pid) == nobody.pw_uid for pid in replaced), "the new worker's switch"
    )
    assert request(low).status == 200


def test_an_unknown_user_is_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "p.yaml"
    config.write_text(
        "user: no-such-user-here\n"
        f"listeners: [{{name: web, bind: '127.0.0.1:{port}', default_pool: app}}]\n"
        "pools: {app: {servers: [{address: '127.0.0.1:1'}]}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "portico", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "user 'no-such-user-here' does not exist" in result.stderr


def test_the_shipped_unit_file_is_one_systemd_accepts_as_written() -> None:
    """deploy/systemd/portico.service: `systemd-analyze verify` finds no unknown key or bad
    value (it only warns about those), with this checkout's `portico` as the command."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: scripts/test installs systemd as root")
    unit = (REPO / "deploy" / "systemd" / "portico.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[:1].isalpha()
    )
    assert settings["Type"] == "notify"
    assert settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert "reload" in settings["ExecReload"]
    assert "$MAINPID" in settings["ExecReload"]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "portico.service"
        path.write_text(
            unit.replace("/opt/portico/bin/portico", str(Path(sys.executable).parent / "portico"))
        )
        result = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "portico.service" in line
        and ("ignoring" in line or "Unknown" in line or "Failed" in line)
    ]
    assert problems == [], result.stderr
