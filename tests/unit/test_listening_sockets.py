"""The supervisor's listening sockets: one per worker slot, one port, none left unserved."""

from __future__ import annotations

import socket

import pytest

from portico.config.load import parse_config
from portico.config.schema import ListenerConfig
from portico.supervisor import StartupError, add_slots, bind, slot_sockets

CONFIG = """\
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:8001
"""


@pytest.fixture
def listener() -> ListenerConfig:
    return parse_config(CONFIG, "p.yaml").listeners[0]


def test_each_slot_has_its_own_socket_on_one_port(listener) -> None:
    socks = bind(listener, 3)
    try:
        assert len({sock.fileno() for sock in socks}) == 3
        assert len({sock.getsockname() for sock in socks}) == 1  # port 0 resolved once
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in socks)
        more = add_slots(listener, socks, 4)  # a reload to more workers
        assert more[:3] == socks
        assert more[3].getsockname() == socks[0].getsockname()
        socks = more
    finally:
        for sock in socks:
            sock.close()


def test_a_second_instance_cannot_join_the_port(listener) -> None:
    socks = bind(listener, 2)
    port = socks[0].getsockname()[1]
    taken = listener.model_copy(update={"bind": listener.bind._replace(port=port)})
    try:
        with pytest.raises(StartupError, match="in use"):
            bind(taken, 2)
    finally:
        for sock in socks:
            sock.close()


def test_every_socket_has_a_worker_after_a_reload_to_fewer() -> None:
    socks = ["s0", "s1", "s2", "s3", "s4"]
    slots = [slot_sockets(socks, slot, 2) for slot in range(2)]  # type: ignore[arg-type]
    assert slots == [["s0", "s2", "s4"], ["s1", "s3"]]
    assert slot_sockets(socks[:1], 1, 2) == ["s0"]  # type: ignore[arg-type]  one shared socket
