"""Slow clients against one worker: Portico beside NGINX, each with its defaults.

Three phases per target, each measuring normal clients with `wrk -t1 -c10 --latency` on a
5-byte response: alone (the baseline), beside 1,000 slowloris connections (a request head
trickled one byte every 2 s, never finished), and beside 1,000 slow readers (a 10 MiB
response read at about 1 KiB/s). Reported: the normal clients' p50/p99 and requests/s, how
many attackers the target had cut off by the end of the phase, and the target's RSS rise
(all its processes). The origin is NGINX on its own.

NGINX runs with its defaults except `worker_processes 1` and `worker_connections 4096` (its
default of 512 cannot even hold 1,000 connections: that would measure the refusal, not the
defence); Portico with its defaults and `workers: 1`. Bounded: every phase is `--duration`
seconds (default 12), every process is stopped by PID at the end. The machine is shared:
read the figures as this machine's, on this day.

    .venv/bin/python bench/slow_clients.py [--targets portico,nginx] [--duration 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTACKERS = 1000
BIG = 10 * 1024 * 1024
ORIGIN_PORT = 9201
PROXY_PORT = 9202


# -- the origin ---------------------------------------------------------------------------------


def start_origin(workdir: Path) -> subprocess.Popen[bytes]:
    """NGINX serving a 5-byte answer and a 10 MiB file (an origin in Python was itself the
    bottleneck once 1,000 slow readers filled the kernel's buffers)."""
    (workdir / "www").mkdir()
    (workdir / "www" / "big").write_bytes(b"x" * BIG)
    for path in (workdir, workdir / "www", workdir / "www" / "big"):
        path.chmod(0o755)  # NGINX's workers run as nobody
    (workdir / "tmp").mkdir()
    conf = workdir / "origin.conf"
    conf.write_text(
        "worker_processes 1;\n"
        f"pid {workdir}/origin.pid;\n"
        f"error_log {workdir}/origin-error.log;\n"
        "events { worker_connections 8192; }\n"
        "http {\n"
        f"  access_log off; client_body_temp_path {workdir}/tmp;\n"
        f"  server {{ listen 127.0.0.1:{ORIGIN_PORT} backlog=4096; root {workdir}/www;\n"
        "    location = /big { }\n"
        '    location / { return 200 "hello"; } }\n'
        "}\n"
    )
    return subprocess.Popen(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-c",
            str(conf),
            "-p",
            str(workdir),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# -- targets --------------------------------------------------------------------------------------


def start_portico(workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "portico.yaml"
    config.write_text(
        "workers: 1\n"
        "listeners:\n"
        f"  - {{name: web, bind: 127.0.0.1:{PROXY_PORT}, default_pool: origin, backlog: 4096}}\n"
        "pools:\n"
        f"  origin:\n    servers: [{{address: 127.0.0.1:{ORIGIN_PORT}}}]\n"
    )
    portico = Path(sys.executable).with_name("portico")
    return subprocess.Popen(
        [str(portico), "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "portico.log", "wb"),
        start_new_session=True,
    )


def start_nginx(workdir: Path) -> subprocess.Popen[bytes]:
    (workdir / "logs").mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/logs/error.log;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"  access_log off; client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp;\n"
        f"  upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 32; }}\n"
        f"  server {{ listen 127.0.0.1:{PROXY_PORT} backlog=4096;\n"
        "    location / { proxy_pass http://origin; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; } }\n'
        "}\n"
    )
    (workdir / "tmp").mkdir(exist_ok=True)
    for path in (workdir, workdir / "tmp"):
        path.chmod(0o777)  # NGINX's workers run as nobody and buffer big responses in tmp/
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.1)


def check(port: int) -> None:
    """Both paths answer 200 with the whole body through `port`."""
    for path, size in (("/", 5), ("/big", BIG)):
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or len(body) != size:
            raise RuntimeError(f"{path} through :{port}: {head[:40]!r}, {len(body)} bytes")


def rss_kib(root: int) -> int:
    """RSS of `root` and its children, summed."""
    total = 0
    pids = [root]
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for child in Path(f"/proc/{root}/task/{root}/children").read_text().split():
            pids.append(int(child))
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            total += int(found.group(1)) if found else 0
    return total


# -- attackers and measurement --------------------------------------------------------------------


class Attack:
    """`count` connections of one kind, run on a loop in this process."""

    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.count = count
        self.cut_off = 0  # connections the target closed
        self.opened = 0
        self.stop = asyncio.Event()

    async def one(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PROXY_PORT)
        except OSError:
            return
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.opened += 1
        try:
            if self.kind == "slowloris":
                writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
                while not self.stop.is_set():
                    try:
                        # the pause between bytes; anything the target says (a 408) or its
                        # close ends this attacker
                        await asyncio.wait_for(reader.read(1024), 2.0)
                        raise ConnectionError
                    except TimeoutError:
                        writer.write(b"X")
                        await writer.drain()
            else:
                writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                while not self.stop.is_set():
                    data = await reader.read(1024)
                    if not data:
                        raise ConnectionError
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 1.0)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            if not self.stop.is_set():
                self.cut_off += 1
        finally:
            writer.transport.abort()

    async def run(self, duration: float) -> None:
        tasks = []
        for _ in range(self.count):
            tasks.append(asyncio.ensure_future(self.one()))  # noqa: TID251 (bench, not portico)
            await asyncio.sleep(0.002)  # 500 new connections a second
        await asyncio.sleep(duration)
        self.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def wrk(duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c10",
            f"-d{int(duration)}s",
            "--latency",
            f"http://127.0.0.1:{PROXY_PORT}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 20,
    ).stdout
    figures: dict[str, float] = {}
    for label, key in (("50%", "p50"), ("99%", "p99")):
        found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if found:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
            figures[key] = float(found.group(1)) * scale
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figures["rps"] = float(rps.group(1)) if rps else 0.0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print("wrk:", errors.group(0), flush=True)
    figures["errors"] = 1.0 if errors else 0.0
    return figures


def phase(kind: str | None, duration: float, target_pid: int) -> dict[str, float]:
    before = rss_kib(target_pid)
    result: dict[str, float] = {}
    if kind is None:
        result = wrk(duration)
    else:
        attack = Attack(kind, ATTACKERS)
        loop = asyncio.new_event_loop()
        import threading

        thread = threading.Thread(target=loop.run_until_complete, args=(attack.run(duration + 3),))
        thread.start()
        time.sleep(3.0)  # the attackers connect (500 a second) before the measurement
        result = wrk(duration)
        result["rss_rise_mib"] = (rss_kib(target_pid) - before) / 1024
        thread.join(timeout=30)
        loop.close()
        result["opened"] = attack.opened
        result["cut_off"] = attack.cut_off
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="portico,nginx")
    parser.add_argument("--duration", type=float, default=12.0)
    args = parser.parse_args()
    origin_dir = Path(tempfile.mkdtemp(prefix="portico-origin-"))
    origin = start_origin(origin_dir)
    wait_port(ORIGIN_PORT)
    rows = []
    try:
        for target in args.targets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                proc = start_portico(workdir) if target == "portico" else start_nginx(workdir)
                try:
                    wait_port(PROXY_PORT)
                    check(PROXY_PORT)
                    wrk(2.0)  # warm-up: connections, first-request allocations
                    for kind, label in (
                        (None, "alone"),
                        ("slowloris", "slowloris"),
                        ("readers", "slow readers"),
                    ):
                        figures = phase(kind, args.duration, proc.pid)
                        rows.append((target, label, figures))
                        print(target, label, figures, flush=True)
                        time.sleep(2.0)
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        origin.wait(10)
        shutil.rmtree(origin_dir, ignore_errors=True)
    print()
    print(
        "| target | beside | p50 ms | p99 ms | requests/s | attackers open / cut off "
        "| RSS rise MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for target, kind, f in rows:
        attackers = (
            f"{int(f.get('opened', 0))} / {int(f.get('cut_off', 0))}" if "opened" in f else ""
        )
        rise = f"{f['rss_rise_mib']:.1f}" if "rss_rise_mib" in f else ""
        print(
            f"| {target} | {kind} | {f.get('p50', 0):.2f} | {f.get('p99', 0):.2f} | "
            f"{f.get('rps', 0):,.0f} | {attackers} | {rise} |"
        )


if __name__ == "__main__":
    main()
