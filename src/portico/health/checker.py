"""Active health checking, run by the control plane once per Portico instance.

Owns one checking task per server of every pool that configures `health.active`: probe every
`interval`, feed the result to that server's `HealthState` (rise/fall), and report each change
of verdict to `notify` (the supervisor tells every worker). Never decides routing itself and
never runs in a worker: N workers must not mean N times the probe traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from portico import tasks
from portico.config.schema import ActiveHealthConfig, Config, ServerConfig
from portico.health.probes import HttpProbe, TcpProbe, probe
from portico.health.state import HealthState

log = logging.getLogger("portico.health")

Notify = Callable[[str, str, bool], None]


@dataclass
class ServerHealth:
    """The checker's view of one server, for snapshots (new workers) and the admin API."""

    pool: str
    server: str
    state: HealthState
    last_detail: str = "not checked yet"


def probe_for(active: ActiveHealthConfig) -> HttpProbe | TcpProbe:
    if active.type == "tcp":
        return TcpProbe()
    http = active.http
    return HttpProbe(
        method=http.method.encode(),
        path=http.path.encode(),
        host=http.host.encode() if http.host else None,
        expect_status=http.expect_status,
        expect_body=http.expect_body.encode() if http.expect_body else None,
    )


class HealthChecker:
    """All active checks of one config."""

    def __init__(self, config: Config, notify: Notify) -> None:
        self.config = config
        self.notify = notify
        self.servers: list[ServerHealth] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for pool_name, pool in self.config.pools.items():
            active = pool.health.active
            if active is None:
                continue
            check = probe_for(active)
            for server in pool.servers:
                health = ServerHealth(pool_name, server.name, HealthState(active.rise, active.fall))
                self.servers.append(health)
                self._tasks.append(tasks.spawn(self._run(health, server, active, check)))

    def down(self) -> list[ServerHealth]:
        """Servers currently failing their checks (sent to a worker that just started)."""
        return [s for s in self.servers if not s.state.up]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def _run(
        self,
        health: ServerHealth,
        server: ServerConfig,
        active: ActiveHealthConfig,
        check: HttpProbe | TcpProbe,
    ) -> None:
        loop = asyncio.get_running_loop()
        address = server.address
        while True:
            started = loop.time()
            result = await probe(address.host, address.port, check, active.timeout)
            health.last_detail = result.detail
            if health.state.observe(result.ok):
                verdict = "UP" if health.state.up else "DOWN"
                log.warning(
                    "server %s of pool %s is %s (%s)",
                    health.server,
                    health.pool,
                    verdict,
                    result.detail,
                )
                self.notify(health.pool, health.server, health.state.up)
            # a periodic schedule, not a wait for an event: the next probe is due `interval`
            # after this one started
            await asyncio.sleep(max(0.0, active.interval - (loop.time() - started)))
