#!/usr/bin/env python3
"""Where an idle keep-alive connection's memory goes in a Portico worker (#18): start
`portico run` with one worker in front of a tiny origin (both on ports the kernel picks: no
lock needed), open ROUNDS x COUNT keep-alive connections, each after one request, and after
each round print how much each kind of mapping of the worker grew (`/proc/PID/smaps` Rss:
anonymous mappings, where Python's object arenas live; the malloc heap; the rest).

A single count (as `bench/run`'s row) mixes the marginal cost with whatever free room the
worker's start-up left in its heap; rounds tell them apart.

    .venv/bin/python bench/idle_regions.py [--count 1000] [--rounds 4] [--burst]
    PORTICO_NO_FORKSERVER=1 .venv/bin/python bench/idle_regions.py   # spawned workers
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORTICO = HERE.parent / ".venv" / "bin" / "portico"
REQUEST = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"


# the origin: its own process (asyncio), answering every request with 5 bytes, keep-alive
ORIGIN = """
import asyncio, sys
ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
class Origin(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\\r\\n\\r\\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\\r\\n\\r\\n", 1)
            self.transport.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(Origin, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def worker_of(supervisor: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{supervisor}$", status, re.M) and "zygote" not in status:
            return int(entry)
    raise RuntimeError("no worker found")


def regions(pid: int) -> dict[str, int]:
    """KiB resident per kind of mapping."""
    out: dict[str, int] = defaultdict(int)
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            kind = "heap" if name == "[heap]" else "anonymous" if not name else "other"
        elif line.startswith("Rss:"):
            out[kind] += int(line.split()[1])
    return out


def open_idle(port: int, count: int, socks: list[socket.socket], burst: bool = False) -> None:
    """`count` connections, each after one request answered; `burst`: every request sent
    before any answer is read (as bench/run's row does: up to `count` requests in flight at
    once, and the server connections they need), else one connection after the other."""
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(REQUEST)
        if not burst:
            read_answer(sock)
        opened.append(sock)
    if burst:
        for sock in opened:
            read_answer(sock)
    socks.extend(opened)


def read_answer(sock: socket.socket) -> None:
    got = b""
    while not got.endswith(b"hello"):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("Portico closed an idle connection")
        got += chunk


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--settle",
        type=float,
        default=2.5,
        help="seconds idle before each reading: an HTTP/1 connection idle for two of the "
        "worker's 1 s sweeps gives up its parser (0: read at once)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="send each round's requests before reading any answer, as bench/run's row does "
        "(then the server connections that many requests in flight need are counted too)",
    )
    parser.add_argument("--portico", default=str(PORTICO))
    args = parser.parse_args()
    origin = subprocess.Popen([sys.executable, "-c", ORIGIN], stdout=subprocess.PIPE, text=True)
    assert origin.stdout is not None
    origin_port = int(origin.stdout.readline())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "portico.yaml"
        config.write_text(
            "workers: 1\nlisteners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
            f"pools:\n  app:\n    servers:\n      - address: 127.0.0.1:{origin_port}\n"
        )
        proc = subprocess.Popen(
            [args.portico, "run", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        socks: list[socket.socket] = []
        try:
            port = None
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            for line in proc.stdout:
                found = re.search(r"ready.*listening on .*:(\d+)", line)
                if found:
                    port = int(found.group(1))
                    break
                if time.monotonic() > deadline:
                    break
            if port is None:
                print("Portico did not say it was ready", file=sys.stderr)
                return 1
            worker = worker_of(proc.pid)
            open_idle(port, 1, socks)  # what the first request loads, loaded
            time.sleep(args.settle)
            before = regions(worker)
            print(f"KiB the worker's mappings grew per {args.count} idle connections:")
            fds = descriptors(worker)
            for n in range(1, args.rounds + 1):
                open_idle(port, args.count, socks, args.burst)
                time.sleep(args.settle)  # the connections idle, as an idle one is
                now = regions(worker)
                grew = {k: now.get(k, 0) - before.get(k, 0) for k in ("anonymous", "heap", "other")}
                total = sum(grew.values())
                now_fds = descriptors(worker)
                print(
                    f"  round {n}: anonymous +{grew['anonymous']}, heap +{grew['heap']}, "
                    f"other +{grew['other']}: {total / args.count:.2f} KiB per connection "
                    f"(descriptors +{now_fds - fds}: clients' and servers')"
                )
                before, fds = now, now_fds
        finally:
            for sock in socks:
                sock.close()
            proc.terminate()
            proc.wait(timeout=30)
            origin.terminate()
            origin.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
