"""Latency of small requests while big responses are being compressed (issue #13).

Starts `portico run` (one worker) in front of a small origin that serves a 10 MiB JSON body,
then measures the latency of small uncompressed requests (`/ping`, answered by a route) on
one keep-alive connection, in paired phases: "alone", and "loaded" while `--clients` clients
download the 10 MiB body compressed (gzip level 5 unless --coding/--level say otherwise).
The phases alternate in ABBA order over `--cycles` cycles (alone/loaded, then loaded/alone),
so the machine's drift cancels out; each cycle gives one ratio, loaded p99 over alone p99,
and the figure to quote is the median ratio with its range. Bounded: `--seconds` per phase
(default 4 cycles x 2 phases x 5 s, ~50 s in all). Loopback only; no fixed port.

    .venv/bin/python bench/compress_latency.py [--clients 8] [--coding gzip] [--cycles 4]
                                               [--spinners N] [--pinger-apart]
                                               [--proxy nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIG = 10 * 1024 * 1024


def json_body(size: int) -> bytes:
    rng = random.Random(1)
    out = bytearray(b"[")
    while len(out) < size - 1:
        record = {"id": rng.randrange(10**9), "name": rng.choice(["red", "green", "blue"]) * 3}
        out += json.dumps(record).encode() + b","
    return bytes(out[: size - 1]) + b"]"


def serve_origin(body: bytes, port_queue: Any) -> None:
    """A minimal HTTP/1.1 keep-alive origin: every request gets `body` as JSON."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    return
                writer.write(head)
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def downloader(port: int, coding: str, go: Any, active: Any) -> None:
    """One client in its own process (the measuring process must not share a GIL with it):
    downloads while `go` is set. When it is cleared mid-download the client hangs up (Portico
    drops that response's compression), so an "alone" phase starts without a compression
    still running. `active`: how many clients are downloading."""
    buffer = bytearray(1 << 20)
    request = f"GET /big HTTP/1.1\r\nHost: b\r\nAccept-Encoding: {coding}\r\n\r\n".encode()
    while True:
        if not go.wait(60):
            return  # the measurement is over (or stuck): never outlive it by much
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.settimeout(1.0)
                with active.get_lock():
                    active.value += 1
                try:
                    while go.is_set():
                        sock.sendall(request)
                        read_response(sock, buffer, go)
                finally:
                    with active.get_lock():
                        active.value -= 1
        except (ConnectionError, TimeoutError, OSError):
            continue


def spinner(go: Any, active: Any) -> None:
    """A process that only burns CPU while `go` is set (`--spinners`: a control for how much
    of the loaded p99 is the machine's cores being busy with other processes, whatever they
    do, rather than Portico's loop being busy)."""
    while True:
        if not go.wait(60):
            return
        with active.get_lock():
            active.value += 1
        try:
            while go.is_set():
                deadline = time.perf_counter() + 0.01
                while time.perf_counter() < deadline:
                    pass
        finally:
            with active.get_lock():
                active.value -= 1


def read_response(sock: socket.socket, buffer: bytearray, go: Any = None) -> int:
    """Read one response (Content-Length or chunked) and return its body size on the wire.
    With `go`: give up (ConnectionError) as soon as it is cleared."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock, 65536, go)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: (\d+)", head)
    if match:
        need = int(match.group(1)) - len(rest)
        while need > 0:
            need -= len(_recv(sock, min(need, len(buffer)), go))
        return int(match.group(1))
    total = len(rest)
    tail = rest[-5:]
    while tail != b"0\r\n\r\n":
        chunk = _recv(sock, len(buffer), go)
        total += len(chunk)
        tail = (tail + chunk[-5:])[-5:]
    return total


def _recv(sock: socket.socket, size: int, go: Any) -> bytes:
    while True:
        if go is not None and not go.is_set():
            raise ConnectionError("stopped")
        try:
            chunk = sock.recv(size)
        except TimeoutError:
            continue  # only the downloaders have a timeout: to look at `go` again
        if not chunk:
            raise ConnectionError("closed")
        return chunk


def pings(ports: list[int], seconds: float) -> list[list[float]]:
    """Latencies (ms) of `/ping` on one keep-alive connection per port for `seconds`, every
    ~2 ms, the ports taking turns (so each sees the same moments of the machine's load)."""
    buffer = bytearray(65536)
    out: list[list[float]] = [[] for _ in ports]
    deadline = time.monotonic() + seconds
    socks = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < deadline:
            for sock, latencies in zip(socks, out, strict=True):
                started = time.perf_counter()
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: p\r\n\r\n")
                read_response(sock, buffer)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.002)
    finally:
        for sock in socks:
            sock.close()
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"p50 {statistics.median(ordered):.2f} ms, p99 {p99(ordered):.2f} ms, "
        f"max {ordered[-1]:.2f} ms ({len(ordered)} requests)"
    )


