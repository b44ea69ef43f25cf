#!/usr/bin/env python3
"""Portico's side-by-side benchmark: origin direct, Portico, HAProxy and NGINX in one run.

Standard library only. Entry point: ``bench/run`` (see bench/README.md). What it does:

1. installs wrk, nginx, libnginx-mod-stream and haproxy from Debian's packages when missing,
   without letting apt start them as system services;
2. lays out a scratch RUNDIR (bench/rundir/) and copies the reference configs of bench/configs/
   into it with RUNDIR substituted;
3. starts the origins (nginx, 127.0.0.1:9001-9003) on the load core (1);
4. for each target in turn: starts it pinned to the proxy core (0), checks one request per path,
   runs wrk (pinned to core 1) per path, reading the target's process-tree CPU time from
   /proc/<pid>/stat before and after, and sampling its process-tree RSS meanwhile; stops it;
5. with --h2: the same over TLS with h2load, HTTP/2 and HTTP/1.1, NGINX :8443 beside Portico's
   TLS listeners (:8444 h2, :8445 HTTP/1.1), reading CPU at the edges of h2load's measured window;
6. with --tls-soak: new TLS connections against Portico for a while, sampling its workers' RSS,
   to show that memory levels off (asyncio/uvloop servers have leaked under TLS churn);
7. prints Markdown tables (and writes bench/RESULTS.md with --write);
8. stops everything it started, by PID, on success, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RUNDIR = BENCH / "rundir"  # not bench/run/: that name is the entry script
CONFIGS = BENCH / "configs"  # the reference HAProxy and NGINX configs; read-only, never written
CONFIG_FILES = ("nginx-backends.conf", "nginx-proxy.conf", "haproxy.cfg")
RESULTS = BENCH / "RESULTS.md"
# wrk's script for the "varied requests" row: no request repeats the one before it byte for
# byte (a counter in the query and in a header), as a browser's or an API client's do not; wrk
# alone sends one request over and over, the best case for any proxy's memo of a repeated head
VARY_SCRIPT = CONFIGS / "vary.lua"
PORTICO_BIN = REPO / ".venv" / "bin" / "portico"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

PROXY_CORE = 0
PROXY_CPUS = {PROXY_CORE}  # --workers N: the proxies may use cores 0..N-1 (main sets it)
LOAD_CORE = 1 if (os.cpu_count() or 1) >= 2 else 0

ORIGIN_PORTS = (9001, 9002, 9003)
PATHS = {"small": ("/small", 5), "16k": ("/16k", 16 * 1024), "1m": ("/1m", 1024 * 1024)}
DEFAULT_PATHS = tuple(PATHS)
# --content (#13): files served by the proxy itself (/s/, NGINX with sendfile), and a 100 KiB
# JSON body from the origins compressed on the fly (/j/<coding>/: gzip level 5 on both, br 4
# and zstd 3 on Portico only: NGINX has no on-the-fly br or zstd here). HAProxy serves no
# files and is not configured to compress: these rows are Portico's and NGINX's.
CONTENT_PATHS = {
    "static-1k": ("/s/1k", 1024),
    "static-1m": ("/s/1m", 1024 * 1024),
    "json-gzip": ("/j/gzip/100k.json", 0),  # 0: the compressed size is each proxy's own
    "json-br": ("/j/br/100k.json", 0),
    "json-zstd": ("/j/zstd/100k.json", 0),
}
PATHS.update(CONTENT_PATHS)
ENCODED = {"json-gzip": "gzip", "json-br": "br", "json-zstd": "zstd"}  # Accept-Encoding sent
CONTENT_TARGETS = ("origin", "portico", "nginx")  # origin: the static rows only
JSON_SIZE = 100 * 1024
TARGETS = ("origin", "portico", "haproxy", "nginx")

START_TIMEOUT = 10.0  # seconds for a target's port to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
CHECK_TIMEOUT = 5.0  # seconds for the one-request sanity check per path
WRK_GRACE = 15.0  # seconds past wrk's own -d before it is killed
NOISE_WARN_PCT = 10.0  # % of a core used by others during a row before the table warns
RSS_INTERVAL = 0.1  # seconds between RSS samples
CLK_TCK = os.sysconf("SC_CLK_TCK")

PORTICO_YAML = """\
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:8080
    protocol: http
    default_pool: app
{routes}{l4_listener}pools:
  app:
    policy: round_robin
    servers:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
"""
# Portico over TLS (--h2, --tls-soak): its own file, so a key the installed Portico refuses (the
# h2 listener's `http2:` before HTTP/2 lands) costs the h2 rows only, never the plain-HTTP ones.
PORTICO_TLS_YAML = """\
workers: 1
listeners:
  - name: tls
    bind: 127.0.0.1:{h1_port}
    protocol: https
    default_pool: app
    tls:
      certificates:
        - cert: {rundir}/tls/cert.pem
          key: {rundir}/tls/key.pem
{h2_listener}pools:
  app:
    policy: round_robin
    servers:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
"""
# The HTTP/2 listener: adjust here if Portico's HTTP/2 settings end up spelt differently.
PORTICO_H2_LISTENER = """\
  - name: h2
    bind: 127.0.0.1:{h2_port}
    protocol: https
    default_pool: app
    http2:
      enabled: true
    tls:
      certificates:
        - cert: {rundir}/tls/cert.pem
          key: {rundir}/tls/key.pem
"""
NGINX_TLS_PORT = 8443  # nginx-proxy.conf: TLS, ALPN h2 and http/1.1
PORTICO_H2_PORT = 8444
PORTICO_TLS_PORT = 8445  # HTTP/1.1 only; the --tls-soak target
TLS_TARGETS = ("nginx", "portico")  # the order of --h2's rows
SOAK_INTERVAL = 2.0  # seconds between RSS samples during --tls-soak
SOAK_CLIENTS = 50  # connections per h2load run in the soak (one full handshake each)
SOAK_REQUESTS_PER_CONN = 4
SOAK_LEVEL_MIB = 1.0  # more growth than this from the middle to the last third: "keeps growing"

# Portico's L4 row (--l4): a TCP listener on :8085 over the same pool.
PORTICO_L4_LISTENER = """\
  - name: tcp
    bind: 127.0.0.1:8085
    protocol: tcp
    default_pool: app
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so every finally: block runs (BaseException, like
    KeyboardInterrupt, so no `except Exception` turns it into a row's error)."""


# --------------------------------------------------------------------------- /proc readers


def _proc_table() -> dict[int, list[bytes]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (field 3 is index 0)."""
    table: dict[int, list[bytes]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        table[int(name)] = data[data.rindex(b")") + 2 :].split()
    return table


def process_tree(root: int, table: dict[int, list[bytes]] | None = None) -> list[int]:
    """root and all its descendants that are alive now."""
    table = _proc_table() if table is None else table
    if root not in table:
        return []
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime (+ cutime+cstime, so reaped children still count) over root's process tree."""
    user, kernel = tree_user_kernel_seconds(root)
    return user + kernel


def tree_user_kernel_seconds(root: int) -> tuple[float, float]:
    """(utime + cutime, stime + cstime) over root's process tree: user and kernel CPU apart."""
    table = _proc_table()
    user = kernel = 0
    for pid in process_tree(root, table):
        f = table[pid]
        user += int(f[11]) + int(f[13])
        kernel += int(f[12]) + int(f[14])
    return user / CLK_TCK, kernel / CLK_TCK


def pid_cpu_seconds(root: int) -> dict[int, float]:
    """utime+stime of each process of root's tree (not its reaped children)."""
    table = _proc_table()
    return {
        pid: (int(table[pid][11]) + int(table[pid][12])) / CLK_TCK
        for pid in process_tree(root, table)
    }


def tree_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def tree_pss_kib(root: int) -> int:
    """Proportional set size of root's tree: each page counted once, split among the processes
    mapping it (what `smem` shows). Summed RSS counts a page shared by a forked worker and its
    parent once per process; summed PSS is what the tree really holds."""
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU counters in seconds, read together at one moment; subtract two to get a run's share."""

    at: float  # time.monotonic()
    server: float  # the target's process tree
    server_user: float  # ... of which in user space (the rest: in the kernel)
    origins: float  # the origins' process tree (0 when the target is the origins)
    harness: float  # this process and its reaped children (wrk)
    machine: float  # user+nice+system over all cores, whoever ran
    softirq: float  # irq+softirq over all cores: loopback TCP work charged to no process
    load_busy: float  # the load core's busy time
    load_total: float  # the load core's total time

    @classmethod
    def take(cls, server: int, origins: int | None) -> CpuSnapshot:
        cores: dict[str, list[int]] = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu"):
                    name, *values = line.split()
                    cores[name] = [int(v) for v in values]
        total, load = cores["cpu"], cores.get(f"cpu{LOAD_CORE}", cores["cpu"])
        t = os.times()
        return cls(
            at=time.monotonic(),
            server=sum(user_kernel := tree_user_kernel_seconds(server)),
            server_user=user_kernel[0],
            origins=tree_cpu_seconds(origins) if origins is not None else 0.0,
            harness=t.user + t.system + t.children_user + t.children_system,
            machine=sum(total[0:3]) / CLK_TCK,
            softirq=sum(total[5:7]) / CLK_TCK,
            load_busy=(sum(load[0:3]) + sum(load[5:7])) / CLK_TCK,
            load_total=sum(load[0:8]) / CLK_TCK,
        )


class RssSampler:
    """Samples the process tree's summed VmRSS in a thread; keeps the peak."""

    def __init__(self, root: int) -> None:
        self.root, self.peak_kib = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.root))
            if self._stop.wait(RSS_INTERVAL):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.root))


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self) -> str:
        """The last line of its output (a traceback's exception, nginx's [emerg]) and where the
        rest is."""
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = lines[-1].strip() if lines else "no output"
        return f"{last} (see {self.logfile.relative_to(REPO)})"


STARTED: list[Proc] = []  # every long-running process this harness started, stopped in finally


def _cpu_list(core: int) -> str:
    cpus = PROXY_CPUS if core == PROXY_CORE else {core}
    return ",".join(str(c) for c in sorted(cpus))


