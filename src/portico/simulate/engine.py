"""A discrete-event simulation of one pool: the production `Pool` (its policy, outlier
detector, max_conns queue, slow start and retry budget) and `HealthState` in front of modelled
servers, on simulated time.

Owns `simulate` and what it records (`Run`). The decisions are never re-implemented: every
server is chosen by `Pool.select`, every outcome goes to `Pool.observe`, every queued request
waits in the pool's own queue, exactly as `proxy/l7.py`'s `Exchange` drives them; the pool's
clock and the `BackendState` latency estimates read the simulated clock. What this module
models is the rest: the servers (each serves `capacity` requests at once at `speed`, the
others wait in its FIFO queue; at given times a server refuses connections, answers 5xx or
slows down), active health probes every `interval` (a probe fails while its server refuses or
errs), and the exchange's retry rule (a refused connection is tried on another server while
`retries` and the retry budget allow).

Time is a float of seconds in an event heap (no asyncio, no sleeping): a million requests take
seconds. Never reads the wall clock; chance comes from `random.Random(seed)`. Not modelled:
network time, connection reuse, cookie persistence and stick tables, fallback pools.
"""

from __future__ import annotations

import heapq
import random
from array import array
from collections import deque
from dataclasses import dataclass, field

from portico.config.schema import PoolConfig
from portico.health import HealthState
from portico.simulate.spec import Failure, ServerModel, WorkloadSpec
from portico.simulate.trace import Trace
from portico.upstreams.backend import BackendState
from portico.upstreams.pool import FULL, Pool

__all__ = ["Run", "simulate"]

# event kinds, in the heap as (time, sequence, kind, payload)
_DONE = 0  # a server finished a request
_QUEUE_TIMEOUT = 1  # a request has waited queue.timeout in the pool's queue
_PROBE = 2  # an active health probe of one server

_INF = float("inf")


@dataclass(slots=True)
class Run:
    """What happened to each request (index i: the trace's request i) under one policy."""

    policy: str
    servers: list[str]
    weights: list[int]
    arrival: array[float]
    latency: array[float]  # arrival -> response (or the failure answer)
    wait: array[float]  # time spent queued: in the pool's queue and in the server's
    server: array[int]  # index into `servers` of the one that answered; -1: none
    status: array[int]  # 200, 5xx from a server in "error", 502/503 from Portico
    retried: array[int]  # times it was sent again to another server (up to 255)
    max_server_queue: int = 0  # the longest any server's own queue got
    pool_queued: int = 0  # requests that waited in the pool's queue (max_conns)
    ejections: int = 0  # outlier ejections (Pool.observe)
    health_changes: int = 0  # active health verdicts that changed
    events: int = 0  # heap events processed
    seconds: float = 0.0  # wall-clock time the run took (the caller fills it in)
    notes: list[str] = field(default_factory=list)


class _Server:
    """A modelled server: `capacity` slots, and a FIFO of requests waiting for one."""

    __slots__ = ("busy", "capacity", "health", "index", "queue", "speed", "windows")

    def __init__(self, index: int, model: ServerModel) -> None:
        self.index = index
        self.speed = model.speed
        self.capacity = model.capacity
        self.busy = 0
        self.queue: deque[_Request] = deque()
        self.windows = tuple(
            (f.at, f.at + f.for_, f.mode, f.factor) for f in sorted(model.failures, key=_start)
        )
        self.health: HealthState | None = None

    def mode(self, now: float) -> tuple[str, float] | None:
        """How the server misbehaves at `now`: ("refuse" | "error" | "slow", factor), or None."""
        for start, end, mode, factor in self.windows:
            if start <= now < end:
                return mode, factor
        return None


def _start(failure: Failure) -> float:
    return failure.at


class _Request:
    """One request on its way; the pool's queue holds it as a `Waiter`, as it holds an
    `Exchange`."""

    __slots__ = (
        "arrival",
        "backend",
        "deadline",
        "from_queue",
        "index",
        "queued",
        "sent_at",
        "sim",
        "tried",
    )

    def __init__(self, sim: _Simulation, index: int, arrival: float) -> None:
        self.sim = sim
        self.index = index
        self.arrival = arrival
        self.backend: BackendState | None = None
        self.tried: list[BackendState] | None = None  # servers that refused it
        self.from_queue = False  # let out of the pool's queue: may select at once
        self.queued = False  # waiting in the pool's queue
        self.deadline = 0.0  # ... until this time (a stale timeout event for it is ignored)
        self.sent_at = 0.0  # when it went to its server (the proxy times latency from here)

    def dequeued(self) -> None:
        """`Waiter.dequeued`: a slot freed while this request waited in the pool's queue."""
        if self.queued:
            self.queued = False
            self.from_queue = True
            self.sim.attempt(self)