def wait_for(check: Any, seconds: float) -> bool:
    """Poll `check()` until true or `seconds` pass (the clients are other processes)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def start_nginx(
    scratch: Path, origin_port: int, workers: int, level: int
) -> tuple[subprocess.Popen[bytes], int]:
    """NGINX in front of the same origin, gzip on at `level` (its defaults otherwise), /ping
    answered by NGINX itself as Portico's route does; its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = scratch / "nginx.conf"
    conf.write_text(
        f"""worker_processes {workers};
error_log {scratch}/error.log;
pid {scratch}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;  # the pinger keeps one connection for the whole run
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location = /ping {{ return 200 "pong"; }}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            gzip on;
            gzip_comp_level {level};
            gzip_proxied any;
            gzip_types application/json;
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(scratch), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("nginx did not start") from None
            time.sleep(0.05)
    return proc, port


def start_portico(path: Path, config: str) -> tuple[subprocess.Popen[bytes], int]:
    """`portico run` on `config` (written to `path`); its port."""
    path.write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "portico", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return proc, int(re.findall(r"http://[\d.]+:(\d+)", line)[0])


def check_coding(port: int, coding: str) -> None:
    """The proxy answers /big in `coding` (identity: not encoded), or the run would measure
    something else."""
    request = f"GET /big HTTP/1.1\r\nHost: b\r\nAccept-Encoding: {coding}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            piece = sock.recv(65536)
            if not piece:
                break
            head += piece
    fields = head.split(b"\r\n\r\n", 1)[0].lower()
    encoded = re.search(rb"\r\ncontent-encoding: *([a-z0-9-]+)", fields)
    got = encoded.group(1).decode() if encoded else "identity"
    if got != coding:
        raise SystemExit(f"the proxy answered /big in {got}, not {coding}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--coding",
        default="gzip",
        choices=["gzip", "br", "zstd", "identity"],
        help="identity: a control, the same downloads uncompressed",
    )
    parser.add_argument("--level", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--cycles", type=int, default=4, help="ABBA cycles of two phases")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--spinners",
        type=int,
        default=0,
        help="processes that only burn CPU in the loaded phases (with --clients 0: a control "
        "for what busy cores alone do to the p99)",
    )
    parser.add_argument(
        "--proxy",
        default="portico",
        choices=["portico", "nginx"],
        help="nginx: the same scenario through NGINX (gzip only, gzip_comp_level as --level)",
    )
    parser.add_argument(
        "--pinger-apart",
        action="store_true",
        help="small requests also go, in turns with the others, through a second Portico that "
        "compresses nothing (the same load on the machine, none on its event loop): what the "
        "shared cores cost them, apart from queueing behind compression in the loop",
    )
    args = parser.parse_args()
    if args.pinger_apart and args.proxy != "portico":
        parser.error("--pinger-apart is for Portico")
    if args.proxy == "nginx" and args.coding not in ("gzip", "identity"):
        parser.error("NGINX compresses gzip only here")
    if not (1 <= args.cycles <= 20 and 0.5 <= args.seconds <= 30):
        parser.error("--cycles must be 1..20 and --seconds 0.5..30")

    ports: Any = multiprocessing.Queue()
    origin = multiprocessing.Process(target=serve_origin, args=(json_body(BIG), ports))
    origin.start()
    origin_port = ports.get(timeout=10)
    level = f", levels: {{{args.coding}: {args.level}}}" if args.level is not None else ""
    coding = "gzip" if args.coding == "identity" else args.coding
    config = f"""
workers: {args.workers}
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: origin
    compression: {{algorithms: [{coding}]{level}}}
    routes:
      - match: {{path_exact: /ping}}
        respond: {{status: 200, body: "pong"}}
pools:
  origin:
    servers: [{{address: 127.0.0.1:{origin_port}}}]
"""
    # (cycle, "alone" | "loaded", latencies through the compressing Portico[, the other])
    phases: list[tuple[int, str, list[list[float]]]] = []
    go = multiprocessing.Event()
    active = multiprocessing.Value("i", 0)
    clients: list[multiprocessing.Process] = []
    pinger: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as scratch:
        if args.proxy == "nginx":
            proc, port = start_nginx(Path(scratch), origin_port, args.workers, args.level or 5)
        else:
            proc, port = start_portico(Path(scratch, "portico.yaml"), config)
        ping_ports = [port]
        if args.pinger_apart:
            pinger, apart_port = start_portico(Path(scratch, "pinger.yaml"), config)
            ping_ports.append(apart_port)
        try:
            check_coding(port, args.coding)
            clients = [
                multiprocessing.Process(target=downloader, args=(port, args.coding, go, active))
                for _ in range(args.clients)
            ]
            clients += [
                multiprocessing.Process(target=spinner, args=(go, active))
                for _ in range(args.spinners)
            ]
            for client in clients:
                client.start()
            pings(ping_ports, 0.5)  # warm-up: the first requests load what they need
            for cycle in range(args.cycles):
                order = ("alone", "loaded") if cycle % 2 == 0 else ("loaded", "alone")
                for phase in order:
                    if phase == "loaded":
                        go.set()
                        wait_for(lambda: active.value >= args.clients + args.spinners, 10)
                        time.sleep(0.3)  # the downloads under way: a warm-up, not a sync
                    else:
                        go.clear()
                        if not wait_for(lambda: active.value == 0, 10):
                            print("warning: downloads still running in an alone phase")
                    phases.append((cycle, phase, pings(ping_ports, args.seconds)))
        finally:
            go.clear()
            for client in clients:
                client.join(5)
                if client.is_alive():
                    client.terminate()
            for started in (proc, pinger) if pinger is not None else (proc,):
                started.terminate()
                started.wait(30)
            origin.terminate()
            origin.join(10)
    spinning = f", {args.spinners} CPU spinners" if args.spinners else ""
    print(
        f"{args.proxy}: {args.clients} clients downloading 10 MiB {args.coding} bodies"
        f"{spinning}; {args.cycles} ABBA cycles of {args.seconds:g} s phases"
    )
    report(phases, args.cycles, 0, "")
    if args.pinger_apart:
        print("the same moments, small requests through a second Portico that compresses nothing:")
        report(phases, args.cycles, 1, "apart: ")
        shares = []
        for cycle in range(args.cycles):
            loaded = next(v for c, phase, v in phases if c == cycle and phase == "loaded")
            shares.append(p99(loaded[0]) / p99(loaded[1]))
        print(f"loaded p99, compressing Portico / the other, per cycle: {median_range(shares)}")


def report(
    phases: list[tuple[int, str, list[list[float]]]], cycles: int, which: int, label: str
) -> None:
    """Per cycle and over cycles: the p99 alone, loaded, and their ratio, of the small
    requests through proxy number `which` (0: the one the downloads go through)."""
    ratios = []
    for cycle in range(cycles):
        by = {phase: values[which] for c, phase, values in phases if c == cycle}
        ratio = p99(by["loaded"]) / p99(by["alone"])
        ratios.append(ratio)
        print(
            f"{label}cycle {cycle + 1}: alone {summary(by['alone'])}; "
            f"loaded {summary(by['loaded'])}; p99 ratio {ratio:.2f}x"
        )
    alone = [p99(v[which]) for _, phase, v in phases if phase == "alone"]
    loaded = [p99(v[which]) for _, phase, v in phases if phase == "loaded"]
    print(f"{label}p99 alone (ms):  {median_range(alone)}")
    print(f"{label}p99 loaded (ms): {median_range(loaded)}")
    print(f"{label}p99 ratio loaded/alone, per cycle: {median_range(ratios)}")


if __name__ == "__main__":
    main()
