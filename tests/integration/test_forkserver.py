"""End-to-end: workers forked by the fork server (portico/forkserver.py, issue #18).

A worker is forked from a process that already imported its code, so it shares those pages
with the supervisor; it is still the supervisor's child, serves, is replaced when it dies, and
holds no descriptor a spawned worker would not. The fork server ends with the supervisor; if it
dies first, workers are spawned as new processes again. `PORTICO_NO_FORKSERVER=1` spawns them
always.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import simple_config
from fakes import Portico, request
from tests.integration.test_lifecycle import (
    PROCESS_TIMEOUT,
    _running,
    refuses_connections,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux's (subreaper, pidfd)"
)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _memory(pid: int) -> dict[str, int]:
    """smaps_rollup's fields in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def _fd_kinds(pid: int) -> Counter[str]:
    """What a process holds open, by kind: socket, pipe, anon_inode:[eventpoll], file…"""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            mode = os.stat(f"/proc/{pid}/fd/{fd}").st_mode
        except OSError:
            continue
        kind = target.split(":[")[0] if ":[" in target else target
        if stat.S_ISREG(mode):
            kind = "file"
        kinds[kind] += 1
    return kinds


def test_workers_are_forked_children_of_the_supervisor_and_serve(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]).replace("workers: 1\n", "workers: 2\n"))
    assert len(proxy.forkserver_pids()) == 1
    workers = proxy.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        assert _comm(pid) == "portico-worker"  # what `ps -o comm` and `top` show
        assert _ppid(pid) == proxy.proc.pid  # the supervisor waits for it, as before
        # most of what it maps is shared with the supervisor and the fork server
        memory = _memory(pid)
        assert memory["Private_Clean"] + memory["Private_Dirty"] < memory["Rss"] / 2, memory
    assert [request(proxy.port).status for _ in range(6)] == [200] * 6


def test_killed_and_reloaded_workers_are_forked_too(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]))
    (server,) = proxy.forkserver_pids()
    (first,) = proxy.worker_pids()
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: len(w := proxy.worker_pids()) == 1 and first not in w)
    (replacement,) = proxy.worker_pids()
    assert _comm(replacement) == "portico-worker"
    proxy.proc.send_signal(signal.SIGHUP)
    assert "generation 1" in proxy.wait_stdout("portico: reloaded")
    assert wait_until(lambda: replacement not in proxy.worker_pids(), timeout=PROCESS_TIMEOUT)
    (reloaded,) = proxy.worker_pids()
    assert _comm(reloaded) == "portico-worker"
    assert proxy.forkserver_pids() == [server]  # the same fork server all along
    assert request(proxy.port).status == 200


def test_a_forked_worker_holds_what_a_spawned_one_holds(backends, portico) -> None:
    # no descriptor of the supervisor or the fork server leaks into a worker
    app = backends("b0")
    forked = portico(simple_config([app]))
    spawned = portico(simple_config([app]), env={"PORTICO_NO_FORKSERVER": "1"}, filename="b.yaml")
    assert spawned.forkserver_pids() == []
    assert request(forked.port).status == request(spawned.port).status == 200
    (forked_worker,) = forked.worker_pids()
    (spawned_worker,) = spawned.worker_pids()
    assert _fd_kinds(forked_worker) == _fd_kinds(spawned_worker)


def test_the_fork_server_goes_away_with_the_supervisor(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]))
    (server,) = proxy.forkserver_pids()
    proxy.proc.kill()
    assert proxy.proc.wait(timeout=PROCESS_TIMEOUT) == -signal.SIGKILL
    assert wait_until(lambda: not _running(server), timeout=PROCESS_TIMEOUT)
    assert wait_until(lambda: refuses_connections(proxy.port), interval=0.1)


def test_workers_are_spawned_once_the_fork_server_died(backends, portico) -> None:
    proxy = portico(simple_config([backends("b0")]))
    (server,) = proxy.forkserver_pids()
    (worker,) = proxy.worker_pids()
    os.kill(server, signal.SIGKILL)
    assert request(proxy.port).status == 200  # the worker never depended on it
    os.kill(worker, signal.SIGKILL)

    def replaced() -> bool:
        now = proxy.worker_pids()
        return len(now) == 1 and worker not in now

    assert wait_until(replaced, timeout=PROCESS_TIMEOUT), proxy.worker_pids()
    assert wait_until(lambda: request(proxy.port).status == 200, timeout=PROCESS_TIMEOUT)
    assert proxy.wait_for_stderr("the fork server is gone") is not None
    assert proxy.forkserver_pids() == []  # collected, not left a zombie
    assert proxy.stop() == 0


def test_without_the_fork_server_workers_are_spawned(backends, portico) -> None:
    proxy: Portico = portico(simple_config([backends("b0")]), env={"PORTICO_NO_FORKSERVER": "1"})
    assert proxy.forkserver_pids() == []
    (worker,) = proxy.worker_pids()
    assert b"portico.worker" in Path(f"/proc/{worker}/cmdline").read_bytes()
    assert request(proxy.port).status == 200
