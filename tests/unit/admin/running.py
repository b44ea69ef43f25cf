"""A fake supervisor behind a real AdminServer on a loopback port, and a small HTTP client
(fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portico.admin.api import (
    ListenerView,
    PoolView,
    ReloadResult,
    ServerState,
    listener_views,
    pool_views,
)
from portico.admin.server import AdminServer
from portico.config.load import parse_config
from portico.config.schema import Config, ServerConfig
from portico.observe.prometheus import PrometheusExporter
from portico.observe.stats import StatsAggregator, WorkerStats

TOKEN = "s3cret-token"

CONFIG = """\
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    routes:
      - {name: api, match: {path: /api/}, pool: api}
      - {match: {path: /old/}, redirect: {to: /new/}}
pools:
  app:
    policy: least_conn
    servers:
      - {address: 127.0.0.1:9001, name: s1}
      - {address: 127.0.0.1:9002, name: s2, weight: 2}
  api:
    servers:
      - {address: 127.0.0.1:9101}
"""


class FakeSupervisor:
    """A `SupervisorView` over a parsed config, with counters from one fake worker: what the
    real supervisor does, minus the workers. Records each call."""

    def __init__(self) -> None:
        self.config = parse_config(CONFIG, "fake.yaml")
        self.pool_configs = dict(self.config.pools)
        self.states: dict[tuple[str, str], ServerState] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.reload_result: ReloadResult = {
            "reloaded": True,
            "generation": 2,
            "detail": "reloaded fake.yaml",
        }
        self.aggregator = StatsAggregator()
        stats = WorkerStats.for_config(self.config)
        for _ in range(3):
            stats.request_done("web", "default", "app", "s1", 200, 0.01, None)
        stats.request_done("web", "api", "api", "127.0.0.1:9101", 502, 0.02, 0.001)
        stats.connection_opened("web")
        client = stats.client_bytes("web")  # what its connections read and wrote
        client.received += 40
        client.sent += 400
        self.aggregator.update(4242, json.loads(json.dumps(stats.snapshot())))
        self.exporter = PrometheusExporter(self.aggregator)

    # SupervisorView

    def listeners(self) -> list[ListenerView]:
        addresses = {"web": "127.0.0.1:8080"}
        return listener_views(self.config.listeners, addresses, self.aggregator.merged())

    def pools(self) -> list[PoolView]:
        return pool_views(
            self.pool_configs,
            self.aggregator.merged(),
            health={("app", "s1"): (True, "HTTP 200"), ("app", "s2"): (False, "refused")},
            states=self.states,
        )

    def set_weight(self, pool: str, server: str, weight: int) -> None:
        self.calls.append(("set_weight", pool, server, weight))
        self._replace(pool, server, lambda s: s.model_copy(update={"weight": weight}))

    def set_state(self, pool: str, server: str, state: ServerState) -> None:
        self.calls.append(("set_state", pool, server, state))
        self.states[pool, server] = state

    def add_server(self, pool: str, server: ServerConfig) -> None:
        self.calls.append(("add_server", pool, server))
        config = self.pool_configs[pool]
        servers = (*config.servers, server)
        self.pool_configs[pool] = config.model_copy(update={"servers": servers})

    def remove_server(self, pool: str, server: str) -> None:
        self.calls.append(("remove_server", pool, server))
        config = self.pool_configs[pool]
        servers = tuple(s for s in config.servers if s.name != server)
        self.pool_configs[pool] = config.model_copy(update={"servers": servers})

    def purge_cache(self, url: str | None, tag: str | None) -> int:
        self.calls.append(("purge_cache", url, tag))
        return 2

    async def reload(self) -> ReloadResult:
        self.calls.append(("reload",))
        await asyncio.sleep(0)
        return self.reload_result

    def metrics(self, accept: str) -> tuple[bytes, str]:
        return self.exporter.render(accept)

    def running_config(self) -> Config:
        return self.config.model_copy(update={"pools": self.pool_configs})

    def _replace(
        self, pool: str, name: str, change: Callable[[ServerConfig], ServerConfig]
    ) -> None:
        config = self.pool_configs[pool]
        servers = tuple(change(s) if s.name == name else s for s in config.servers)
        self.pool_configs[pool] = config.model_copy(update={"servers": servers})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


class Admin:
    """A running AdminServer (on its own loop, in a thread) and a client for it."""

    def __init__(self, view: FakeSupervisor, token: str | None, static_dir: Path | None) -> None:
        self.view = view
        self.token = token
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = AdminServer(view, token, static_dir=static_dir)
        self._run(self.server.start("127.0.0.1", 0))
        self.port = self.server.port

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def stop(self) -> None:
        self._run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def request_bytes(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> bytes:
        """The bytes of one request: JSON body, Host by address, the token unless not `auth`."""
        hdrs = {"Host": f"127.0.0.1:{self.port}"}
        if auth and self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
            hdrs["Content-Length"] = str(len(data))
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        return head.encode("latin-1") + b"\r\n" + data

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> Reply:
        """One request on a fresh connection."""
        with self.connect() as sock:
            sock.sendall(self.request_bytes(method, path, body, headers, auth=auth))
            return read_reply(sock)


def read_reply(
    sock: socket.socket, buffer: bytearray | None = None, head_only: bool = False
) -> Reply:
    """One response (Content-Length framed, as the admin server always sends) from `sock`;
    bytes read past it stay in `buffer` for the next call."""
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(bytes(data))
        data += chunk
    end = data.index(b"\r\n\r\n")
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(data) < end + 4 + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(bytes(data))
        data += chunk
    body = bytes(data[end + 4 : end + 4 + length])
    del data[: end + 4 + length]
    return Reply(status, headers, body)
