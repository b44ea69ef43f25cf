"""Syscalls per request through each proxy, for one path: where the kernel time goes.

`bench/run` gives a proxy's user and kernel CPU µs per request; this counts, per request, the
system calls that make up the kernel side: reads and writes (recvfrom/sendto for HAProxy and
the L4 engine, read/write/writev for uvloop), splice, epoll_ctl (a transport's
pause_reading/resume_reading, a loop's add_reader/remove_reader) and epoll_wait. Counts are
`perf stat -e syscalls:sys_enter_*` on the process that relays (Portico's one worker, all its
threads, the L4 engine's included; HAProxy's one process) during one wrk run; the user and
kernel µs are that process's, from /proc. Same layout as `bench/run` (the proxy on core 0,
`wrk -t1 -c50` and the origins on core 1, ports 8080, 8085, 8082, 8083), so run it under the
bench lock:

    flock /tmp/bench.lock .venv/bin/python bench/syscalls.py [--path /1m] [--seconds 3]
        [--targets portico,portico-l4,haproxy,haproxy-l4,haproxy-splice] [--record PREFIX]

`haproxy-splice` is HAProxy's L7 config with `option splice-response` (kernel splice(2) for
response bodies, on :8086): not the bench's reference config, a control for what splicing
does by itself. `--record PREFIX` runs `perf record -g` instead of counting, into
PREFIX.TARGET (`perf report -i PREFIX.portico --no-children --sort sym`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # bench/bench.py: the harness this one reuses

SYSCALLS = (
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "splice",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "getsockopt",
    "setsockopt",
    "futex",
)
TARGETS = {
    "portico": 8080,
    "portico-l4": 8085,
    "haproxy": 8082,
    "haproxy-l4": 8083,
    "haproxy-splice": 8086,  # HAProxy's L7 with `option splice-response` (kernel splice(2))
}


def worker_pid(proc: b.Proc) -> int:
    """The process that relays: Portico's (one) worker, or the process itself."""
    tree = b.process_tree(proc.pid)
    if proc.name != "portico":
        return proc.pid
    # the worker is the busiest process of the tree after a request or two: take the leaf
    # with the most CPU so far (the supervisor and the fork server do little)
    cpu = b.pid_cpu_seconds(proc.pid)
    leaves = [pid for pid in tree if pid != proc.pid]
    return max(leaves, key=lambda pid: cpu.get(pid, 0.0))


def measure(
    pid: int, port: int, path: str, seconds: int, record: str | None = None
) -> tuple[int, dict[str, int], float, float]:
    out = b.RUNDIR / "logs" / "syscalls.perf"
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    user0, kernel0 = b.tree_user_kernel_seconds(pid)
    command = ["perf", "stat", "-x,", "-e", events, "-p", str(pid), "-o", str(out)]
    if record is not None:  # a profile instead of counts: `perf report -i` it
        command = ["perf", "record", "-g", "-p", str(pid), "-o", record]
    perf = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    text = b.run_wrk(
        b.wrk_argv(
            argparse.Namespace(threads=1, connections=50), f"http://127.0.0.1:{port}{path}", seconds
        ),
        seconds,
    )
    perf.send_signal(2)
    perf.wait(timeout=10)
    user1, kernel1 = b.tree_user_kernel_seconds(pid)
    done = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines() if record is None else ():
        found = re.match(r"^(\d+),[^,]*,syscalls:sys_enter_(\w+)", line)
        if found:
            counts[found.group(2)] = int(found.group(1))
    return done, counts, (user1 - user0) * 1e6 / done, (kernel1 - kernel0) * 1e6 / done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="/1m")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--targets", default="portico,portico-l4,haproxy")
    parser.add_argument("--portico-bin", default=str(b.PORTICO_BIN))
    parser.add_argument("--record", help="perf record -g into RECORD.TARGET instead of counting")
    args = parser.parse_args(argv)
    b.prepare_rundir(portico_l4=True)
    wanted = args.targets.split(",")
    rows = []
    try:
        origins = b.spawn(
            "origins", b.nginx_argv("nginx-backends.conf", "backends-error.log"), b.LOAD_CORE
        )
        b.wait_for_port(origins, b.ORIGIN_PORTS[0])
        procs: dict[str, b.Proc] = {}
        if any(t.startswith("portico") for t in wanted):
            procs["portico"] = b.spawn(
                "portico", [args.portico_bin, "run", str(b.RUNDIR / "portico.yaml")], b.PROXY_CORE
            )
            b.wait_for_port(procs["portico"], 8080)
        if any(t.startswith("haproxy") for t in wanted):
            procs["haproxy"] = b.spawn(
                "haproxy", ["haproxy", "-db", "-f", str(b.RUNDIR / "haproxy.cfg")], b.PROXY_CORE
            )
            b.wait_for_port(procs["haproxy"], 8082)
        if "haproxy-splice" in wanted:
            text = (b.RUNDIR / "haproxy.cfg").read_text()
            text = text.replace(
                "    timeout connect 5s\n", "    timeout connect 5s\n    option splice-response\n"
            )
            text = text.replace("127.0.0.1:8082", "127.0.0.1:8086").replace(
                "127.0.0.1:8083", "127.0.0.1:8087"
            )
            (b.RUNDIR / "haproxy-splice.cfg").write_text(text)
            procs["haproxy-splice"] = b.spawn(
                "haproxy-splice",
                ["haproxy", "-db", "-f", str(b.RUNDIR / "haproxy-splice.cfg")],
                b.PROXY_CORE,
            )
            b.wait_for_port(procs["haproxy-splice"], 8086)
        for target in wanted:
            proc = procs["haproxy-splice" if target == "haproxy-splice" else target.split("-")[0]]
            port = TARGETS[target]
            b.check_response(port, args.path, b.PATHS[args.path.strip("/")][1])
            time.sleep(0.5)
            pid = worker_pid(proc)
            b.log(f"{target}: pid {pid}")
            rows.append(
                (
                    target,
                    *measure(
                        pid,
                        port,
                        args.path,
                        args.seconds,
                        args.record and f"{args.record}.{target}",
                    ),
                )
            )
    finally:
        b.stop_all()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{args.path}, {args.seconds} s each ({when})")
    print("per request:")
    names = [n for n in SYSCALLS if any(row[2].get(n) for row in rows)]
    print("| target | requests | user µs | kernel µs | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for target, done, counts, user, kernel in rows:
        cells = " | ".join(f"{counts.get(n, 0) / done:.2f}" for n in names)
        print(f"| {target} | {done} | {user:.1f} | {kernel:.1f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