def spawn(name: str, argv: list[str], core: int) -> Proc:
    logfile = RUNDIR / "logs" / f"{name}.out"
    with open(logfile, "ab") as out:
        popen = subprocess.Popen(
            # taskset execs: the pid is the program's own
            ["taskset", "-c", _cpu_list(core), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the harness only; it stops them in order
            cwd=RUNDIR,
        )
    proc = Proc(name, popen, logfile)
    STARTED.append(proc)
    log(f"started {name} (pid {proc.pid}, cores {_cpu_list(core)}): {shlex.join(argv)}")
    return proc


def stop(proc: Proc) -> None:
    """SIGTERM the process, SIGKILL its tree (and its own process group) after STOP_TIMEOUT."""
    if proc in STARTED:
        STARTED.remove(proc)
    if proc.popen.poll() is not None:
        return
    tree = process_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"{proc.name} (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f}s: SIGKILL")
    # Children may outlive their parent by a moment; give them the same deadline, then kill.
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.05)
    for pid in tree:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): only ours
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=STOP_TIMEOUT)
    log(f"stopped {proc.name} (pid {proc.pid})")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def stop_all() -> None:
    for proc in reversed(list(STARTED)):
        try:
            stop(proc)
        except Exception as exc:
            log(f"could not stop {proc.name} (pid {proc.pid}): {exc}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_port(proc: Proc, port: int, timeout: float = START_TIMEOUT) -> None:
    """Poll a TCP connect until the port accepts, the process exits, or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.popen.returncode}: {proc.log_tail()}"
            )
        if port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} did not accept on :{port} within {timeout:.0f}s: {proc.log_tail()}"
    )


def check_affinity(proc: Proc, core: int) -> None:
    want = PROXY_CPUS if core == PROXY_CORE else {core}
    for pid in process_tree(proc.pid):
        with contextlib.suppress(OSError):
            cpus = os.sched_getaffinity(pid)
            if cpus != want:
                log(f"warning: {proc.name} pid {pid} runs on cores {sorted(cpus)}, not {want}")


def check_response(port: int, path: str, size: int, coding: str | None = None) -> None:
    """One GET through the target: 200 and the expected body length, or an error. With
    `coding`: asked for with Accept-Encoding, and the body must come back in it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT)
    headers = {"Host": "localhost"}
    if coding is not None:
        headers["Accept-Encoding"] = coding
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if coding is not None:
        got = resp.getheader("Content-Encoding")
        if resp.status != 200 or got != coding:
            raise RuntimeError(
                f"GET {path} gave {resp.status}, Content-Encoding {got} (no {coding})"
            )
        return
    if resp.status != 200 or len(body) != size:
        raise RuntimeError(
            f"GET {path} gave {resp.status} with {len(body)} bytes (expected 200 with {size})"
        )


# --------------------------------------------------------------------------- installation

PACKAGES = {  # Debian package -> a file it installs
    "wrk": "wrk",
    "nginx": "nginx",
    "libnginx-mod-stream": str(STREAM_MODULE),
    "haproxy": "haproxy",
    "nghttp2-client": "h2load",  # --h2, --tls-soak
}
SERVICE_PORTS = (80, 8080, 8081, 8082, 8083, 8084, 8443)


def have(thing: str) -> bool:
    if thing.startswith("/"):
        return Path(thing).exists()
    return shutil.which(thing) is not None or Path("/usr/sbin", thing).exists()


