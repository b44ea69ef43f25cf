"""The debug header's short form: one line a person can read and a tool can split."""

from __future__ import annotations

import random

from portico.config.schema import PoolConfig
from portico.proxy.debug_header import DebugHeader, short_form
from portico.routing import Route
from portico.upstreams.pool import Pool


def test_short_form_names_each_decision() -> None:
    assert short_form("web", "cart", "shop", "least_conn", 2, 3, "s2", 1) == (
        "listener=web; route=cart; pool=shop; policy=least_conn; candidates=2/3; server=s2; "
        "attempt=1"
    )
    assert short_form("web", None, None, None, 0, 0, None, 1).startswith(
        "listener=web; route=-; pool=-; policy=-"
    )


def test_a_server_name_cannot_break_the_header() -> None:
    value = short_form("web", "r", "p", "random", 1, 1, "a;b=c\r\nX-Evil: 1", 1)
    assert "\r" not in value
    assert "\n" not in value
    assert "server=a%3Bb%3Dc%0D%0AX-Evil:%201;" in value


def test_the_field_reads_the_pools_live_counts() -> None:
    config = PoolConfig.model_validate(
        {"servers": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}]}
    )
    pool = Pool.from_config("app", config, lambda: 0.0, random.Random(0))
    pool.set_state("127.0.0.1:2", "drain", 0.0)
    header = DebugHeader(b"X-Portico-Explain", lambda ip: True, {"app": "round_robin"})
    route = Route("r1", "app", None, None, False, 0)
    name, value = header.field("web", route, pool, "127.0.0.1:1", 2)
    assert name == b"X-Portico-Explain"
    assert value == (
        b"listener=web; route=r1; pool=app; policy=round_robin; candidates=1/2; "
        b"server=127.0.0.1:1; attempt=2"
    )
