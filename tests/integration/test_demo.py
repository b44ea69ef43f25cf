"""The README's first command: `portico demo` shows requests rotating over three backends."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from fakes import demo_port, request, three_free_ports
from h2client import H2Client


def test_demo_rotates_requests_over_three_named_backends() -> None:
    base = three_free_ports()
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
        port = demo_port(proc)
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