def _pids_named(*names: str) -> set[int]:
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                comm = Path(f"/proc/{name}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                pids.add(int(name))
    return pids


def install_missing() -> None:
    missing = [pkg for pkg, probe in PACKAGES.items() if not have(probe)]
    if not missing:
        return
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            log(f"missing {' '.join(missing)} and not root: install them with apt-get")
            return
        prefix = ["sudo", "-n"]
    log(f"installing from Debian's packages: {' '.join(missing)}")
    before = _pids_named("nginx", "haproxy")
    # policy-rc.d exiting 101 tells invoke-rc.d/deb-systemd-invoke not to start services.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists() and os.geteuid() == 0:
        policy.write_text(
            "#!/bin/sh\n# written by portico bench/run during apt-get install\nexit 101\n"
        )
        policy.chmod(0o755)
        made_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(
            [*prefix, "apt-get", "update", "-q"],
            env=env,
            check=False,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )
        res = subprocess.run(
            [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env,
            check=False,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            log(f"apt-get install exited {res.returncode}; going on with what is installed")
    except subprocess.TimeoutExpired:
        log("apt-get timed out; going on with what is installed")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    # Keep the services apt just installed from starting at boot (the package enables them),
    # and stop any the install started anyway: exactly the new processes, by PID.
    systemd = Path("/run/systemd/system").is_dir()
    for svc in ("nginx", "haproxy"):
        if svc not in missing:
            continue
        if systemd:
            argv = [*prefix, "systemctl", "disable", "--now", svc]
        elif shutil.which("update-rc.d"):
            argv = [*prefix, "update-rc.d", svc, "disable"]
        else:
            continue
        subprocess.run(argv, check=False, timeout=60, capture_output=True)
    started = _pids_named("nginx", "haproxy") - before
    for pid in sorted(started):
        log(f"stopping system service process {pid} started by apt-get install")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.1)
    for pid in started:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    held = [p for p in SERVICE_PORTS if port_open(p)]
    if held:
        log(f"warning: ports {held} are held by something this harness did not start")


# --------------------------------------------------------------------------- RUNDIR


PORTICO_CONTENT_ROUTES = """\
      - match: {{path_prefix: /s/}}
        strip_prefix: /s
        static: {{root: {rundir}/www}}
      - match: {{path_prefix: /j/gzip/}}
        strip_prefix: /j/gzip
        pool: app
        compression: {{algorithms: [gzip], levels: {{gzip: 5}}}}
      - match: {{path_prefix: /j/br/}}
        strip_prefix: /j/br
        pool: app
        compression: {{algorithms: [br], levels: {{br: 4}}}}
      - match: {{path_prefix: /j/zstd/}}
        strip_prefix: /j/zstd
        pool: app
        compression: {{algorithms: [zstd], levels: {{zstd: 3}}}}
"""


def portico_routes(count: int, content: bool = False) -> str:
    """`count` routing rules that the benchmark's requests do NOT match (so each request is
    checked against all of them, then goes to the default pool): host and path rules, as a
    site with many virtual hosts and sections would have. `content`: first the static and
    compression routes of the --content rows."""
    if count <= 0 and not content:
        return ""
    rules = ["    routes:\n"]
    if content:
        rules.append(PORTICO_CONTENT_ROUTES.format(rundir=RUNDIR))
    for i in range(count):
        if i % 2:
            rules.append(f"      - match: {{host: site{i}.example.com}}\n        pool: app\n")
        else:
            rules.append(f"      - match: {{path_prefix: /section{i}/}}\n        pool: app\n")
    return "".join(rules)


def json_body(size: int) -> bytes:
    """API-like JSON records, `size` bytes (what --content's proxies compress)."""
    out = bytearray(b"[")
    i = 0
    while len(out) < size - 1:
        out += b'{"id": %d, "name": "item-%d", "price": %d.%02d, "tags": ["a", "b"]},' % (
            i * 7919 % 100003,
            i,
            i % 997,
            i % 100,
        )
        i += 1
    return bytes(out[: size - 1]) + b"]"


def prepare_rundir(
    portico_l4: bool, routes: int = 0, workers: int = 1, content: bool = False
) -> None:
    missing = [name for name in CONFIG_FILES if not (CONFIGS / name).is_file()]
    if missing:
        raise SystemExit(f"bench configs missing from {CONFIGS}: {', '.join(missing)}")
    if RUNDIR.exists():
        for pidfile in (RUNDIR / "run").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                if _alive(pid):
                    log(f"warning: {pidfile} names live pid {pid} (left by an earlier run?)")
        shutil.rmtree(RUNDIR)
    for sub in ("www", "tmp", "logs", "run"):
        (RUNDIR / sub).mkdir(parents=True)
    pattern = bytes(range(32, 127))
    files = {"16k": 16 * 1024, "1m": 1024 * 1024, "1k": 1024}
    for name, size in files.items():
        (RUNDIR / "www" / name).write_bytes((pattern * (size // len(pattern) + 1))[:size])
    (RUNDIR / "www" / "100k.json").write_bytes(json_body(JSON_SIZE))
    rundir = str(RUNDIR)
    have_cert = make_cert()
    for conf in CONFIG_FILES:
        text = (CONFIGS / conf).read_text().replace("RUNDIR", rundir)
        if workers != 1 and conf != "nginx-backends.conf":  # the proxies', not the origins'
            text = re.sub(r"(?m)^(\s*nbthread) 1$", rf"\1 {workers}", text)
            text = re.sub(r"(?m)^worker_processes 1;", f"worker_processes {workers};", text)
        if conf == "nginx-proxy.conf" and not have_cert:
            text = drop_server_block(text, f"listen 127.0.0.1:{NGINX_TLS_PORT}")
            log("openssl not found: the :8443 TLS server is left out of nginx-proxy.conf")
        (RUNDIR / conf).write_text(text)
    (RUNDIR / "portico.yaml").write_text(
        PORTICO_YAML.format(
            l4_listener=PORTICO_L4_LISTENER if portico_l4 else "",
            routes=portico_routes(routes, content),
        ).replace("workers: 1\n", f"workers: {workers}\n", 1)
    )
    if have_cert:
        ports = {"rundir": rundir, "h1_port": PORTICO_TLS_PORT, "h2_port": PORTICO_H2_PORT}
        h2 = PORTICO_H2_LISTENER.format(**ports)
        for name, listener in (("portico-tls.yaml", h2), ("portico-tls-h1.yaml", "")):
            (RUNDIR / name).write_text(PORTICO_TLS_YAML.format(h2_listener=listener, **ports))


def make_cert() -> bool:
    """Self-signed cert for nginx-proxy.conf's :8443 server and Portico's TLS listeners (--h2,
    --tls-soak): the same key and certificate on both sides."""
    if not shutil.which("openssl"):
        return False
    tls = RUNDIR / "tls"
    tls.mkdir()
    res = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tls / "key.pem"),
            "-out",
            str(tls / "cert.pem"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return res.returncode == 0


def drop_server_block(text: str, marker: str) -> str:
    at = text.index(marker)
    start = text.rindex("server {", 0, at)
    depth, i = 0, start
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[:start] + text[i + 1 :]
        i += 1


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    key: str  # origin | portico | haproxy | nginx
    label: str
    start: Callable[[], Proc]
    l7_port: int
    l4_port: int | None = None  # None: no L4 row for this target
    l4_note: str = ""  # why there is no L4 row


def nginx_argv(conf: str, errlog: str) -> list[str]:
    return [
        "nginx",
        "-p",
        f"{RUNDIR}/",
        "-e",
        str(RUNDIR / "logs" / errlog),
        "-c",
        str(RUNDIR / conf),
        "-g",
        "daemon off;",
    ]


def make_targets(args: argparse.Namespace) -> list[Target]:
    def start_origin() -> Proc:
        raise AssertionError("the origins run for the whole benchmark")

    def start_portico() -> Proc:
        if not args.portico_bin.exists():
            raise RuntimeError(f"{args.portico_bin} not found (pip install -e . in the venv?)")
        return spawn(
            "portico", [str(args.portico_bin), "run", str(RUNDIR / "portico.yaml")], PROXY_CORE
        )

    def start_haproxy() -> Proc:
        if not have("haproxy"):
            raise RuntimeError("haproxy is not installed")
        return spawn("haproxy", ["haproxy", "-db", "-f", str(RUNDIR / "haproxy.cfg")], PROXY_CORE)

    def start_nginx() -> Proc:
        if not have("nginx") or not STREAM_MODULE.exists():
            raise RuntimeError("nginx or libnginx-mod-stream is not installed")
        return spawn(
            "nginx-proxy", nginx_argv("nginx-proxy.conf", "nginx-proxy-error.log"), PROXY_CORE
        )

    return [
        Target("origin", "origin (direct)", start_origin, ORIGIN_PORTS[0]),
        Target(
            "portico",
            "Portico",
            start_portico,
            8080,
            8085 if args.l4 else None,
            "not measured (run with --l4)",
        ),
        Target("haproxy", "HAProxy", start_haproxy, 8082, 8083),
        Target("nginx", "NGINX", start_nginx, 8081, 8084),
    ]


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    target: str  # Target.key
    label: str
    layer: str  # L7 | L4
    path: str  # "small" | "16k" | "1m" | "*" for a target-wide error
    error: str = ""
    rps: float = 0.0
    requests: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_kib: int = 0
    errors: int = 0
    load_core_pct: float = 0.0  # how busy wrk + origins kept their core
    softirq_pct: float = 0.0  # kernel network work charged to no process, in % of one core
    other_pct: float = 0.0  # CPU used by processes this harness did not start, % of one core
    user_s: float = 0.0  # of cpu_s, in user space (the rest in the kernel)
    mean_us: float = 0.0  # h2load's mean time per request (TLS rows; h2load has no percentiles)
    tls: str = ""  # TLS rows: the negotiated version, cipher and key exchange
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s else 0.0


def wrk_argv(
    args: argparse.Namespace, url: str, seconds: int, coding: str | None = None
) -> list[str]:
    header = ["-H", f"Accept-Encoding: {coding}"] if coding is not None else []
    return [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--latency",
        *header,
        url,
    ]


def run_wrk(argv: list[str], seconds: int) -> str:
    """Run wrk bounded by its -d plus WRK_GRACE; return its stdout."""
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = Proc("wrk", popen, RUNDIR / "logs" / "wrk.out")
    STARTED.append(proc)
    try:
        out, _ = popen.communicate(timeout=seconds + WRK_GRACE)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"wrk did not finish within {seconds + WRK_GRACE:.0f}s") from exc
    finally:
        stop(proc)
    text = out.decode(errors="replace")
    with open(proc.logfile, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n{text}\n")
    if popen.returncode != 0:
        raise RuntimeError(f"wrk exited {popen.returncode}: {text.strip()[-200:]}")
    return text


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _duration_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str, row: Row) -> None:
    def grab(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.M)
        if not m:
            raise RuntimeError(f"wrk output lacks {pattern!r}: {text.strip()[-200:]}")
        return m

    row.rps = float(grab(r"^Requests/sec:\s+([\d.]+)").group(1))
    row.requests = int(grab(r"^\s*(\d+) requests in ").group(1))
    row.p50_us = _duration_us(grab(r"^\s+50%\s+(\S+)").group(1))
    row.p99_us = _duration_us(grab(r"^\s+99%\s+(\S+)").group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    row.errors = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    row.errors += int(m.group(1)) if m else 0


def measure(args: argparse.Namespace, server: Proc, origins: Proc, row: Row, port: int) -> None:
    path, size = PATHS[row.path]
    coding = ENCODED.get(row.path)
    check_response(port, path, size, coding)
    url = f"http://127.0.0.1:{port}{path}"
    if args.warmup:
        run_wrk(wrk_argv(args, url, args.warmup, coding), args.warmup)
    argv = wrk_argv(args, url, args.duration, coding)
    others = origins.pid if origins is not server else None
    with RssSampler(server.pid) as rss:
        a = CpuSnapshot.take(server.pid, others)
        out = run_wrk(argv, args.duration)
        b = CpuSnapshot.take(server.pid, others)
    parse_wrk(out, row)
    account(row, a, b, rss.peak_kib)


def account(row: Row, a: CpuSnapshot, b: CpuSnapshot, rss_kib: int) -> None:
    """Fill the row's CPU columns from two snapshots around its measured window, and log it."""
    row.cpu_s, row.wall_s, row.rss_kib = b.server - a.server, b.at - a.at, rss_kib
    row.user_s = b.server_user - a.server_user
    if b.load_total > a.load_total:
        row.load_core_pct = 100.0 * (b.load_busy - a.load_busy) / (b.load_total - a.load_total)
    ours = (b.server - a.server) + (b.origins - a.origins) + (b.harness - a.harness)
    row.other_pct = max(0.0, 100.0 * ((b.machine - a.machine) - ours) / row.wall_s)
    row.softirq_pct = 100.0 * (b.softirq - a.softirq) / row.wall_s
    path = PATHS[row.path][0]
    log(
        f"  {row.label} {row.layer} {path}: {row.rps:,.0f} req/s, proxy CPU {row.cpu_pct:.0f}%, "
        f"{row.per_cpu_s:,.0f} req/CPU-s, load core {row.load_core_pct:.0f}% busy, "
        f"softirq {row.softirq_pct:.0f}%, others {row.other_pct:.0f}% of a core, "
        f"{row.errors} errors"
    )


def start_listening(start: Callable[[], Proc], ports: list[int]) -> Proc:
    """Start a target once its ports are free (a leftover would be measured instead), and wait
    until it accepts on all of them; stop it again if it does not."""
    busy = [p for p in ports if port_open(p)]
    if busy:
        raise RuntimeError(f"port(s) {busy} already in use by a process this harness did not start")
    server = start()
    try:
        for p in ports:
            wait_for_port(server, p)
    except BaseException:
        stop(server)
        raise
    return server


def content_skip(target: str, layer: str, name: str) -> str:
    """Why a --content row is not measured for this target, or "" (measure it)."""
    if name not in CONTENT_PATHS:
        return ""
    if layer != "L7" or target not in CONTENT_TARGETS:
        return "n/a (no static files or compression configured here)"
    if target == "origin" and name in ENCODED:
        return "n/a (the origins send identity: the proxies compress)"
    if target == "nginx" and name in ("json-br", "json-zstd"):
        return "n/a (NGINX here has no on-the-fly br or zstd)"
    return ""


def run_target(args: argparse.Namespace, target: Target, origins: Proc) -> list[Row]:
    layers: list[tuple[str, int | None]] = [("L7", target.l7_port)]
    if args.l4 and target.key != "origin":
        layers.append(("L4", target.l4_port))
    rows: list[Row] = []
    if target.key == "origin":
        server = origins
    else:
        try:
            server = start_listening(target.start, [p for _, p in layers if p is not None])
        except Exception as exc:
            log(f"{target.label}: not available: {exc}")
            return [
                Row(target.key, target.label, layer, "*", error=f"not available (error: {exc})")
                for layer, _ in layers
            ]
        check_affinity(server, PROXY_CORE)
    try:
        for layer, port in layers:
            if port is None:
                rows.append(Row(target.key, target.label, layer, "*", error=target.l4_note))
                continue
            for name in args.paths:
                row = Row(target.key, target.label, layer, name)
                skip = content_skip(target.key, layer, name)
                if skip:
                    row.error = skip
                    rows.append(row)
                    continue
                try:
                    measure(args, server, origins, row, port)
                except (RuntimeError, OSError, http.client.HTTPException, ValueError) as exc:
                    row.error = f"failed (error: {exc})"
                    log(f"  {target.label} {layer} {name}: {row.error}")
                rows.append(row)
                if server.popen.poll() is not None:
                    raise RuntimeError(f"{target.label} exited: {server.log_tail()}")
    except RuntimeError as exc:
        done = {(r.layer, r.path) for r in rows}
        rows += [
            Row(target.key, target.label, layer, name, error=f"not available (error: {exc})")
            for layer, port in layers
            if port is not None
            for name in args.paths
            if (layer, name) not in done
        ]
    finally:
        if server is not origins:
            stop(server)
    return rows


# ------------------------------------------------------------------------- paired cycles (--cycles)

CANARY_LOOPS = 3_000_000  # a fixed amount of pure-Python work: its CPU time shows the host's speed
NOISY_CANARY_PCT = 10.0  # canary spread (max-min over median) past which the verdict is "noisy"
NOISY_RATIO_PCT = 30.0  # a ratio's spread past which the verdict is "noisy"
IDLE_CONNECTIONS = 1000  # idle keep-alive connections opened for the memory row
# seconds the idle connections stay idle before the reading: Portico's worker releases an idle
# HTTP/1 connection's parser after two of its 1 s sweeps (the others hold what they hold)
IDLE_SETTLE = 2.5


@dataclass
class Workload:
    """One row of the paired table: a layer, a path and how the client connects."""

    layer: str  # L7 | L4
    path: str  # PATHS key
    close: bool = False  # Connection: close (a new connection per request)
    vary: bool = False  # each request differs from the one before (VARY_SCRIPT)

    @property
    def label(self) -> str:
        if self.layer in PROTOCOLS:  # a TLS row (--h2 with --cycles): h2load's
            speaks = "HTTP/2" if self.layer == "h2" else "HTTP/1.1"
            return f"{speaks} over TLS {PATHS[self.path][0]}"
        mode = ", new connection per request" if self.close else ""
        mode += ", varied requests" if self.vary else ""
        return f"{self.layer} {PATHS[self.path][0]}{mode}"


@dataclass
class Paired:
    """Everything one --cycles run measured."""

    workloads: list[Workload]
    targets: list[str]  # Target.key, in measuring order of the even cycles
    # (workload index, target, cycle) -> requests per proxy CPU-second
    per_cpu_s: dict[tuple[int, str, str], float] = field(default_factory=dict)
    canary_ms: list[float] = field(default_factory=list)
    idle_kib: dict[str, list[float]] = field(default_factory=dict)  # target -> KiB per connection
    idle_next_kib: dict[str, list[float]] = field(default_factory=dict)  # ... the next ones'
    rest_kib: dict[str, tuple[int, int]] = field(default_factory=dict)  # target -> (RSS, PSS)
    other_pct: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    split_notes: list[str] = field(default_factory=list)  # --workers N: Portico's spread
    # (workload index, target) -> per run (user µs, kernel µs) of proxy CPU per request
    user_kernel_us: dict[tuple[int, str], list[tuple[float, float]]] = field(default_factory=dict)
    cycles: int = 0


def canary_ms() -> float:
    """CPU milliseconds of CANARY_LOOPS on the proxy core, in a fresh interpreter: the same
    work every time, so its spread is the host's drift (frequency, steal), not Portico's."""
    code = (
        "import time\nt=time.process_time()\nx=0\n"
        f"for i in range({CANARY_LOOPS}): x+=i*i%7\n"
        "print((time.process_time()-t)*1000)"
    )
    out = subprocess.run(
        ["taskset", "-c", str(PROXY_CORE), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(out.stdout.strip())


def idle_connection_kib(server: Proc, port: int, count: int) -> tuple[float, float]:
    """KiB of the target's RSS per idle keep-alive connection: open `count` connections, make
    one request on each (so each has served a request and sits idle, as a browser's does), and
    compare the process tree's RSS with and without them; then `count` more, the same way.
    The first figure includes what the first connections grow once (a heap with little free
    room left from start-up grows for them); the second, the marginal cost, does not."""
    check_response(port, "/small", PATHS["small"][1])  # what the first request loads, loaded
    base = tree_rss_kib(server.pid)
    socks: list[socket.socket] = []
    request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"

    def open_idle() -> int:
        opened = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=CHECK_TIMEOUT)
            s.sendall(request)
            opened.append(s)
        socks.extend(opened)
        deadline = time.monotonic() + 30
        for s in opened:  # each answer read, so the connection is idle on the server's side
            got = b""
            while not got.endswith(b"hello") and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("a target closed an idle connection")
                got += chunk
        time.sleep(IDLE_SETTLE)  # idle as an idle connection is (Portico's sweep: see below)
        return tree_rss_kib(server.pid)

    try:
        first = open_idle()
        second = open_idle()
    finally:
        for s in socks:
            s.close()
    return max(0.0, (first - base) / count), max(0.0, (second - first) / count)


def _measure_paired(
    args: argparse.Namespace, target: Target, server: Proc, origins: Proc, wl: Workload
) -> Row:
    port = target.l7_port if wl.layer == "L7" else target.l4_port
    assert port is not None
    row = Row(target.key, target.label, wl.layer, wl.path)
    path, size = PATHS[wl.path]
    coding = ENCODED.get(wl.path)  # --content's /j/ rows: compressed by the proxy
    check_response(port, path, size, coding)
    url = f"http://127.0.0.1:{port}{path}"
    extra = ["-H", "Connection: close"] if wl.close else []
    extra += ["-s", str(VARY_SCRIPT)] if wl.vary else []
    if args.warmup:
        run_wrk(wrk_argv(args, url, args.warmup, coding)[:-1] + extra + [url], args.warmup)
    argv = wrk_argv(args, url, args.duration, coding)[:-1] + extra + [url]
    with RssSampler(server.pid) as rss:
        before = pid_cpu_seconds(server.pid)
        a = CpuSnapshot.take(server.pid, origins.pid)
        out = run_wrk(argv, args.duration)
        b = CpuSnapshot.take(server.pid, origins.pid)
        after = pid_cpu_seconds(server.pid)
    parse_wrk(out, row)
    account(row, a, b, rss.peak_kib)
    used = sorted(after[p] - before[p] for p in after if p in before and p != server.pid)
    if len(used) > 1 and sum(used) > 0:  # the workers' (children's) share of the work
        row.notes.append(f"busiest worker {100 * used[-1] / sum(used):.0f}% of the workers' CPU")
    return row


def run_paired(args: argparse.Namespace, targets: list[Target], origins: Proc) -> Paired:
    """Interleaved short cycles: every target measured on every workload back to back, the
    order reversed on odd cycles (ABBA), so drift between cycles cancels in the ratios."""
    proxies = [t for t in targets if t.key != "origin"]
    workloads = [Workload("L7", p) for p in args.paths]
    if "small" in args.paths:
        workloads.append(Workload("L7", "small", close=True))
        workloads.append(Workload("L7", "small", vary=True))
    if args.l4:
        workloads += [Workload("L4", p) for p in args.paths]
    result = Paired(workloads, [t.key for t in proxies])
    servers: dict[str, Proc] = {}
    try:
        for t in proxies:
            try:
                servers[t.key] = start_listening(t.start, target_ports(t, args))
                check_affinity(servers[t.key], PROXY_CORE)
            except Exception as exc:
                result.errors.append(f"{t.label}: not available: {exc}")
                log(result.errors[-1])
        live = [t for t in proxies if t.key in servers]
        for run in range(args.idle_runs):
            # each on fresh processes: after load, allocators keep what they grew
            for t in live:
                if run:
                    stop(servers.pop(t.key))
                    servers[t.key] = start_listening(t.start, target_ports(t, args))
                try:
                    check_response(t.l7_port, "/small", PATHS["small"][1])
                    pid = servers[t.key].pid
                    if not run:
                        result.rest_kib[t.key] = (tree_rss_kib(pid), tree_pss_kib(pid))
                    kib, marginal = idle_connection_kib(servers[t.key], t.l7_port, IDLE_CONNECTIONS)
                except (RuntimeError, OSError) as exc:
                    result.errors.append(f"{t.label} idle memory: {exc}")
                    continue
                result.idle_kib.setdefault(t.key, []).append(kib)
                result.idle_next_kib.setdefault(t.key, []).append(marginal)
        for cycle in range(args.cycles):
            result.canary_ms.append(canary_ms())
            log(f"cycle {cycle + 1}/{args.cycles}: canary {result.canary_ms[-1]:.0f} ms")
            order = live if cycle % 2 == 0 else live[::-1]
            for i, wl in enumerate(result.workloads):
                for t in order:
                    if wl.layer == "L4" and t.l4_port is None:
                        continue
                    if content_skip(t.key, wl.layer, wl.path):
                        continue  # e.g. NGINX has no on-the-fly br here
                    try:
                        row = _measure_paired(args, t, servers[t.key], origins, wl)
                    except (RuntimeError, OSError, http.client.HTTPException, ValueError) as exc:
                        result.errors.append(f"cycle {cycle + 1} {t.label} {wl.label}: {exc}")
                        log(result.errors[-1])
                        continue
                    result.per_cpu_s[(i, t.key, str(cycle))] = row.per_cpu_s
                    if row.requests:
                        result.user_kernel_us.setdefault((i, t.key), []).append(
                            (
                                1e6 * row.user_s / row.requests,
                                1e6 * (row.cpu_s - row.user_s) / row.requests,
                            )
                        )
                    if t.key == "portico" and row.notes and args.workers > 1:
                        # how the workers shared it: per cycle (one worker has it all)
                        note = f"cycle {cycle + 1}, {wl.label}: {row.notes[-1]}"
                        result.split_notes.append(note)
                    result.other_pct.append(row.other_pct)
                    if servers[t.key].popen.poll() is not None:
                        raise RuntimeError(f"{t.label} exited: {servers[t.key].log_tail()}")
            result.cycles = cycle + 1
    finally:
        for proc in servers.values():
            stop(proc)
    return result


def target_ports(t: Target, args: argparse.Namespace) -> list[int]:
    return [t.l7_port] + ([t.l4_port] if args.l4 and t.l4_port else [])


def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def paired_ratios(result: Paired, i: int, target: str, anchor: str) -> list[float]:
    """The same-cycle ratios target ÷ anchor of requests per proxy CPU-second on workload i."""
    ratios = []
    for c in range(result.cycles):
        a = result.per_cpu_s.get((i, target, str(c)))
        b = result.per_cpu_s.get((i, anchor, str(c)))
        if a and b:
            ratios.append(a / b)
    return ratios


def spread_pct(values: list[float]) -> float:
    return 100.0 * (max(values) - min(values)) / statistics.median(values) if values else 0.0


def paired_verdict(result: Paired) -> str:
    """Whether the machine was quiet enough for the medians to mean something, and why not."""
    reasons = []
    if len(result.canary_ms) >= 2 and spread_pct(result.canary_ms) > NOISY_CANARY_PCT:
        reasons.append(f"the canary's speed varied {spread_pct(result.canary_ms):.0f}%")
    busy = [p for p in result.other_pct if p > NOISE_WARN_PCT]
    if busy:
        reasons.append(
            f"other processes used over {NOISE_WARN_PCT:.0f}% of a core in {len(busy)} of "
            f"{len(result.other_pct)} runs (max {max(busy):.0f}%)"
        )
    for i, wl in enumerate(result.workloads):
        for anchor in ("haproxy", "nginx"):
            ratios = paired_ratios(result, i, "portico", anchor)
            if len(ratios) >= 2 and spread_pct(ratios) > NOISY_RATIO_PCT:
                reasons.append(f"{wl.label} ÷ {anchor} spread {spread_pct(ratios):.0f}%")
    if result.cycles < 3:
        reasons.append(f"only {result.cycles} cycle(s): use --cycles 5 or more for figures")
    return "noisy: " + "; ".join(reasons) if reasons else "quiet: the medians can be quoted"


def render_paired(result: Paired, title: str = "Paired cycles") -> str:
    def cell(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        med, lo, hi = _median_range(values)
        return f"{med:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"

    lines = []
    for i, wl in enumerate(result.workloads):
        per = {
            t: [result.per_cpu_s[k] for k in result.per_cpu_s if k[0] == i and k[1] == t]
            for t in result.targets
        }
        lines.append(
            [
                wl.label,
                cell(paired_ratios(result, i, "portico", "haproxy"), ".2f"),
                cell(paired_ratios(result, i, "portico", "nginx"), ".2f"),
                *(
                    f"{statistics.median(per[t]):,.0f}" if per.get(t) else "-"
                    for t in ("portico", "haproxy", "nginx")
                ),
            ]
        )
    if result.rest_kib:
        rest = result.rest_kib
        lines.append(
            [
                "process tree at rest, RSS / PSS (MiB)",
                "",
                "",
                *(
                    f"{rest[t][0] / 1024:.0f} / {rest[t][1] / 1024:.0f}" if t in rest else "-"
                    for t in ("portico", "haproxy", "nginx")
                ),
            ]
        )
    if result.idle_kib:
        lines.append(
            [
                "memory per idle keep-alive connection (KiB)",
                "",
                "",
                *(cell(result.idle_kib.get(t, []), ".2f") for t in ("portico", "haproxy", "nginx")),
            ]
        )
        lines.append(
            [
                "... each of the next ones (KiB)",
                "",
                "",
                *(
                    cell(result.idle_next_kib.get(t, []), ".2f")
                    for t in ("portico", "haproxy", "nginx")
                ),
            ]
        )
    columns = (
        "workload",
        "Portico ÷ HAProxy per CPU-s, median (range)",
        "Portico ÷ NGINX per CPU-s, median (range)",
        "Portico req/CPU-s",
        "HAProxy req/CPU-s",
        "NGINX req/CPU-s",
    )
    table = markdown_table(columns, lines, 1)
    canary = result.canary_ms
    notes = [
        f"- {result.cycles} cycles; in each, every target ran each workload back to back "
        "(order reversed on odd cycles); a ratio is taken within one cycle, then the median "
        "over cycles is shown with the range.",
        f"- canary ({CANARY_LOOPS:,} loops of pure Python on the proxy core, CPU ms): "
        + (
            f"median {statistics.median(canary):.0f}, range {min(canary):.0f}-"
            f"{max(canary):.0f} ({spread_pct(canary):.0f}% drift)"
            if canary
            else "not run"
        ),
        f"- verdict: {paired_verdict(result)}",
    ]
    if result.idle_kib:
        notes.insert(
            -1,
            f"- idle memory: {IDLE_CONNECTIONS} keep-alive connections, each after one request and "
            f"then idle {IDLE_SETTLE:g} s, "
            "opened on each freshly started target before the cycles "
            f"({max(map(len, result.idle_kib.values()))} times, each on targets started anew: "
            "median and range); the process tree's RSS "
            "with them minus without, per connection; then as many more: their rise per "
            "connection is the next row (the marginal cost, without what the first ones grow "
            "once).",
        )
    if result.rest_kib:
        notes.insert(
            -1,
            "- at rest: each target's process tree freshly started, after one request; RSS "
            "summed over its processes counts a page shared by several once per process, PSS "
            "splits it among them (Portico's workers share their fork server's pages).",
        )
    for i, wl in enumerate(result.workloads):
        parts = []
        for t in ("portico", "haproxy", "nginx"):
            runs = result.user_kernel_us.get((i, t))
            if runs:
                user = statistics.median(u for u, _ in runs)
                kernel = statistics.median(k for _, k in runs)
                parts.append(f"{t} {user:.1f} user + {kernel:.1f} kernel")
        if parts:
            notes.append(f"- CPU µs per request, {wl.label} (medians): " + "; ".join(parts))
    notes += [f"- Portico {n}" for n in result.split_notes]
    notes += [f"- error: {e}" for e in result.errors]
    return f"## {title}\n\n" + table + "\n\n" + "\n".join(notes)


# --------------------------------------------------------------------------- TLS rows (--h2)

H2LOAD_STARTED = "Main benchmark duration is started"  # h2load flushes these as they happen
H2LOAD_OVER = "Main benchmark duration is over"
PROTOCOLS = {"h2": "h2", "h1": "http/1.1"}  # Row.layer of a TLS row -> the ALPN it must get


@dataclass
class H2load:
    """What one h2load run printed (its measured window only, when run with -D)."""

    rps: float = 0.0
    done: int = 0
    succeeded: int = 0
    failed: int = 0  # non-2xx/3xx responses included; "errored" is a subset
    errored: int = 0
    timeout: int = 0
    mean_us: float = 0.0
    data_bytes: int = 0  # response bodies
    protocol: str = ""  # ALPN result
    tls: str = ""
    last_line: str = ""

    @property
    def errors(self) -> int:
        return max(self.failed, self.errored + self.timeout)


def parse_h2load(text: str) -> H2load:
    def grab(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, text, re.M)

    res = H2load()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    res.last_line = lines[-1].strip() if lines else "no output"
    m = grab(
        r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout"
    )
    if not m:
        raise RuntimeError(f"h2load output lacks its requests line: {res.last_line}")
    res.done, res.succeeded, res.failed, res.errored, res.timeout = map(int, m.groups())
    if m := grab(r"^finished in \S+, ([\d.]+) req/s"):
        res.rps = float(m.group(1))
    if m := grab(r"^traffic: .*\((\d+)\) data$"):
        res.data_bytes = int(m.group(1))
    if (m := grab(r"^time for request:\s+\S+\s+\S+\s+(\S+)")) and res.done:
        res.mean_us = _duration_us(m.group(1))
    if m := grab(r"^Application protocol: (\S+)"):
        res.protocol = m.group(1)
    tls = [grab(rf"^{key}: (.+)$") for key in ("TLS Protocol", "Cipher", "Server Temp Key")]
    res.tls = ", ".join(m.group(1).strip() for m in tls if m)
    return res


def h2load_argv(
    url: str,
    layer: str,
    *,
    clients: int,
    streams: int = 1,
    seconds: int = 0,
    warmup: int = 0,
    requests: int = 1,
) -> list[str]:
    """h2load on the load core: for `seconds` (after `warmup`), or `requests` in all."""
    argv = ["taskset", "-c", str(LOAD_CORE), "h2load", "-t1", f"-c{clients}", f"-m{streams}"]
    if seconds:
        argv.append(f"-D{seconds}")
        if warmup:
            argv.append(f"--warm-up-time={warmup}")
    else:
        argv.append(f"-n{requests}")
    if layer == "h1":
        argv.append("--h1")
    return [*argv, url]


def tls_load_argv(args: argparse.Namespace, url: str, layer: str) -> list[str]:
    """The measured run. HTTP/1.1 gets as many requests in flight as h2 (clients x streams),
    one per connection: pipelining (h1 with -m > 1) is something browsers never do."""
    if layer == "h2":
        clients, streams = args.h2_clients, args.h2_streams
    else:
        clients, streams = args.h2_clients * args.h2_streams, 1
    return h2load_argv(
        url, layer, clients=clients, streams=streams, seconds=args.duration, warmup=args.warmup
    )


def run_h2load(
    argv: list[str], timeout: float, on_line: Callable[[str], None] | None = None
) -> str:
    """Run h2load, killed after `timeout` seconds, handing each output line to `on_line` as it
    arrives (so CPU can be read when its measured window opens and closes); return the output."""
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = Proc("h2load", popen, RUNDIR / "logs" / "h2load.out")
    STARTED.append(proc)
    timer = threading.Timer(timeout, popen.kill)  # unblocks the read loop below
    timer.start()
    lines: list[str] = []
    try:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        timer.cancel()
        popen.wait(timeout=STOP_TIMEOUT)
    finally:
        timer.cancel()
        stop(proc)
    text = "\n".join(lines)
    with open(proc.logfile, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n{text}\n\n")
    if popen.returncode == -signal.SIGKILL:
        raise RuntimeError(f"h2load did not finish within {timeout:.0f}s")
    return text


def check_tls(port: int, path: str, size: int, layer: str) -> H2load:
    """One request with h2load: 2xx, the expected body size, and the protocol asked for (a
    server that falls back to HTTP/1.1 must not pass for an h2 row)."""
    url = f"https://127.0.0.1:{port}{path}"
    res = parse_h2load(run_h2load(h2load_argv(url, layer, clients=1), CHECK_TIMEOUT + 5))
    want = PROTOCOLS[layer]
    if res.protocol != want:
        raise RuntimeError(f"negotiated {res.protocol or 'no protocol'}, not {want}")
    if res.succeeded != 1 or res.data_bytes != size:
        raise RuntimeError(
            f"GET {path} over {want}: {res.succeeded} of 1 succeeded with {res.data_bytes} "
            f"bytes (expected {size}): {res.last_line}"
        )
    return res


def measure_tls(args: argparse.Namespace, server: Proc, origins: Proc, row: Row, port: int) -> None:
    path, size = PATHS[row.path]
    check_tls(port, path, size, row.layer)
    edges: list[CpuSnapshot] = []

    def on_line(line: str) -> None:
        if line.startswith((H2LOAD_STARTED, H2LOAD_OVER)):
            edges.append(CpuSnapshot.take(server.pid, origins.pid))

    argv = tls_load_argv(args, f"https://127.0.0.1:{port}{path}", row.layer)
    with RssSampler(server.pid) as rss:
        first = CpuSnapshot.take(server.pid, origins.pid)
        out = run_h2load(argv, args.warmup + args.duration + WRK_GRACE, on_line)
        last = CpuSnapshot.take(server.pid, origins.pid)
    res = parse_h2load(out)
    if res.succeeded == 0:
        raise RuntimeError(f"no request succeeded: {res.last_line}")
    row.rps, row.requests, row.errors = res.rps, res.done, res.errors
    row.mean_us, row.tls = res.mean_us, res.tls
    # Without both markers (an h2load that prints them differently) the whole run counts,
    # connection set-up and warm-up included: slightly pessimistic, never wrong by much.
    a, b = (edges[0], edges[1]) if len(edges) == 2 else (first, last)
    account(row, a, b, rss.peak_kib)


def portico_check(binary: Path, conf: Path) -> str:
    """`portico check`'s complaint about `conf` in one line, or "" if it accepts it."""
    try:
        res = subprocess.run(
            [str(binary), "check", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"portico check: {exc}"
    if res.returncode == 0:
        return ""
    lines = (res.stderr + res.stdout).strip().splitlines()
    first = lines[0] if lines else f"exit code {res.returncode}"
    first = re.sub(r" \(valid keys here: [^)]*\)", "", first).replace(str(conf), conf.name)
    return f"portico check: {first}"


def start_portico_tls(args: argparse.Namespace) -> tuple[Proc, str]:
    """Portico with its TLS listeners, and why its h2 listener is missing ("" if it is there).

    portico-tls.yaml (HTTP/1.1 and h2 listeners) is checked, then started; if either fails,
    portico-tls-h1.yaml (HTTP/1.1 only) is started instead, so the h2 row says why and the
    HTTP/1.1-over-TLS rows and the soak still run."""
    if not args.portico_bin.exists():
        raise RuntimeError(f"{args.portico_bin} not found (pip install -e . in the venv?)")
    if not (RUNDIR / "portico-tls.yaml").exists():
        raise RuntimeError("no TLS certificate (openssl missing?)")

    def start(conf: str) -> Proc:
        argv = [str(args.portico_bin), "run", str(RUNDIR / conf)]
        return spawn("portico-tls", argv, PROXY_CORE)

    h2_error = portico_check(args.portico_bin, RUNDIR / "portico-tls.yaml")
    if not h2_error:
        try:
            ports = [PORTICO_TLS_PORT, PORTICO_H2_PORT]
            return start_listening(lambda: start("portico-tls.yaml"), ports), ""
        except RuntimeError as exc:
            h2_error = str(exc)
    log(f"Portico's h2 listener is not available ({h2_error}); starting the HTTP/1.1 one only")
    return start_listening(lambda: start("portico-tls-h1.yaml"), [PORTICO_TLS_PORT]), h2_error


def run_tls_target(args: argparse.Namespace, key: str, origins: Proc) -> list[Row]:
    """--h2's rows for one target: per path, h2 then HTTP/1.1, both over TLS."""
    target = next(t for t in make_targets(args) if t.key == key)
    h2_error = ""
    try:
        if not have("h2load"):
            raise RuntimeError("h2load is not installed (Debian package nghttp2-client)")
        if key == "portico":
            server, h2_error = start_portico_tls(args)
            ports = {"h2": PORTICO_H2_PORT, "h1": PORTICO_TLS_PORT}
        else:
            if "listen 127.0.0.1:8443" not in (RUNDIR / "nginx-proxy.conf").read_text():
                raise RuntimeError("no TLS certificate (openssl missing?)")
            server = start_listening(target.start, [NGINX_TLS_PORT])
            ports = {"h2": NGINX_TLS_PORT, "h1": NGINX_TLS_PORT}
    except Exception as exc:
        log(f"{target.label} over TLS: not available: {exc}")
        return [
            Row(key, target.label, layer, "*", error=f"not available (error: {exc})")
            for layer in PROTOCOLS
        ]
    check_affinity(server, PROXY_CORE)
    layers = [layer for layer in PROTOCOLS if not (layer == "h2" and h2_error)]
    rows = [Row(key, target.label, "h2", "*", error=f"not available (error: {h2_error})")]
    rows = rows if h2_error else []
    try:
        for name in args.paths:
            for layer in layers:
                row = Row(key, target.label, layer, name)
                try:
                    measure_tls(args, server, origins, row, ports[layer])
                except (RuntimeError, OSError, ValueError) as exc:
                    row.error = f"failed (error: {exc})"
                    log(f"  {target.label} {layer} {name}: {row.error}")
                rows.append(row)
                if server.popen.poll() is not None:
                    raise RuntimeError(f"{target.label} exited: {server.log_tail()}")
    except RuntimeError as exc:
        done = {(r.layer, r.path) for r in rows}
        rows += [
            Row(key, target.label, layer, name, error=f"not available (error: {exc})")
            for name in args.paths
            for layer in layers
            if (layer, name) not in done
        ]
    finally:
        stop(server)
    return rows


def run_tls_paired(args: argparse.Namespace, keys: list[str], origins: Proc) -> Paired:
    """--h2 with --cycles: NGINX and Portico over TLS both up, every TLS workload (h2 and
    HTTP/1.1 per path) measured on each back to back, the order reversed on odd cycles, as
    `run_paired` does for plain HTTP, so that the TLS ratios are same-cycle ratios too."""
    result = Paired([Workload(layer, p) for p in args.paths for layer in PROTOCOLS], keys)
    servers: dict[str, Proc] = {}
    ports: dict[str, dict[str, int]] = {}
    try:
        if not have("h2load"):
            raise RuntimeError("h2load is not installed (Debian package nghttp2-client)")
        for key in keys:
            try:
                if key == "portico":
                    server, h2_error = start_portico_tls(args)
                    if h2_error:
                        result.errors.append(f"Portico h2: not available: {h2_error}")
                    ports[key] = {"h1": PORTICO_TLS_PORT}
                    if not h2_error:
                        ports[key]["h2"] = PORTICO_H2_PORT
                else:
                    target = next(t for t in make_targets(args) if t.key == key)
                    if "listen 127.0.0.1:8443" not in (RUNDIR / "nginx-proxy.conf").read_text():
                        raise RuntimeError("no TLS certificate (openssl missing?)")
                    server = start_listening(target.start, [NGINX_TLS_PORT])
                    ports[key] = {"h2": NGINX_TLS_PORT, "h1": NGINX_TLS_PORT}
                check_affinity(server, PROXY_CORE)
                servers[key] = server
            except Exception as exc:
                result.errors.append(f"{key} over TLS: not available: {exc}")
                log(result.errors[-1])
        live = [k for k in keys if k in servers]
        for cycle in range(args.cycles):
            result.canary_ms.append(canary_ms())
            log(f"TLS cycle {cycle + 1}/{args.cycles}: canary {result.canary_ms[-1]:.0f} ms")
            order = live if cycle % 2 == 0 else live[::-1]
            for i, wl in enumerate(result.workloads):
                for key in order:
                    port = ports[key].get(wl.layer)
                    if port is None:
                        continue
                    row = Row(key, key, wl.layer, wl.path)
                    try:
                        measure_tls(args, servers[key], origins, row, port)
                    except (RuntimeError, OSError, ValueError) as exc:
                        result.errors.append(f"cycle {cycle + 1} {key} {wl.label}: {exc}")
                        log(result.errors[-1])
                        continue
                    result.per_cpu_s[(i, key, str(cycle))] = row.per_cpu_s
                    if row.requests:
                        result.user_kernel_us.setdefault((i, key), []).append(
                            (
                                1e6 * row.user_s / row.requests,
                                1e6 * (row.cpu_s - row.user_s) / row.requests,
                            )
                        )
                    result.other_pct.append(row.other_pct)
                    if servers[key].popen.poll() is not None:
                        raise RuntimeError(f"{key} exited: {servers[key].log_tail()}")
            result.cycles = cycle + 1
    except RuntimeError as exc:
        result.errors.append(str(exc))
        log(f"TLS cycles stopped: {exc}")
    finally:
        for proc in servers.values():
            stop(proc)
    return result


# --------------------------------------------------------------------------- TLS soak


def rss_by_pid(root: int) -> dict[int, int]:
    """VmRSS in KiB of each live process in root's tree."""
    out = {}
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1])
                    break
    return out


@dataclass
class SoakSample:
    at: float  # seconds since the load started
    workers_kib: int  # summed over the supervisor's children
    supervisor_kib: int


@dataclass
class Soak:
    """--tls-soak's figures: Portico's memory under a stream of new TLS connections."""

    seconds: int
    error: str = ""
    samples: list[SoakSample] = field(default_factory=list)
    before: SoakSample | None = None  # idle, after one request
    worker_pids: set[int] = field(default_factory=set)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    runs: int = 0  # h2load runs
    handshakes: int = 0  # h2load connections: one full handshake each
    requests: int = 0
    errors: int = 0
    abrupt: dict[str, int] = field(default_factory=dict)  # AbruptClients kind -> count
    abrupt_failed: int = 0
    tls: str = ""
    protocol: str = "h1"  # what h2load speaks: "h1" (port PORTICO_TLS_PORT) or "h2"

    def third_medians(self) -> tuple[float, float, float] | None:
        """Median worker RSS (MiB) of the first, middle and last third of the samples."""
        values = [s.workers_kib / 1024 for s in self.samples]
        if len(values) < 6:
            return None
        n = len(values)
        thirds = (values[: n // 3], values[n // 3 : n - n // 3], values[n - n // 3 :])
        return tuple(sorted(t)[len(t) // 2] for t in thirds)  # type: ignore[return-value]

    def verdict(self) -> str:
        medians = self.third_medians()
        if medians is None:
            return "too few samples to judge (run longer)"
        _, middle, last = medians
        if last - middle > SOAK_LEVEL_MIB:
            return f"**keeps growing** (+{last - middle:.1f} MiB from the middle to the last third)"
        return f"levels off ({last - middle:+.1f} MiB from the middle to the last third)"


class AbruptClients:
    """Connections that end badly, in turn: closed before the ClientHello, reset halfway through
    it, reset after the handshake in the middle of a request, and closed without close_notify
    after a response. These are the paths where asyncio/uvloop TLS transports have leaked;
    h2load only ever closes cleanly."""

    KINDS = ("no hello", "half a hello", "reset mid-request", "no close_notify")

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE  # the bench's self-signed certificate
        self._ctx.set_alpn_protocols(["http/1.1"])

    def __enter__(self) -> AbruptClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            kind = self.KINDS[i % len(self.KINDS)]
            i += 1
            try:
                self._one(kind)
                self.counts[kind] += 1
            except (OSError, ssl.SSLError):
                self.failed += 1
                self._stop.wait(0.05)  # the listener is gone or refusing: don't spin

    def _one(self, kind: str) -> None:
        request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if kind == "no hello":
                return
            if kind == "half a hello":
                out = ssl.MemoryBIO()
                obj = self._ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                hello = out.read()
                sock.sendall(hello[: len(hello) // 2])
                _reset(sock)
                return
            tls = self._ctx.wrap_socket(sock, server_hostname="localhost")
            if kind == "reset mid-request":
                tls.sendall(request)  # headers not finished
                _reset(tls)
                return
            tls.sendall(request + b"\r\n")
            tls.recv(4096)
            tls.close()  # no unwrap(): FIN without close_notify


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def run_soak(args: argparse.Namespace) -> Soak:
    """New TLS connections against Portico's HTTP/1.1 TLS listener for args.tls_soak seconds:
    back-to-back h2load runs (SOAK_CLIENTS connections of SOAK_REQUESTS_PER_CONN requests each,
    every connection a full handshake) plus AbruptClients, while Portico's RSS is sampled."""
    soak = Soak(args.tls_soak, protocol=args.soak_protocol)
    port = PORTICO_H2_PORT if soak.protocol == "h2" else PORTICO_TLS_PORT
    try:
        if not have("h2load"):
            raise RuntimeError("h2load is not installed (Debian package nghttp2-client)")
        server, _ = start_portico_tls(args)
    except Exception as exc:
        soak.error = f"not available (error: {exc})"
        log(f"TLS soak: {soak.error}")
        return soak
    check_affinity(server, PROXY_CORE)
    url = f"https://127.0.0.1:{port}/small"
    argv = h2load_argv(
        url, soak.protocol, clients=SOAK_CLIENTS, requests=SOAK_CLIENTS * SOAK_REQUESTS_PER_CONN
    )
    stop_sampling = threading.Event()
    started = time.monotonic()

    def sample() -> SoakSample:
        rss = rss_by_pid(server.pid)
        workers = {pid: kib for pid, kib in rss.items() if pid != server.pid}
        soak.worker_pids.update(workers)
        return SoakSample(time.monotonic() - started, sum(workers.values()), rss.get(server.pid, 0))

    def sampler() -> None:
        while not stop_sampling.wait(SOAK_INTERVAL):
            soak.samples.append(sample())

    thread = threading.Thread(target=sampler, daemon=True)
    try:
        soak.tls = check_tls(port, "/small", PATHS["small"][1], soak.protocol).tls
        soak.before = sample()
        log(
            f"TLS soak: {args.tls_soak}s of new TLS connections against Portico "
            f":{port}, worker RSS {soak.before.workers_kib / 1024:.1f} MiB idle"
        )
        cpu_before = tree_cpu_seconds(server.pid)
        started = time.monotonic()
        thread.start()
        abrupt = AbruptClients(port)
        with abrupt if args.soak_load != "h2load" else contextlib.nullcontext():
            while time.monotonic() - started < args.tls_soak:
                if args.soak_load == "abrupt":
                    time.sleep(min(1.0, max(0.0, args.tls_soak - (time.monotonic() - started))))
                else:
                    res = parse_h2load(run_h2load(argv, 30.0))
                    soak.runs += 1
                    soak.handshakes += SOAK_CLIENTS
                    soak.requests += res.done
                    soak.errors += res.errors
                if server.popen.poll() is not None:
                    raise RuntimeError(f"Portico exited: {server.log_tail()}")
        soak.abrupt, soak.abrupt_failed = abrupt.counts, abrupt.failed
        stop_sampling.set()
        thread.join(timeout=5)
        soak.wall_s = time.monotonic() - started
        soak.cpu_s = tree_cpu_seconds(server.pid) - cpu_before
        soak.samples.append(sample())
    except (RuntimeError, OSError, ValueError) as exc:
        soak.error = f"failed (error: {exc})"
        log(f"TLS soak: {soak.error}")
    finally:
        stop_sampling.set()
        stop(server)
    with open(RUNDIR / "logs" / "tls-soak.tsv", "w") as f:
        f.write("seconds\tworkers_kib\tsupervisor_kib\n")
        for s in soak.samples:
            f.write(f"{s.at:.1f}\t{s.workers_kib}\t{s.supervisor_kib}\n")
    if not soak.error:
        log(f"TLS soak: {render_soak_summary(soak)}")
    return soak


# --------------------------------------------------------------------------- reporting

COLUMNS = (
    "target",
    "path",
    "requests/s",
    "p50",
    "p99",
    "proxy CPU %",
    "requests per proxy CPU-second",
    "Portico ÷ HAProxy (per CPU-s)",
    "peak RSS",
    "errors",
)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def render_table(rows: list[Row], paths: list[str]) -> str:
    order = {k: i for i, k in enumerate(TARGETS)}
    rows = sorted(
        rows,
        key=lambda r: (
            r.layer != "L7",
            paths.index(r.path) if r.path in paths else len(paths),  # "all": after the rest
            order[r.target],
        ),
    )
    haproxy = {
        (r.layer, r.path): r.per_cpu_s
        for r in rows
        if r.target == "haproxy" and not r.error and r.per_cpu_s
    }
    lines = []
    for r in rows:
        label = r.label if r.target == "origin" else f"{r.label} {r.layer}"
        path = PATHS[r.path][0] if r.path in PATHS else "all"
        if r.error:
            cells = [label, path, r.error.replace("|", "/"), *["—"] * (len(COLUMNS) - 3)]
        else:
            ratio = ""
            if r.target == "portico":
                base = haproxy.get((r.layer, r.path))
                ratio = f"{r.per_cpu_s / base:.2f}x" if base else "— (no HAProxy row)"
            cells = [
                label,
                path,
                f"{r.rps:,.0f}",
                _ms(r.p50_us),
                _ms(r.p99_us),
                f"{r.cpu_pct:.0f}%",
                f"{r.per_cpu_s:,.0f}",
                ratio,
                f"{r.rss_kib / 1024:.1f} MiB",
                str(r.errors),
            ]
        lines.append(cells)
    return markdown_table(COLUMNS, lines, first_numeric=2)


def markdown_table(columns: tuple[str, ...], lines: list[list[str]], first_numeric: int) -> str:
    """An aligned Markdown table; columns from `first_numeric` on are right-aligned. A row whose
    next cell is "—" carries an error text in that column: it spans the columns after it, so it
    does not set the column's width."""
    n = len(columns)
    widths = [max(len(columns[i]), *(len(c[i]) for c in lines)) for i in range(n)]
    col = first_numeric
    if col + 1 < n:
        widths[col] = max([len(columns[col])] + [len(c[col]) for c in lines if c[col + 1] != "—"])

    def fmt(cells: list[str] | tuple[str, ...], header: bool = False) -> str:
        out = [
            c.rjust(widths[i]) if i >= first_numeric and not header else c.ljust(widths[i])
            for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(out) + " |"

    sep = "|".join(
        ("-" * (w + 1) + ":") if i >= first_numeric else "-" * (w + 2) for i, w in enumerate(widths)
    )
    return "\n".join([fmt(columns, header=True), f"|{sep}|", *(fmt(c) for c in lines)])


def footnotes(rows: list[Row]) -> str:
    notes = [
        "- proxy CPU: utime+stime of the target's whole process tree (from /proc/<pid>/stat) "
        "during the wrk run, as a share of one core; requests per proxy CPU-second = requests "
        "completed ÷ those CPU seconds.",
        "- errors: wrk's socket errors (connect/read/write/timeout) plus non-2xx/3xx responses.",
    ]
    if any(r.target == "origin" and not r.error for r in rows):
        notes.append(
            "- origin (direct): its CPU and RSS columns are the origin nginx's own (it shares "
            "the load core with wrk)."
        )
    return "\n".join(notes + machine_notes(rows))


def machine_notes(rows: list[Row]) -> list[str]:
    """How busy the load core, the kernel and other processes were during the rows."""
    notes = []
    busy = [r.load_core_pct for r in rows if not r.error]
    if busy:
        notes.append(
            f"- load core (load generator + origins) busy: {min(busy):.0f} to {max(busy):.0f}% "
            "across rows; at ~100% requests/s is capped by the load generator, not the "
            "proxy, which is why requests per proxy CPU-second is the figure to compare."
        )
    measured = [r for r in rows if not r.error]
    if measured:
        soft = [r.softirq_pct for r in measured]
        notes.append(
            f"- kernel softirq (loopback TCP, charged to no process, so in no CPU column): "
            f"{min(soft):.0f} to {max(soft):.0f}% of a core across rows."
        )
        noisy = max(measured, key=lambda r: r.other_pct)
        if noisy.other_pct >= NOISE_WARN_PCT:
            notes.append(
                f"- **noisy machine**: processes this harness did not start used up to "
                f"{noisy.other_pct:.0f}% of a core during a row ({noisy.label} {noisy.layer} "
                f"{PATHS[noisy.path][0]}); figures from this run are less trustworthy, rerun on "
                "a quiet machine."
            )
    return notes


TLS_COLUMNS = (
    "target",
    "protocol",
    "path",
    "requests/s",
    "mean latency",
    "proxy CPU %",
    "requests per proxy CPU-second",
    "Portico ÷ NGINX (per CPU-s)",
    "Portico ÷ NGINX (requests/s)",
    "peak RSS",
    "errors",
)
TLS_LABELS = {"h2": "h2 (TLS)", "h1": "HTTP/1.1 (TLS)"}


def render_tls_table(rows: list[Row], paths: list[str]) -> str:
    """--h2's table: per path, h2 then HTTP/1.1, NGINX then Portico, each Portico row compared
    with NGINX's on the same path and protocol."""
    order = {k: i for i, k in enumerate(TLS_TARGETS)}
    rows = sorted(
        rows,
        key=lambda r: (
            paths.index(r.path) if r.path in paths else len(paths),
            list(PROTOCOLS).index(r.layer),
            order[r.target],
        ),
    )
    nginx = {(r.layer, r.path): r for r in rows if r.target == "nginx" and not r.error}
    lines = []
    for r in rows:
        path = PATHS[r.path][0] if r.path in PATHS else "all"
        head = [r.label, TLS_LABELS[r.layer], path]
        if r.error:
            lines.append([*head, r.error.replace("|", "/"), *["—"] * (len(TLS_COLUMNS) - 4)])
            continue
        per_cpu = per_rps = ""
        if r.target == "portico":
            base = nginx.get((r.layer, r.path))
            if base and base.per_cpu_s and base.rps:
                per_cpu = f"{r.per_cpu_s / base.per_cpu_s:.2f}x"
                per_rps = f"{r.rps / base.rps:.2f}x"
            else:
                per_cpu = per_rps = "— (no NGINX row)"
        lines.append(
            [
                *head,
                f"{r.rps:,.0f}",
                _ms(r.mean_us),
                f"{r.cpu_pct:.0f}%",
                f"{r.per_cpu_s:,.0f}",
                per_cpu,
                per_rps,
                f"{r.rss_kib / 1024:.1f} MiB",
                str(r.errors),
            ]
        )
    return markdown_table(TLS_COLUMNS, lines, first_numeric=3)


def tls_footnotes(rows: list[Row], args: argparse.Namespace) -> str:
    h2 = shlex.join(tls_load_argv(args, "https://127.0.0.1:<port><path>", "h2"))
    h1 = shlex.join(tls_load_argv(args, "https://127.0.0.1:<port><path>", "h1"))
    notes = [
        f"- load: `{h2}` (h2) and `{h1}` (HTTP/1.1: as many requests in flight, one per "
        f"connection); ports: NGINX :{NGINX_TLS_PORT} (both protocols by ALPN), Portico "
        f":{PORTICO_H2_PORT} (h2) and :{PORTICO_TLS_PORT} (HTTP/1.1). Same self-signed "
        "RSA-2048 certificate on both; connections are opened during the warm-up, so the "
        "figures are TLS record and HTTP costs, not handshakes.",
        "- proxy CPU and requests/s cover h2load's measured window only (CPU read when h2load "
        "announces its start and end); mean latency is h2load's (it reports no percentiles).",
        "- errors: h2load's failed requests (non-2xx/3xx included) and timeouts.",
    ]
    negotiated = sorted({r.tls for r in rows if r.tls})
    if negotiated:
        notes.append(f"- negotiated: {'; '.join(negotiated)}.")
    return "\n".join(notes + machine_notes(rows))


def render_soak(soak: Soak) -> str:
    """--tls-soak's section: Portico's worker RSS before, during and after, and the verdict."""
    speaks = "HTTP/2" if soak.protocol == "h2" else "HTTP/1.1"
    title = f"TLS soak: Portico, {soak.seconds} s of new TLS connections ({speaks})"
    if soak.error:
        return f"{title}\n\n{soak.error}"
    mib = [s.workers_kib / 1024 for s in soak.samples]
    before = soak.before.workers_kib / 1024 if soak.before else 0.0
    table: list[list[str]] = [
        ["before (idle, after one request)", f"{before:.1f}"],
        ["max during the soak", f"{max(mib, default=0.0):.1f}"],
        ["after (end of the soak)", f"{mib[-1] if mib else 0.0:.1f}"],
    ]
    medians = soak.third_medians()
    if medians:
        first, middle, last = medians
        table += [
            ["median, first third", f"{first:.1f}"],
            ["median, middle third", f"{middle:.1f}"],
            ["median, last third", f"{last:.1f}"],
            ["growth, last third - first third", f"{last - first:+.1f}"],
        ]
    text = markdown_table(("Portico worker RSS", "MiB"), table, first_numeric=1)
    step = max(1, len(mib) // 20)
    timeline = " ".join(f"{v:.1f}" for v in mib[::step])
    rate = soak.handshakes / soak.wall_s if soak.wall_s else 0.0
    load = []
    if soak.runs:
        load.append(
            f"{soak.runs:,} back-to-back runs of `h2load{' --h1' if soak.protocol == 'h1' else ''}"
            f" -c{SOAK_CLIENTS} -n{SOAK_CLIENTS * SOAK_REQUESTS_PER_CONN}` against "
            f":{PORTICO_H2_PORT if soak.protocol == 'h2' else PORTICO_TLS_PORT}: "
            f"{soak.handshakes:,} full TLS handshakes ({rate:,.0f}/s) and {soak.requests:,} "
            f"requests ({soak.errors:,} failed)"
        )
    if any(soak.abrupt.values()):
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in soak.abrupt.items())
        load.append(
            f"one after another, connections that end badly: {kinds} "
            f"({soak.abrupt_failed:,} could not connect)"
        )
    cpu = 100.0 * soak.cpu_s / soak.wall_s if soak.wall_s else 0.0
    notes = [
        f"- verdict: {soak.verdict()}",
        f"- load: {'; meanwhile '.join(load)}. {soak.tls}.",
        f"- Portico CPU during the soak: {cpu:.0f}% of a core (its process tree).",
        f"- worker RSS every {SOAK_INTERVAL * step:.0f} s from the start of the load, MiB: "
        f"{timeline}",
        f"- the verdict compares the last third's median with the middle third's (the first "
        f"third holds the ramp-up); more than {SOAK_LEVEL_MIB:.0f} MiB reads as growing. "
        "Samples in "
        f"{(RUNDIR / 'logs' / 'tls-soak.tsv').relative_to(REPO)}.",
    ]
    if len(soak.worker_pids) > 1:
        notes.append(
            f"- **{len(soak.worker_pids)} worker processes** were seen (one was replaced): the "
            "RSS series mixes processes."
        )
    if soak.before and soak.samples:
        notes.append(
            f"- supervisor RSS: {soak.before.supervisor_kib / 1024:.1f} MiB before, "
            f"{soak.samples[-1].supervisor_kib / 1024:.1f} MiB after."
        )
    return f"{title}\n\n{text}\n\n" + "\n".join(notes)


def render_soak_summary(soak: Soak) -> str:
    mib = [s.workers_kib / 1024 for s in soak.samples]
    before = soak.before.workers_kib / 1024 if soak.before else 0.0
    return (
        f"worker RSS {before:.1f} MiB before, max {max(mib, default=0.0):.1f}, "
        f"after {mib[-1] if mib else 0.0:.1f}: {soak.verdict()}"
    )


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return f"{argv[0]} not installed"
        lines = (res.stdout + res.stderr).strip().splitlines()
        return lines[0] if lines else argv[0]

    return {
        "wrk": first_line(["wrk", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "python": sys.version.split()[0],
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def write_results(sections: list[str], args: argparse.Namespace, started: dt.datetime) -> None:
    uname = " ".join(os.uname())
    v = versions()
    load = []
    if not args.tls_only:
        wrk_cmd = shlex.join(wrk_argv(args, "http://127.0.0.1:<port><path>", args.duration))
        load.append(f"- load: `{wrk_cmd}` per row (after a {args.warmup}s warm-up run)")
    tools = [v["wrk"], v["nginx"], v["haproxy"]]
    if args.h2 or args.tls_soak:
        tools.append(v["h2load"])
    body = "\n\n".join(sections)
    text = f"""# Portico benchmark results

Written by `bench/run {shlex.join(sys.argv[1:])}`; see bench/README.md for what the columns mean.

- date: {started.strftime("%Y-%m-%d %H:%M:%S %Z")}
- machine: `{uname}`
- CPU: {cpu_model()}, {os.cpu_count()} cores; proxy pinned to core {PROXY_CORE}, load
  generators and origins to core {LOAD_CORE}
{"".join(line + chr(10) for line in load)}- versions: {"; ".join(tools)}; Python {v["python"]}

{body}
"""
    RESULTS.write_text(text)
    log(f"wrote {RESULTS}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--quick", action="store_true", help="3-second runs (overrides --duration)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of unmeasured wrk before each row (default 1; 0 = none)",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)",
    )
    p.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (default: {','.join(DEFAULT_PATHS)})",
    )
    p.add_argument(
        "--content",
        action="store_true",
        help="measure static files and on-the-fly compression instead (#13): "
        + ",".join(CONTENT_PATHS)
        + "; Portico and NGINX",
    )
    p.add_argument(
        "--l4",
        action="store_true",
        help="also measure L4 (TCP) proxying: HAProxy :8083, NGINX :8084",
    )
    p.add_argument(
        "--portico-routes",
        type=int,
        default=0,
        help="give Portico's listener N routing rules that requests do not match (routing cost)",
    )
    p.add_argument(
        "--portico-l4",
        action="store_true",
        help="kept for old command lines: --l4 measures Portico's TCP listener (:8085) too",
    )
    p.add_argument(
        "--h2",
        action="store_true",
        help="also measure over TLS with h2load: HTTP/2 and HTTP/1.1, NGINX :8443 and Portico "
        ":8444 (h2) / :8445 (HTTP/1.1)",
    )
    p.add_argument("--h2-clients", type=int, default=10, help="h2load -c for h2 rows (default 10)")
    p.add_argument(
        "--h2-streams",
        type=int,
        default=10,
        help="h2load -m, streams per connection, for h2 rows (default 10); HTTP/1.1 rows use "
        "clients x streams connections",
    )
    p.add_argument(
        "--tls-soak",
        type=int,
        default=0,
        metavar="SECONDS",
        help="also open new TLS connections against Portico for SECONDS and report its "
        "workers' RSS (default 0: off)",
    )
    p.add_argument(
        "--soak-load",
        choices=("both", "h2load", "abrupt"),
        default="both",
        help="--tls-soak's clients: h2load's clean connections, the abruptly ended ones, or "
        "both at once (default; the others tell which one makes memory grow)",
    )
    p.add_argument(
        "--soak-protocol",
        choices=("h1", "h2"),
        default="h1",
        help="--tls-soak's h2load connections speak HTTP/1.1 (default) or HTTP/2",
    )
    p.add_argument(
        "--tls-only",
        action="store_true",
        help="skip the plain-HTTP wrk rows: only --h2 and --tls-soak",
    )
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--write", action="store_true", help=f"also write {RESULTS.relative_to(REPO)}")
    p.add_argument(
        "--portico-bin",
        type=Path,
        default=PORTICO_BIN,
        help="the portico command, run as CMD run RUNDIR/portico.yaml (default: the venv's)",
    )
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    p.add_argument(
        "--cycles",
        type=int,
        default=0,
        help="paired mode: N interleaved cycles of short runs of every target back to back, "
        "reported as median same-cycle ratios with their range, a canary and a verdict; "
        "with --h2 the TLS rows too (default 0: the one-pass tables)",
    )
    p.add_argument(
        "--idle-runs",
        type=int,
        default=3,
        help="paired mode: how many times the idle-connection memory rows are measured, each "
        "on freshly started targets (median and range shown; 0: not measured)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Portico workers, HAProxy threads and NGINX worker processes, on cores 0..N-1 "
        "(default 1; with 2 on this 2-core host the load generator shares a core: compare "
        "requests per proxy CPU-second)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 3
    if args.duration < 1 or args.duration > 600 or args.warmup < 0 or args.warmup > 60:
        p.error("--duration must be 1..600 s and --warmup 0..60 s")
    args.targets = _subset(p, "--targets", args.targets, TARGETS)
    if args.content:  # the content rows; --paths, if given, narrows them
        asked = args.paths if args.paths != ",".join(DEFAULT_PATHS) else ""
        args.paths = asked or ",".join(CONTENT_PATHS)
    args.paths = _subset(p, "--paths", args.paths, tuple(PATHS))
    if not 1 <= args.workers <= (os.cpu_count() or 1):
        p.error(f"--workers must be 1..{os.cpu_count()}")
    if not 0 <= args.cycles <= 50:
        p.error("--cycles must be 0..50")
    if not 0 <= args.tls_soak <= 3600:
        p.error("--tls-soak must be 0..3600 s")
    if args.tls_soak and "portico" not in args.targets:
        p.error("--tls-soak measures Portico: keep portico in --targets")
    if args.tls_only and not (args.h2 or args.tls_soak):
        p.error("--tls-only needs --h2 or --tls-soak")
    if not (1 <= args.h2_clients <= 1000 and 1 <= args.h2_streams <= 1000):
        p.error("--h2-clients and --h2-streams must be 1..1000")
    return args


def _subset(
    p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]
) -> list[str]:
    chosen = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in allowed]
    if bad or not chosen:
        p.error(f"{flag}: unknown {bad}; choose from {','.join(allowed)}")
    return [v for v in allowed if v in chosen]  # canonical order


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignored SIGINT (`&`).
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        # Finish stopping even if Ctrl-C is pressed again.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        stop_all()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    with contextlib.suppress(OSError):  # the harness itself stays off the proxy's core
        os.sched_setaffinity(0, {LOAD_CORE})
    # Room for wrk's connections on both sides of a proxy and nginx's worker_connections 4096.
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if LOAD_CORE == PROXY_CORE:
        log("warning: one core only; proxy, wrk and origins share it")
    if not args.no_install:
        install_missing()
    for tool in ("nginx", "taskset") if args.tls_only else ("wrk", "nginx", "taskset"):
        if not have(tool):
            log(f"{tool} is required and not installed")
            return 2
    global PROXY_CPUS
    PROXY_CPUS = set(range(args.workers))
    content = any(p in CONTENT_PATHS for p in args.paths)
    prepare_rundir(args.l4, args.portico_routes, args.workers, content)
    busy = [p for p in ORIGIN_PORTS if port_open(p)]
    if busy:
        log(f"origin ports {busy} are in use by a process this harness did not start")
        return 2

    targets = [] if args.tls_only else [t for t in make_targets(args) if t.key in args.targets]
    tls_targets = [k for k in TLS_TARGETS if k in args.targets] if args.h2 else []
    rows: list[Row] = []
    tls_rows: list[Row] = []
    soak: Soak | None = None
    paired: Paired | None = None
    tls_paired: Paired | None = None
    try:
        with cleanup_on_exit():
            origins = spawn(
                "origins", nginx_argv("nginx-backends.conf", "backends-error.log"), LOAD_CORE
            )
            for port in ORIGIN_PORTS:
                wait_for_port(origins, port)
            if args.cycles and targets:
                paired = run_paired(args, targets, origins)
            for target in [] if args.cycles else targets:
                if origins.popen.poll() is not None:
                    raise RuntimeError(f"the origins exited: {origins.log_tail()}")
                log(f"measuring {target.label} ({args.duration}s per path)")
                rows += run_target(args, target, origins)
            if args.cycles and tls_targets:
                tls_paired = run_tls_paired(args, tls_targets, origins)
            for key in [] if args.cycles else tls_targets:
                if origins.popen.poll() is not None:
                    raise RuntimeError(f"the origins exited: {origins.log_tail()}")
                log(f"measuring {key} over TLS with h2load ({args.duration}s per row)")
                tls_rows += run_tls_target(args, key, origins)
            if args.tls_soak:
                soak = run_soak(args)
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    except Interrupted as exc:
        log(f"{exc}: everything started was stopped")
        return 143
    except RuntimeError as exc:
        log(f"stopped early: {exc}")
        return 1

    sections = []
    if paired is not None:
        sections.append(render_paired(paired))
    if rows:
        sections.append(f"{render_table(rows, args.paths)}\n\n{footnotes(rows)}")
    if tls_paired is not None:
        footnote = tls_footnotes([], args)
        sections.append(render_paired(tls_paired, "Paired cycles over TLS (h2load)"))
        sections[-1] += "\n" + footnote
    elif tls_targets:
        sections.append(
            "## TLS: HTTP/2 and HTTP/1.1 (h2load)\n\n"
            f"{render_tls_table(tls_rows, args.paths)}\n\n{tls_footnotes(tls_rows, args)}"
        )
    if soak is not None:
        sections.append(f"## {render_soak(soak)}")
    print("\n\n".join(sections))
    if args.write:
        write_results(sections, args, started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
