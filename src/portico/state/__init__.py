"""State that outlives one worker: stick-table entries and rate-limit states, behind one
`StateStore` protocol with two implementations.

`MemoryStore` (this process only; the default for one instance) is re-exported here;
`RedisStore` lives in `portico.state.redis_store` and is imported only where Redis is
configured, so that a Portico without Redis never loads redis-py. Nothing here decides which
server a request gets or whether it is limited: that is the caller's policy, which also decides
what to do when a store raises `StoreUnavailable`.
"""

from __future__ import annotations

from portico.state.memory import MemoryStore
from portico.state.store import Decision, StateStore, StoreUnavailable

__all__ = ["Decision", "MemoryStore", "StateStore", "StoreUnavailable"]
