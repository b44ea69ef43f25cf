"""A real DNS server for tests: Debian's dnsmasq on a free loopback port, answering for
`*.internal` from a hosts file the test rewrites (re-read on SIGHUP) and from SRV records
given at start, with a short TTL. Nothing is forwarded anywhere (no upstream server).

Owns the process and its files; never installs dnsmasq (`scripts/test` does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 10.0


def dnsmasq_binary() -> str | None:
    found = shutil.which("dnsmasq")
    if found is None and os.access("/usr/sbin/dnsmasq", os.X_OK):
        found = "/usr/sbin/dnsmasq"
    return found


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for dnsmasq")


def _answers(port: int) -> bool:
    """Whether something answers a DNS query on `port` (any answer: NXDOMAIN will do)."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x05probe\x08internal\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, ("127.0.0.1", port))
            return sock.recv(512)[:2] == b"\xab\xcd"
        except OSError:
            return False


class Dnsmasq:
    """dnsmasq on 127.0.0.1:`port`; `hosts(...)` rewrites its hosts file and reloads it."""

    def __init__(self, directory: Path, binary: str, ttl: int = 1) -> None:
        self.directory = directory
        self.binary = binary
        self.ttl = ttl
        self.hosts_file = directory / "hosts"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, srv: Sequence[str] = (), hosts: Sequence[str] = ()) -> None:
        """Start answering; `srv`: dnsmasq --srv-host values (NAME,TARGET,PORT,PRIO,WEIGHT);
        `hosts`: hosts file lines ("127.0.0.2 app.internal")."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text("".join(f"{line}\n" for line in hosts))
        self.port = self.port or _free_port()
        args = [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--user=root",  # stay able to read the test's files after a SIGHUP
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--interface=lo",
            f"--port={self.port}",
            "--local=/internal/",  # answered here, never forwarded
            f"--local-ttl={self.ttl}",
            f"--auth-ttl={self.ttl}",
            f"--addn-hosts={self.hosts_file}",
            f"--log-facility={self.directory / 'dnsmasq.log'}",
            "--pid-file=",
            *(f"--srv-host={record}" for record in srv),
        ]
        errors = self.directory / "dnsmasq.stderr"
        with errors.open("wb") as stderr:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {errors.read_text()}")
            if _answers(self.port):
                return
            time.sleep(0.02)  # polling for readiness, bounded by the deadline
        self.stop()
        raise RuntimeError("dnsmasq did not answer")

    def hosts(self, lines: Sequence[str]) -> None:
        """Replace the hosts file and have dnsmasq read it again."""
        assert self.process is not None
        self.hosts_file.write_text("".join(f"{line}\n" for line in lines))
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
