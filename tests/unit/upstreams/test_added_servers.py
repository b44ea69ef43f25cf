"""A server added at run time (DNS discovery, the admin API) ramps up as slow start says."""

from __future__ import annotations

import asyncio

from portico.config.load import parse_config
from portico.worker import Worker

CONFIG = """\
workers: 1
listeners: [{name: web, bind: "127.0.0.1:0", default_pool: app}]
pools:
  app:
    slow_start: 30s
    servers: [{address: "127.0.0.1:9001"}]
"""


def test_a_new_server_starts_in_slow_start_and_an_initial_one_does_not() -> None:
    loop = asyncio.new_event_loop()
    try:
        worker = Worker(loop, parse_config(CONFIG, "p.yaml"), {})
        message = {"type": "add_server", "pool": "app", "host": "127.0.0.1", "weight": 1}
        worker.handle({**message, "name": "new", "port": 9002, "slow_start": True})
        worker.handle({**message, "name": "known", "port": 9003, "slow_start": False})
        backends = {b.name: b for b in worker.pools["app"].backends}
        assert backends["new"].up_since is not None
        assert backends["known"].up_since is None
        assert backends["127.0.0.1:9001"].up_since is None
    finally:
        loop.close()
