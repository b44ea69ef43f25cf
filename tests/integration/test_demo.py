"""The README's first command: `portico demo` shows requests rotating over three backends."""

from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys
import time

from fakes import request
from h2client import H2Client


def _three_free_ports() -> int:
    """A base port whose next two are free too (checked by binding them)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        socks = []
        try:
            for port in (base, base + 1, base + 2):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no three consecutive free ports")


def test_demo_rotates_requests_over_three_named_backends() -> None:
    base = _three_free_ports()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portico",
            "demo",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--backend-port",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                assert line, "demo exited before it was ready"
                found = re.search(r"listening on web http://127\.0\.0\.1:(\d+)", line)
                if found:
                    port = int(found.group(1))
        sel.close()
        assert port is not None
        answers = [request(port) for _ in range(3)]
        names = [a.header("X-Backend") for a in answers]
        assert sorted(names) == ["backend-1", "backend-2", "backend-3"]
        for answer, name in zip(answers, names, strict=True):
            assert answer.status == 200
            assert f"Hello from {name}".encode() in answer.body
        # the same port speaks HTTP/2 to a client that knows it (h2c, prior knowledge)
        with H2Client(socket.create_connection(("127.0.0.1", port), timeout=10)) as client:
            h2_answer = client.get("/")
        assert h2_answer.status == 200
        assert b"Hello from backend-" in bytes(h2_answer.body)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        with socket.socket() as probe:  # the demo backends are gone with it
            assert probe.connect_ex(("127.0.0.1", base)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
