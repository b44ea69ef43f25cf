"""RedisStore's client settings, checked without a Redis server: construction connects to
nothing, so these need no redis-server."""

from __future__ import annotations

import warnings

from redis.asyncio.retry import Retry

from portico.state.redis_store import RedisStore


def test_a_new_store_warns_of_nothing_with_the_installed_redis_py() -> None:
    # redis-py 8 warns (an error under -W error) when an asyncio client is given the
    # synchronous redis.retry.Retry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RedisStore("redis://127.0.0.1:1/0")


def test_a_store_never_retries_a_command() -> None:
    # a retry would add a second timeout to the wait a request can see
    store = RedisStore("redis://127.0.0.1:1/0")
    retry = store._pool.connection_kwargs["retry"]
    assert isinstance(retry, Retry)
    assert retry._retries == 0  # get_retries() is newer than the redis-py 5.0.2 we allow
