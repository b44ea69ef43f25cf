"""Why a slower proxy spends more kernel time per request: it wakes the idle load generator.

`bench/run` shows Portico spending more kernel CPU per small keep-alive request than HAProxy
(e.g. 29 against 19 µs) with the same syscalls (2 reads and 2 writes per request). `perf`
puts the difference in `sock_def_readable`: a write to a socket whose reader sleeps in
`epoll_wait` on the other core wakes it, and on this VM that inter-processor wake-up is paid
by the writer. A fast proxy writes its responses faster than wrk and the origins (on the
other core) handle them, so they rarely sleep; a slow one lets them go idle between writes.

This harness shows it by control: beside Portico and HAProxy it runs a *paced* HAProxy, the
same config with `--rules` extra `http-request set-var` rules so that its user CPU per request
is near Portico's. If the explanation holds, the paced HAProxy's kernel µs and wake-ups per
request rise to Portico's, with no change in what it does in the kernel.

    flock /tmp/bench.lock .venv/bin/python bench/wakeups.py [--cycles 3] [--seconds 4]

Wake-ups are `sched:sched_wakeup` events on all CPUs, counted by `perf stat -a` during each
run (left out if `perf` is not installed). Same layout as `bench/run`: the proxy on core 0,
wrk (-t1 -c50, /small) and the origins on core 1; ports 8080, 8082/8083 and 8086/8087.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # bench/bench.py: the harness this one reuses

PACED_PORT = 8086
FLOOR_PORT = 8088


@dataclass
class Runs:
    label: str
    rate: list[float] = field(default_factory=list)  # requests per wall second
    user_us: list[float] = field(default_factory=list)
    kernel_us: list[float] = field(default_factory=list)
    wakeups: list[float] = field(default_factory=list)  # per request, all CPUs


def paced_config(rules: int) -> Path:
    """HAProxy's bench config, L7 on :8086 (L4 on :8087), with `rules` CPU-only rules."""
    text = (b.RUNDIR / "haproxy.cfg").read_text()
    extra = "".join(
        f"    http-request set-var(txn.v{i}) str(abcdefghijklmnop),lower,upper,base64,length\n"
        for i in range(rules)
    )
    text = text.replace("    default_backend be_http\n", "    default_backend be_http\n" + extra, 1)
    text = re.sub(r"127\.0\.0\.1:8082\b", f"127.0.0.1:{PACED_PORT}", text)
    text = re.sub(r"127\.0\.0\.1:8083\b", f"127.0.0.1:{PACED_PORT + 1}", text)
    path = b.RUNDIR / "haproxy-paced.cfg"
    path.write_text(text)
    return path


def measure(proc: b.Proc, port: int, seconds: int, runs: Runs) -> None:
    user0, kernel0 = b.tree_user_kernel_seconds(proc.pid)
    perf = None
    counts_file = b.RUNDIR / "logs" / "wakeups.perf"
    if shutil.which("perf"):
        perf = subprocess.Popen(
            ["perf", "stat", "-a", "-x,", "-e", "sched:sched_wakeup", "-o", str(counts_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    text = b.run_wrk(
        b.wrk_argv(
            argparse.Namespace(threads=1, connections=50), f"http://127.0.0.1:{port}/small", seconds
        ),
        seconds,
    )
    user1, kernel1 = b.tree_user_kernel_seconds(proc.pid)
    done = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    runs.rate.append(done / seconds)
    runs.user_us.append((user1 - user0) * 1e6 / done)
    runs.kernel_us.append((kernel1 - kernel0) * 1e6 / done)
    if perf is not None:
        perf.send_signal(2)  # SIGINT: perf stat prints its counts and exits
        perf.wait(timeout=10)
        counts = counts_file.read_text()
        found = re.search(r"^(\d+),[^,]*,sched:sched_wakeup", counts, re.M)
        if found:
            runs.wakeups.append(int(found.group(1)) / done)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument(
        "--rules",
        type=int,
        default=120,
        help="the paced HAProxy's extra rules (0: no paced HAProxy)",
    )
    parser.add_argument(
        "--floor", action="store_true", help="also bench/floor.py: uvloop + httptools, no features"
    )
    args = parser.parse_args(argv)
    b.prepare_rundir(portico_l4=False)
    try:
        origins = b.spawn(
            "origins", b.nginx_argv("nginx-backends.conf", "backends-error.log"), b.LOAD_CORE
        )
        b.wait_for_port(origins, b.ORIGIN_PORTS[0])
        targets = [
            (
                b.spawn(
                    "portico",
                    [str(b.PORTICO_BIN), "run", str(b.RUNDIR / "portico.yaml")],
                    b.PROXY_CORE,
                ),
                8080,
                Runs("Portico"),
            ),
            (
                b.spawn(
                    "haproxy", ["haproxy", "-db", "-f", str(b.RUNDIR / "haproxy.cfg")], b.PROXY_CORE
                ),
                8082,
                Runs("HAProxy"),
            ),
        ]
        if args.rules:
            paced = paced_config(args.rules)
            proc = b.spawn("haproxy-paced", ["haproxy", "-db", "-f", str(paced)], b.PROXY_CORE)
            targets.append((proc, PACED_PORT, Runs(f"HAProxy + {args.rules} rules")))
        if args.floor:
            argv = [sys.executable, str(b.BENCH / "floor.py"), "--port", str(FLOOR_PORT)]
            proc = b.spawn("floor", argv, b.PROXY_CORE)
            targets.append((proc, FLOOR_PORT, Runs("floor.py (not a proxy: the stack's floor)")))
        for proc, port, _ in targets:
            b.wait_for_port(proc, port)
            b.check_response(port, "/small", 5)
        for cycle in range(args.cycles):
            order = targets if cycle % 2 == 0 else targets[::-1]
            for proc, port, runs in order:
                b.log(f"cycle {cycle + 1}: {runs.label}")
                time.sleep(0.5)
                measure(proc, port, args.seconds, runs)
    finally:
        b.stop_all()

    def med(values: list[float], fmt: str) -> str:
        return format(statistics.median(values), fmt) if values else "n/a"

    print(
        f"\n{args.cycles} cycles of {args.seconds} s, medians "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n"
    )
    print("| target | requests/s | user µs/req | kernel µs/req | wake-ups/req (all CPUs) |")
    print("|---|---|---|---|---|")
    for _, _, runs in targets:
        print(
            f"| {runs.label} | {med(runs.rate, ',.0f')} | {med(runs.user_us, '.1f')} | "
            f"{med(runs.kernel_us, '.1f')} | {med(runs.wakeups, '.2f')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
