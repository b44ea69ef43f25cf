"""`portico demo`: three demo backends and Portico in front of them, in one command."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from portico.config.load import ConfigError, parse_config

DEMO_CONFIG = """\
# The demo: Portico on 127.0.0.1:{port} in front of three demo backends.
workers: {workers}
shutdown_grace: 5s
admin:
  bind: 127.0.0.1:{admin_port}   # the live dashboard and the admin API (loopback, no token)
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    protocol: http
    http2: true                      # HTTP/2 too: curl --http2-prior-knowledge http://...
    default_pool: app
pools:
  app:
    policy: round_robin
    servers:
      - address: 127.0.0.1:{b1}
        name: backend-1
      - address: 127.0.0.1:{b2}
        name: backend-2
      - address: 127.0.0.1:{b3}
        name: backend-3
"""


BACKENDS_TIMEOUT = 20.0  # seconds for the demo backends to listen


def demo_config(port: int, workers: int, backend_ports: list[int], admin_port: int) -> str:
    b1, b2, b3 = backend_ports
    return DEMO_CONFIG.format(
        port=port, workers=workers, b1=b1, b2=b2, b3=b3, admin_port=admin_port
    )


def _wait_until_listening(ports: list[int], process: subprocess.Popen[bytes]) -> bool:
    """Whether the demo backends accept connections within BACKENDS_TIMEOUT (False if their
    process exits first, e.g. on a port in use): Portico must not answer the first curl 502
    because a backend's interpreter was still starting."""
    deadline = time.monotonic() + BACKENDS_TIMEOUT
    for port in ports:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)  # polling a port that is about to open, bounded by deadline
    return True


def run_demo(
    port: int = 8080,
    workers: int = 1,
    backend_ports: list[int] | None = None,
    admin_port: int = 9090,
) -> int:
    ports = backend_ports or [9001, 9002, 9003]
    text = demo_config(port, workers, ports, admin_port)
    try:
        config = parse_config(text, "<demo>")
    except ConfigError as exc:  # pragma: no cover - the demo config is fixed
        print(exc, file=sys.stderr)
        return 1
    backends = subprocess.Popen([sys.executable, "-m", "portico.demo.backends", *map(str, ports)])
    try:
        if not _wait_until_listening(ports, backends):
            print(f"portico demo: the demo backends did not start on {ports}", file=sys.stderr)
            return 1
        from portico import supervisor

        if port:
            print(f"portico demo: try  curl -i http://127.0.0.1:{port}/  (Ctrl-C stops)")
        if admin_port:
            print(f"portico demo: live dashboard on http://127.0.0.1:{admin_port}/")
        return supervisor.run(config, text, "<demo>")
    finally:
        backends.terminate()
        backends.wait(timeout=10)
