"""sd_notify's datagram and the watchdog interval, without systemd: a socket of our own."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from portico import privileges
from portico.admin.api import readiness
from portico.notify import Notifier, watchdog_interval


def test_watchdog_interval_is_half_the_asked_period_and_only_for_this_pid() -> None:
    assert watchdog_interval({}) == 0.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) == 0.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, pid=7) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "8"}, pid=7) == 0.0


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_one_datagram_of_assignments_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.ready("serving")
        assert server.recv(4096).decode() == f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}\n"
        assert notifier.reloading()
        lines = server.recv(4096).decode().splitlines()
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=")


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.watchdog() is False


def test_identity_round_trips_and_unknown_names_are_refused() -> None:
    identity = privileges.resolve("nobody", None)
    assert identity is not None
    assert privileges.Identity.parse(str(identity)) == identity
    assert privileges.resolve(None, None) is None
    with pytest.raises(privileges.PrivilegeError, match="does not exist"):
        privileges.resolve("no-such-user-here", None)
    with pytest.raises(privileges.PrivilegeError, match="without user"):
        privileges.resolve(None, "nogroup")


def test_readiness_names_each_failing_check() -> None:
    args = dict(
        started=True,
        stopping=False,
        listening=True,
        listeners=2,
        workers_up=2,
        workers_expected=2,
        config="/etc/p.yaml, generation 0",
        store=None,
    )
    assert readiness(**args)["ready"] is True  # type: ignore[arg-type]
    down = readiness(**{**args, "workers_up": 1})  # type: ignore[arg-type]
    assert down["ready"] is False
    assert down["checks"]["workers"] == {"ok": False, "detail": "1/2 ready"}
    draining = readiness(**{**args, "stopping": True})  # type: ignore[arg-type]
    assert draining["checks"]["listening"]["detail"] == "stopping: draining"
    store = readiness(**{**args, "store": {"ok": False, "detail": "no answer"}})  # type: ignore[arg-type]
    assert store["ready"] is False
    assert "state_store" in store["checks"]
