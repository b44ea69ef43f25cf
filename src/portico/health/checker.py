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
from portico.config import plugins
from portico.config.schema import ActiveHealthConfig, Config, ServerConfig
from portico.health.probes import HttpCheck
from portico.health.state import HealthState
from portico.plugins import Probe, ProbeResult
from portico.plugins.guard import Guard

log = logging.getLogger("portico.health")

Notify = Callable[[str, str, bool], None]


@dataclass
class ServerHealth:
    """The checker's view of one server, for snapshots (new workers) and the admin API."""

    pool: str
    server: str
    state: HealthState
    last_detail: str = "not checked yet"


# A probe keeps its own deadline (its verdict says how far it got); this one only stops a
# plugin probe that ignores the timeout it is given.
PROBE_GRACE = 0.1


def probe_for(active: ActiveHealthConfig, config: Config, pool: str) -> tuple[Probe, Guard]:
    """The probe `active.type` names (the one loader finds built-in and users' probes),
    built once per pool, and the guard its calls run behind."""
    cls, options = plugins.build(
        "probes",
        active.type,
        active.options,
        config.pools,
        config.plugins.path,
        config.plugins.base_dir,
    )
    check: Probe = HttpCheck(active.http) if cls is HttpCheck else plugins.instantiate(cls, options)
    return check, Guard(f"{active.type} (health checks of pool {pool})")


async def run_probe(
    check: Probe,
    guard: Guard,
    host: str,
    port: int,
    timeout: float,  # noqa: ASYNC109 (the probe's own bound, enforced here too)
) -> ProbeResult:
    """One check of `host:port`, bounded in time; what a plugin probe raises or returns
    instead of a verdict is a failed check (and a log line), never the checker's end."""
    try:
        async with asyncio.timeout(timeout + PROBE_GRACE):
            result = await check.check(host, port, timeout)
    except TimeoutError:
        return ProbeResult(False, f"timed out after {timeout:g}s")
    except Exception as exc:
        guard.failed(exc, "check", "the check counts as failed")
        return ProbeResult(False, f"probe raised {type(exc).__name__}: {exc}"[:160])
    if not isinstance(result, ProbeResult):
        error = TypeError(f"check returned {type(result).__name__}, not ProbeResult")
        guard.failed(error, "check", "the check counts as failed")
        return ProbeResult(False, "probe returned no verdict")
    return result


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
            check, guard = probe_for(active, self.config, pool_name)
            for server in pool.servers:
                health = ServerHealth(pool_name, server.name, HealthState(active.rise, active.fall))
                self.servers.append(health)
                self._tasks.append(tasks.spawn(self._run(health, server, active, check, guard)))

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
        check: Probe,
        guard: Guard,
    ) -> None:
        loop = asyncio.get_running_loop()
        address = server.address
        while True:
            started = loop.time()
            result = await run_probe(check, guard, address.host, address.port, active.timeout)
            health.last_detail = result.detail
            if health.state.observe(result.ok):
                # the workers first: once the log says DOWN, no worker picks it unwarned
                self.notify(health.pool, health.server, health.state.up)
                verdict = "UP" if health.state.up else "DOWN"
                log.warning(
                    "server %s of pool %s is %s (%s)",
                    health.server,
                    health.pool,
                    verdict,
                    result.detail,
                )
            # a periodic schedule, not a wait for an event: the next probe is due `interval`
            # after this one started
            await asyncio.sleep(max(0.0, active.interval - (loop.time() - started)))
