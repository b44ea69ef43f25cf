"""The shared state store: stick tables and rate limits in Redis, for several workers and
several Portico instances that must behave as one.

Owns `RedisStore`: redis-py's asyncio client over a bounded connection pool, the Lua scripts
that make each operation atomic on the server, the bounded wait around every call, and the
bookkeeping of failures (counters, a log line at most once per second, a short fail-fast window
after the server was found unreachable).

Never cancels a Redis command. A cancelled in-flight command can leave its connection one reply
behind, so that the next command on it reads another request's answer (redis-py #2624). Each
command runs in a task of its own that the caller waits for with `asyncio.wait(timeout=...)`,
which gives up waiting without cancelling: the command then finishes or fails by itself, bounded
by the connection's socket timeouts, and its connection goes back to the pool in step (or is
closed by redis-py). So even a caller that is itself cancelled never cuts a command in half.

Never retries a command (a retry would double the wait a request can see) and never invents a
cluster protocol: one Redis (or a Redis behind Sentinel/a proxy, by URL) is the shared truth.
Needs Redis >= 5 (scripts that call TIME and then write rely on effects replication).

Data layout, under `prefix` (default ``portico:``):
  ``st:{<table>}:<key>``   a stick entry: the server's name, with a TTL
  ``st:{<table>}``         the table's index: a sorted set of entry names by expiry (ms), which
                            bounds the table's size (the hash tag keeps both in one cluster slot)
  ``rl:<key>``             a rate-limit state: the key's GCRA TAT in seconds, as text, with the
                            TTL after which it is equivalent to a fresh key
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from portico.state.gcra import Decision, Gcra
from portico.state.store import StoreUnavailable, check_table, ttl_ms
from portico.tasks import spawn

__all__ = ["RedisStore"]

log = logging.getLogger("portico.state")

T = TypeVar("T")

# KEYS[1] entry, KEYS[2] table index; ARGV[1] TTL in ms. Returns the entry's value (or false)
# and, on a hit, resets its TTL and its place in the index in the same step.
_READ_STICKY: Final = """
local value = redis.call('GET', KEYS[1])
if value then
  local ttl = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return value
"""

# KEYS[1] entry, KEYS[2] table index; ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] max entries
# (0: no bound), ARGV[4] (optional) the value that may be replaced. SET NX, or compare-and-set
# with ARGV[4]; returns the value stored afterwards. The index drops expired names on every
# write, then the names closest to expiry (least recently used, for one TTL) beyond the bound.
_WRITE_STICKY: Final = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and current ~= ARGV[4] then return current end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max = tonumber(ARGV[3])
if max > 0 then
  local excess = redis.call('ZCARD', KEYS[2]) - max
  while excess > 0 do
    local victims = redis.call('ZRANGE', KEYS[2], 0, math.min(excess, 1000) - 1)
    redis.call('DEL', unpack(victims))
    redis.call('ZREM', KEYS[2], unpack(victims))
    excess = excess - #victims
  end
end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return ARGV[1]
"""

# KEYS[1] the key's TAT; ARGV: rate (req/s), burst, cost, now in ms ('' = the server's TIME).
# The same float arithmetic, in the same order, as `Gcra.decide` (Lua numbers are doubles, and
# %.17g round-trips a double exactly), so a decision here equals Python's for the same inputs.
# Floats go back as text: Redis would truncate a Lua number to an integer.
_GCRA: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[4]) / 1000
end
local interval = 1.0 / rate
local window = interval * burst
local slack = math.min(interval * 1e-3, 1e-3)
local limit = window + slack
local function remaining(lead)
  local r = math.floor((limit - lead) * rate)
  if r < 0 then return 0 end
  if r > burst then return burst end
  return r
end
local function f(x) return string.format('%.17g', x) end
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored)
local start = now
if tat and tat > now then start = tat end
local new_tat = start + cost * interval
local lead = new_tat - now
if lead <= limit then
  if cost > 0 then
    redis.call('SET', KEYS[1], f(new_tat), 'PX', math.max(1, math.ceil(lead * 1000)))
  end
  return {1, f(new_tat), '0', remaining(lead), f(lead)}