class _Simulation:
    """The event loop and the request steps (`attempt`, `finish`, `release`), which follow
    `Exchange.start`, `on_response_end`, `_retry_or_fail` and `_release_backend`."""

    def __init__(self, pool: Pool, servers: list[_Server], trace: Trace, run: Run) -> None:
        self.pool = pool
        self.servers = {b.name: s for b, s in zip(pool.backends, servers, strict=True)}
        self.trace = trace
        self.run = run
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.pending = 0  # requests arrived and not answered
        self.retries = pool.settings.retries
        self.budget = pool.budget
        self.clients = trace.clients
        self.services = trace.service
        self.client_of = trace.client
        # per request results, filled in as requests end (out of order)
        n = len(trace)
        self.latency = run.latency
        self.wait = run.wait
        self.server_of = run.server
        self.status = run.status
        self.retried = run.retried
        for column, value in ((run.latency, 0.0), (run.wait, 0.0)):
            column.extend(array("d", [value]) * n)
        run.server.extend(array("h", [-1]) * n)
        run.status.extend(array("H", [0]) * n)
        run.retried.extend(array("B", [0]) * n)

    def push(self, when: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, kind, payload))

    # -- the loop ------------------------------------------------------------------------------

    def loop(self, probe_interval: float | None) -> None:
        arrivals = self.trace.arrivals
        n = len(arrivals)
        heap = self.heap
        pop = heapq.heappop
        if probe_interval is not None:
            for server in self.servers.values():
                self.push(probe_interval, _PROBE, server)
        i = 0
        next_arrival = arrivals[0] if n else _INF
        events = 0
        while True:
            if heap and heap[0][0] <= next_arrival:
                when, _, kind, payload = pop(heap)
                self.now = when
                events += 1
                if kind == _DONE:
                    self.finish(payload)  # type: ignore[arg-type]
                elif kind == _QUEUE_TIMEOUT:
                    self.queue_timeout(payload)  # type: ignore[arg-type]
                else:
                    if i >= n and not self.pending:
                        break  # only probes are left
                    self.probe(payload, probe_interval or 1.0)  # type: ignore[arg-type]
            elif i < n:
                self.now = next_arrival
                request = _Request(self, i, next_arrival)
                i += 1
                next_arrival = arrivals[i] if i < n else _INF
                self.pending += 1
                events += 1
                budget = self.budget
                if budget is not None:
                    budget.record_request(self.now)
                self.attempt(request)
            else:
                break
        self.run.events = events

    # -- request steps -------------------------------------------------------------------------

    def attempt(self, request: _Request) -> None:
        """`Exchange.start`: the pool's queue first, else `Pool.select`, then connect."""
        pool = self.pool
        now = self.now
        if pool.queue and not request.from_queue:
            chosen: BackendState | str | None = FULL  # wait behind those already waiting
        else:
            client = self.clients[self.client_of[request.index]]
            chosen = pool.select((), b"/", client, request.tried or (), now)
        request.from_queue = False
        if chosen is None:
            self.answer(request, 502 if request.tried else 503)
            return
        if chosen is FULL:
            if pool.enqueue(request):
                request.queued = True
                request.deadline = now + pool.queue_timeout
                self.run.pool_queued += 1
                self.push(request.deadline, _QUEUE_TIMEOUT, request)
            else:
                self.answer(request, 503)
            return
        assert isinstance(chosen, BackendState)
        backend = chosen
        backend.in_flight += 1
        backend.requests += 1
        server = self.servers[backend.name]
        mode = server.mode(now) if server.windows else None
        if mode is not None and mode[0] == "refuse":
            # a failed connect: released as failed, then another server if allowed
            self.release(backend, failed=True)
            tried = request.tried
            if tried is None:
                tried = request.tried = []
            tried.append(backend)
            if len(tried) <= self.retries:
                budget = self.budget
                if budget is None or budget.can_retry(now):
                    if budget is not None:
                        budget.record_retry(now)
                    if self.retried[request.index] < 255:
                        self.retried[request.index] += 1
                    self.attempt(request)
                    return
            self.answer(request, 502)
            return
        request.backend = backend
        request.sent_at = now
        if server.busy < server.capacity:
            server.busy += 1
            self.serve(request, server, mode)
        else:
            server.queue.append(request)
            if len(server.queue) > self.run.max_server_queue:
                self.run.max_server_queue = len(server.queue)

    def serve(self, request: _Request, server: _Server, mode: tuple[str, float] | None) -> None:
        service = self.services[request.index] / server.speed
        if mode is not None and mode[0] == "slow":
            service *= mode[1]
        self.wait[request.index] = self.now - request.arrival  # queued: pool, then server
        error = mode is not None and mode[0] == "error"
        self.push(self.now + service, _DONE, (request, error))

    def finish(self, done: tuple[_Request, bool]) -> None:
        """The server answered: the response head and end at once (`on_response_end`)."""
        request, error = done
        backend = request.backend
        assert backend is not None
        server = self.servers[backend.name]
        now = self.now
        if server.queue:
            following = server.queue.popleft()
            self.serve(following, server, server.mode(now) if server.windows else None)
        else:
            server.busy -= 1
        pool = self.pool
        if backend.tracks_latency:
            backend.observe_latency(now - request.sent_at)
        observed = False
        if error and pool.on_5xx and pool.outliers is not None:
            self._observe(backend, True)
            observed = True
        self.release(backend, failed=None if observed else False)
        index = request.index
        self.server_of[index] = server.index
        self.answer(request, 500 if error else 200)

    def answer(self, request: _Request, status: int) -> None:
        index = request.index
        self.latency[index] = self.now - request.arrival
        self.status[index] = status
        if status >= 502:
            self.wait[index] = self.now - request.arrival
        self.pending -= 1

    def queue_timeout(self, request: _Request) -> None:
        if not request.queued or request.deadline != self.now:
            return  # it left the queue in time (and may be waiting again, with a new deadline)
        request.queued = False
        self.pool.leave_queue(request)
        self.answer(request, 503)

    def release(self, backend: BackendState, *, failed: bool | None) -> None:
        """`Exchange._release_backend`: outcomes feed outlier detection; the queue moves."""
        backend.in_flight -= 1
        pool = self.pool
        if failed:
            backend.failures += 1
            self._observe(backend, True)
        elif failed is not None and backend.fail_streak:
            self._observe(backend, False)
        if pool.queue:
            pool.released()

    def _observe(self, backend: BackendState, failed: bool) -> None:
        was = backend.ejected
        self.pool.observe(backend, failed, self.now)
        if backend.ejected and not was:
            self.run.ejections += 1

    def probe(self, server: _Server, interval: float) -> None:
        """An active health probe: it fails while the server refuses or errs."""
        health = server.health
        assert health is not None
        mode = server.mode(self.now)
        ok = mode is None or mode[0] == "slow"
        if health.observe(ok):
            name = self.pool.backends[server.index].name
            self.pool.set_active_health(name, health.up, self.now)
            self.run.health_changes += 1
        self.push(self.now + interval, _PROBE, server)


