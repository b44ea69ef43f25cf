"""End-to-end: each listener's `backlog` is the listen queue the kernel really has.

What a user notices: `ss -ltn` shows the configured backlog in the Send-Q column of a listening
socket (one per worker: each has its own queue, SO_REUSEPORT). Workers hand the supervisor's
socket to asyncio, whose `create_server` calls listen() again; without the backlog passed along
it reset every listener to asyncio's default of 100.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import simple_config


def listen_queues(port: int) -> list[int]:
    """The listen backlog of each socket listening on `port` (one per worker), as `ss -ltn`
    reports them."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    # State Recv-Q Send-Q Local-Address:Port Peer-Address:Port; Send-Q is the backlog
    rows = [line.split() for line in out.splitlines() if re.search(rf":{port}\s", line)]
    return [int(row[2]) for row in rows]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_each_listener_listens_with_its_configured_backlog(backends, portico) -> None:
    backend = backends("b")
    extra = (
        "  - name: l4\n"
        "    bind: 127.0.0.1:0\n"
        "    protocol: tcp\n"
        "    default_pool: app\n"
        "    backlog: 45\n"
    )
    config = simple_config([backend], extra_listener="    backlog: 37\n")
    config = config.replace("pools:\n", extra + "pools:\n", 1)
    proxy = portico(config.replace("workers: 1\n", "workers: 2\n"))
    http_port, tcp_port = proxy.ports
    assert listen_queues(http_port) == [37, 37]
    assert listen_queues(tcp_port) == [45, 45]
