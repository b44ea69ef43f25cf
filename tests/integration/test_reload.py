"""Reloads that drop nothing: SIGHUP / `portico reload` under steady load."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from conftest import simple_config
from fakes import Load, request


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
