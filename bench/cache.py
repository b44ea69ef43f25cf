"""Cache hits beside NGINX's proxy_cache: requests per proxy CPU-second (issue #14).

Starts an origin (nginx, 127.0.0.1:19001, `Cache-Control: max-age=3600` on /1k and /100k),
NGINX with `proxy_cache` (:19081, one worker), and Portico (`workers: 1`) with a caching route
(:19082) and, for comparison, a listener without cache in front of the same origin (:19083).
Each target is warmed, then loaded by wrk (one connection per in-flight request, keep-alive)
for `--seconds`; the proxy's CPU is utime+stime of its whole process tree from /proc, so the
figure is requests per CPU-second of the proxy, not per wall second (the machine may be shared).
The proxy runs on core 0 and wrk on core 1 when there are two.

    .venv/bin/python bench/cache.py [--seconds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
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

PROXY_CORE = "0"
LOAD_CORE = "1" if (os.cpu_count() or 1) >= 2 else "0"
SIZES = {"1k": 1024, "100k": 100 * 1024}


def _pin(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def _tree_cpu(root: int) -> float:
    """utime+stime (children included) of `root` and its descendants, in seconds."""
    parents: dict[int, int] = {}
    stats: dict[int, list[bytes]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        stats[int(name)] = fields
        parents[int(name)] = int(fields[1])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is not None:
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
        todo.extend(p for p, parent in parents.items() if parent == pid)
    return total


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on :{port}")


def _nginx_conf(run: Path, body: str) -> str:
    return (
        "worker_processes 1;\n"
        f"pid {run}/nginx-{abs(hash(body))}.pid;\n"
        f"error_log {run}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000;\n"
        f"  client_body_temp_path {run}/tmp-body; proxy_temp_path {run}/tmp-proxy;\n"
        f"  fastcgi_temp_path {run}/tmp-f; uwsgi_temp_path {run}/tmp-u;\n"
        f"  scgi_temp_path {run}/tmp-s;\n"
        f"{body}\n"
        "}\n"
    )


def _wrk(port: int, path: str, seconds: int, connections: int) -> int:
    out = subprocess.run(
        _pin(
            LOAD_CORE,
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError(f"wrk said: {out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk got {errors.group(1)} errors from :{port}{path}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    run = Path(tempfile.mkdtemp(prefix="portico-cache-bench-"))
    run.chmod(0o755)  # nginx's workers (another user) read www/ and write the cache there
    www = run / "www"
    www.mkdir()
    for name, size in SIZES.items():
        (www / name).write_bytes(os.urandom(size // 2).hex().encode()[:size])
    origin = _nginx_conf(
        run,
        f"  server {{ listen 127.0.0.1:19001; root {www};\n"
        '    location / { add_header Cache-Control "max-age=3600"; } }',
    )
    proxy = _nginx_conf(
        run,
        f"  proxy_cache_path {run}/nginx-cache levels=1:2 keys_zone=c:16m max_size=256m;\n"
        "  upstream origin { server 127.0.0.1:19001; keepalive 32; }\n"
        "  server { listen 127.0.0.1:19081;\n"
        "    location / { proxy_pass http://origin; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; proxy_cache c; proxy_cache_valid 200 1h; } }',
    )
    (run / "origin.conf").write_text(origin)
    (run / "proxy.conf").write_text(proxy)
    (run / "portico.yaml").write_text(
        "workers: 1\n"
        "cache: {memory_size: 64MiB}\n"
        "listeners:\n"
        "  - {name: cached, bind: 127.0.0.1:19082, default_pool: origin,\n"
        "     routes: [{match: {path_prefix: /}, pool: origin, cache: {}}]}\n"
        "  - {name: proxied, bind: 127.0.0.1:19083, default_pool: origin}\n"
        "pools:\n  origin:\n    servers: [{address: 127.0.0.1:19001}]\n"
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            _pin(PROXY_CORE, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        _wait_port(port)
        return proc

    rows: list[tuple[str, str, int, float]] = []
    try:
        start(
            "origin",
            ["nginx", "-p", str(run), "-c", str(run / "origin.conf"), "-g", "daemon off;"],
            19001,
        )
        targets = {
            "nginx proxy_cache": (
                start(
                    "nginx",
                    ["nginx", "-p", str(run), "-c", str(run / "proxy.conf"), "-g", "daemon off;"],
                    19081,
                ),
                19081,
            ),
            "portico cache": (
                start(
                    "portico",
                    [sys.executable, "-m", "portico", "run", str(run / "portico.yaml")],
                    19082,
                ),
                19082,
            ),
        }
        targets["portico proxied"] = (targets["portico cache"][0], 19083)
        for label, (proc, port) in targets.items():
            for name in SIZES:
                _wrk(port, f"/{name}", 1, 4)  # warm: stored, connections open
                before = _tree_cpu(proc.pid)
                count = _wrk(port, f"/{name}", args.seconds, args.connections)
                cpu = _tree_cpu(proc.pid) - before
                rows.append((label, name, count, cpu))
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(run, ignore_errors=True)
    per_cpu = {(label, name): count / cpu if cpu else 0.0 for label, name, count, cpu in rows}
    print(f"{'target':<18} {'body':>5} {'requests':>9} {'proxy CPU s':>11} {'req/CPU-s':>10}")
    for label, name, count, cpu in rows:
        print(f"{label:<18} {name:>5} {count:>9} {cpu:>11.2f} {per_cpu[label, name]:>10.0f}")
    for name in SIZES:
        ratio = per_cpu["portico cache", name] / per_cpu["nginx proxy_cache", name]
        hit_cost = per_cpu["portico proxied", name] / per_cpu["portico cache", name]
        print(
            f"{name}: Portico/NGINX hits per CPU-second {ratio:.2f}x; a Portico hit costs "
            f"{hit_cost:.2f}x the CPU of a proxied request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
