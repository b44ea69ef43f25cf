"""The supervisor's control socket: only a process that answers on it is a Portico."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from portico import control


def test_a_process_without_a_control_socket_is_not_a_running_portico() -> None:
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(control.NotRunning):
            control.ask(unrelated.pid, "hello", timeout=5.0)
        assert unrelated.poll() is None  # asking signals nothing
    finally:
        unrelated.kill()
        unrelated.wait()


def test_the_control_server_hands_a_request_to_the_supervisor_and_answers() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"type": "reloaded", "ok": True, "generation": 3}

    async def main() -> dict[str, Any]:
        server = control.ControlServer(handler)
        assert await server.start()
        try:
            return await asyncio.to_thread(
                control.ask, os.getpid(), "reload", 5.0, config="/etc/portico.yaml"
            )
        finally:
            await server.close()

    reply = asyncio.run(main())
    assert reply["type"] == "reloaded"
    assert reply["generation"] == 3
    assert seen[0]["type"] == "reload"
    assert seen[0]["config"] == "/etc/portico.yaml"
    with pytest.raises(control.NotRunning):  # closed: gone with the server
        control.ask(os.getpid(), "hello", timeout=5.0)