def simulate(config: PoolConfig, name: str, policy: str, trace: Trace, spec: WorkloadSpec) -> Run:
    """Replay `trace` through pool `name` (its `config`, with `policy` instead of its own)."""
    sim_clock = _Clock()
    pool_config = config.model_copy(update={"policy": policy})
    pool = Pool.from_config(name, pool_config, sim_clock, random.Random(spec.seed))
    servers = [_Server(i, spec.server(b.name)) for i, b in enumerate(pool.backends)]
    run = Run(
        policy=policy,
        servers=[b.name for b in pool.backends],
        weights=[b.weight for b in pool.backends],
        arrival=trace.arrivals,
        latency=array("d"),
        wait=array("d"),
        server=array("h"),
        status=array("H"),
        retried=array("B"),
    )
    sim = _Simulation(pool, servers, trace, run)
    sim_clock.sim = sim
    active = config.health.active
    interval: float | None = None
    if active is not None:
        interval = active.interval
        for server in servers:
            server.health = HealthState(active.rise, active.fall)
    sim.loop(interval)
    return run


class _Clock:
    """The pool's and the servers' clock: the simulation's `now`."""

    __slots__ = ("sim",)

    def __init__(self) -> None:
        self.sim: _Simulation | None = None

    def __call__(self) -> float:
        sim = self.sim
        return sim.now if sim is not None else 0.0