end
lead = start - now
return {0, f(start), f(new_tat - now - window), remaining(lead), f(lead)}
"""


# A fixed-window counter: the first hit of a window sets its expiry, so the key lives one
# window; INCR and PEXPIRE in one script are atomic for every instance.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RedisStore:
    """A `StateStore` in Redis: atomic, shared by every worker and instance using `url`.

    `timeout` (seconds) bounds every call: the caller gets its answer or `StoreUnavailable`
    within it. It is also each connection's connect and socket timeout (so a command the caller
    stopped waiting for ends by itself soon after) and the longest wait for a free connection
    among `max_connections`. After a failure to reach the server, calls fail at once for
    `fail_fast_for` seconds (0 to never), so that during an outage requests fall back without
    each paying the timeout; the first call after that tries the server again. redis-py
    reconnects by itself: nothing else is needed when Redis comes back.

    Counters for metrics: `calls`, `failures` (calls that reached for the server and failed,
    timeouts included), `timeouts`, `skipped` (calls failed at once in the fail-fast window).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        timeout: float = 0.1,
        *,
        prefix: str = "portico:",
        max_connections: int = 64,
        fail_fast_for: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.fail_fast_for = fail_fast_for
        self.clock = clock
        self._prefix = prefix.encode()
        # No retries (Retry(NoBackoff(), 0)): a retry would add a second timeout to a request's
        # wait, and redis-py 6+ retries 3-10 times with backoff unless told not to. The asyncio
        # Retry (redis.asyncio.retry, since redis-py 4.2): redis-py 8 warns of a synchronous one.
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis: Redis = Redis(connection_pool=self._pool)
        self._read_sticky = self._redis.register_script(_READ_STICKY)
        self._write_sticky = self._redis.register_script(_WRITE_STICKY)
        self._gcra = self._redis.register_script(_GCRA)
        self._count = self._redis.register_script(_COUNT)
        self._limits: dict[tuple[float, int], Gcra] = {}  # validated (rate, burst) pairs
        # health state
        self._down_until = 0.0  # fail fast until then (on `clock`)
        self._failing = False  # the last call failed: the next success is logged
        self._logged_at = -1e18
        self._unlogged = 0  # failures since the last log line
        # counters
        self.calls = 0
        self.failures = 0
        self.timeouts = 0
        self.skipped = 0

    # -- stick tables ----------------------------------------------------------------------------

    async def get_sticky(self, table: str, key: bytes, ttl: float | None = None) -> str | None:
        entry = self._entry(table, key)
        if ttl is None:
            value = await self._call("GET", lambda: self._redis.get(entry))
        else:
            index = self._index(table)
            args = (ttl_ms(ttl),)
            value = await self._call(
                "get_sticky", lambda: self._read_sticky(keys=(entry, index), args=args)
            )
        return _text(value)

    async def set_sticky(
        self,
        table: str,
        key: bytes,
        value: str,
        ttl: float,
        *,
        replace: str | None = None,
        max_entries: int = 0,
    ) -> str:
        keys = (self._entry(table, key), self._index(table))
        args: tuple[int | str, ...] = (value, ttl_ms(ttl), max(0, max_entries))
        if replace is not None:
            args += (replace,)
        stored = await self._call("set_sticky", lambda: self._write_sticky(keys=keys, args=args))
        return _text(stored) or value

    async def touch_sticky(self, table: str, key: bytes, ttl: float) -> bool:
        keys = (self._entry(table, key), self._index(table))
        args = (ttl_ms(ttl),)
        value = await self._call("touch_sticky", lambda: self._read_sticky(keys=keys, args=args))
        return _text(value) is not None

    # -- rate limits ------------------------------------------------------------------------------

    async def rate_limit(
        self,
        key: bytes,
        rate: float,
        burst: int,
        now_ms: int | None = None,
        cost: int = 1,
    ) -> Decision:
        gcra = self._limits.get((rate, burst))
        if gcra is None:
            gcra = Gcra(rate, burst)  # raises ValueError for a bad pair, before any I/O
            self._limits[(rate, burst)] = gcra
        if not 0 <= cost <= burst:
            raise ValueError(f"cost must be from 0 to the burst ({burst}), not {cost!r}")
        keys = (self._prefix + b"rl:" + key,)
        # repr() of a float round-trips exactly; Lua's tonumber parses it back to the same double
        args = (repr(float(rate)), burst, cost, "" if now_ms is None else int(now_ms))
        reply = await self._call("rate_limit", lambda: self._gcra(keys=keys, args=args))
        allowed, new_tat, retry_after, remaining, reset_after = reply
        return Decision(
            allowed == 1, float(new_tat), float(retry_after), int(remaining), float(reset_after)
        )

    # -- counters --------------------------------------------------------------------------------

    async def count(self, key: bytes, window: float) -> int:
        keys = (self._prefix + b"cnt:" + key,)
        args = (ttl_ms(window),)
        reply = await self._call("count", lambda: self._count(keys=keys, args=args))
        return int(reply)

    # -- shared tables (run-time access entries, bans) -------------------------------------------

    async def shared_put(self, table: str, field: str, value: str) -> None:
        """Set `field` of the shared hash `table` and bump its version, in one transaction."""
        key, version = self._shared(table)

        async def put() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, value)
                pipe.incr(version)
                await pipe.execute()

        await self._call("shared_put", put)

    async def shared_delete(self, table: str, field: str) -> bool:
        """Delete `field` of `table` (bumping its version); False when it was not there."""
        key, version = self._shared(table)

        async def delete() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(key, field)
                pipe.incr(version)
                result: list[Any] = await pipe.execute()
                return result

        replies = await self._call("shared_delete", delete)
        return bool(replies[0])

    async def shared_version(self, table: str) -> int:
        """The version of `table`: it changes whenever an instance changes the table."""
        _, version = self._shared(table)
        value = await self._call("shared_version", lambda: self._redis.get(version))
        return int(value or 0)

    async def shared_read(self, table: str) -> dict[str, str]:
        """Every field of `table`."""
        key, _ = self._shared(table)
        raw = await self._call("shared_read", lambda: self._redis.hgetall(key))
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}

    def _shared(self, table: str) -> tuple[bytes, bytes]:
        key = self._prefix + b"shared:" + check_table(table).encode()
        return key, key + b":version"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def ping(self) -> bool:
        """Whether the server answers now (for readiness checks); never raises."""
        try:
            return bool(await self._call("PING", self._redis.ping))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()

    # -- the bounded call --------------------------------------------------------------------------

    async def _call(self, op: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run `command` in its own task and wait at most `timeout` for it, never cancelling it.

        Raises StoreUnavailable when the server is in its fail-fast window, when the command
        fails, or when it has not answered in time (it then finishes unobserved).
        """
        self.calls += 1
        if self._down_until and self.clock() < self._down_until:
            self.skipped += 1
            raise StoreUnavailable(
                f"redis {op}: not tried, failed less than {self.fail_fast_for:g} s ago"
            )
        # Wait for the task or the timer, whichever comes first; the task is never cancelled.
        # (asyncio.wait(timeout=...) does the same, with more allocations per call.)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        task = spawn(_awaited(command))
        task.add_done_callback(partial(_finished, waiter))
        timer = loop.call_later(self.timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
        if not task.done():
            self.timeouts += 1
            raise self._failed(op, f"no answer within {self.timeout * 1000:g} ms", transport=True)
        try:
            result: T = task.result()
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._failed(op, _describe(error), transport=True) from error
        except RedisError as error:  # the server answered with an error (OOM, WRONGTYPE, ...)
            raise self._failed(op, _describe(error), transport=False) from error
        if self._failing:
            self._failing = False
            self._down_until = 0.0
            log.warning("redis %s: reachable again", self.url_for_logs)
        return result

    def _failed(self, op: str, reason: str, *, transport: bool) -> StoreUnavailable:
        """Count and (at most once a second) log one failure; the exception to raise."""
        self.failures += 1
        self._unlogged += 1
        now = self.clock()
        if transport:
            self._failing = True
            if self.fail_fast_for > 0:
                self._down_until = now + self.fail_fast_for
        if now - self._logged_at >= 1.0:
            log.warning(
                "redis %s unavailable: %s %s (%d failure(s) since the last report; "
                "stickiness and rate limits fall back)",
                self.url_for_logs,
                op,
                reason,
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
        return StoreUnavailable(f"redis {op}: {reason}")

    @property
    def url_for_logs(self) -> str:
        """The URL without a password."""
        kwargs = self._pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def _entry(self, table: str, key: bytes) -> bytes:
        return b"%sst:{%s}:%s" % (self._prefix, check_table(table).encode(), key)

    def _index(self, table: str) -> bytes:
        return b"%sst:{%s}" % (self._prefix, table.encode())


async def _awaited(command: Callable[[], Awaitable[T]]) -> T:
    return await command()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # done already: the other side won, or the caller was cancelled
        waiter.set_result(None)


def _finished(waiter: asyncio.Future[None], task: asyncio.Task[Any]) -> None:
    # Mark the outcome as seen even when nobody waits for it any more (a timeout already
    # counted, a cancelled caller), so asyncio never logs "exception was never retrieved".
    if not task.cancelled():
        task.exception()
    _wake(waiter)


def _text(reply: object) -> str | None:
    """A bulk-string reply as text; None for a nil reply (false from a script)."""
    if isinstance(reply, bytes):
        return reply.decode()
    return reply if isinstance(reply, str) else None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
