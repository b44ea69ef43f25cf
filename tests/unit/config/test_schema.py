"""The config models, built from plain Python data: defaults, field rules, references."""

from typing import Any

import pytest
from pydantic import ValidationError

from portico.config.schema import (
    DEFER_REFERENCES,
    POLICY_NAMES,
    Config,
    ListenerConfig,
    PoolConfig,
    ReferenceIssue,
    ServerConfig,
    check_references,
    format_loc,
)
from portico.config.units import HostPort


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:8080", "default_pool": "app"}],
        "pools": {"app": {"servers": [{"address": "127.0.0.1:9001"}]}},
    }
    data.update(overrides)
    return data


def test_defaults_match_the_reference_config() -> None:
    config = Config.model_validate(minimal())
    assert config.workers == "auto"
    assert config.shutdown_grace == 30.0
    listener = config.listeners[0]
    assert listener.bind == HostPort("127.0.0.1", 8080)
    assert listener.protocol == "http"
    assert listener.backlog == 1024
    assert listener.limits.max_request_line == 8 * 1024
    assert listener.limits.max_header_size == 32 * 1024
    assert listener.limits.max_headers == 100
    assert listener.limits.max_body_size == 0
    assert listener.limits.response_buffer == 64 * 1024
    assert (listener.timeouts.header, listener.timeouts.keepalive) == (10.0, 75.0)
    assert (listener.timeouts.body, listener.timeouts.send) == (60.0, 60.0)
    assert listener.forwarded.x_forwarded is True
    assert listener.forwarded.forwarded is True
    pool = config.pools["app"]
    assert pool.policy == "round_robin"
    assert pool.hash_key == "client_ip"
    assert (pool.timeouts.connect, pool.timeouts.read, pool.timeouts.write) == (3.0, 30.0, 30.0)
    assert pool.keepalive.max_idle == 32
    assert pool.keepalive.idle_timeout == 60.0
    assert pool.keepalive.max_requests == 0
    assert pool.retries == 1
    assert pool.hide_headers == ()
    assert pool.servers[0].weight == 1


def test_server_name_defaults_to_its_address() -> None:
    assert ServerConfig.model_validate({"address": ":9001"}).name == "0.0.0.0:9001"
    assert ServerConfig.model_validate({"address": "[::1]:1", "name": None}).name == "[::1]:1"
    assert ServerConfig.model_validate({"address": "a:1", "name": "alpha"}).name == "alpha"


def test_server_name_must_not_be_empty() -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        ServerConfig.model_validate({"address": "a:1", "name": " "})


@pytest.mark.parametrize("name", ["a/b", "../../x", "x\x00y", "..", ".", "a b", "ä", "a:b"])
def test_server_names_follow_the_name_rule(name: str) -> None:
    with pytest.raises(ValidationError, match="not a valid server name"):
        ServerConfig.model_validate({"address": "a:1", "name": name})


@pytest.mark.parametrize("name", ["s1", "app-2.eu_west", "10.0.0.1:80", "[::1]:80", "db.local:5"])
def test_a_server_may_be_named_like_a_name_or_an_address(name: str) -> None:
    assert ServerConfig.model_validate({"address": "a:1", "name": name}).name == name


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_listener_and_pool_names_are_not_only_dots(name: str) -> None:
    with pytest.raises(ValidationError, match="not a valid name"):
        Config.model_validate(minimal(pools={name: {"servers": [{"address": "a:1"}]}}))


def test_models_are_frozen() -> None:
    config = Config.model_validate(minimal())
    with pytest.raises(ValidationError, match="frozen"):
        config.workers = 4  # type: ignore[misc, unused-ignore]
    with pytest.raises(ValidationError, match="frozen"):
        config.listeners[0].limits.max_headers = 5  # type: ignore[misc, unused-ignore]
    with pytest.raises(ValidationError, match="frozen"):
        config.pools["app"].servers[0].weight = 2  # type: ignore[misc, unused-ignore]
    assert isinstance(config.listeners, tuple)
    assert isinstance(config.pools["app"].servers, tuple)


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        ServerConfig.model_validate({"address": "a:1", "wieght": 2})


def test_empty_sections_mean_defaults() -> None:
    listener = ListenerConfig.model_validate(
        {"name": "w", "bind": ":80", "default_pool": "p", "limits": None, "timeouts": None}
    )
    assert listener.limits.max_headers == 100
    pool = PoolConfig.model_validate({"servers": [{"address": "a:1"}], "hide_headers": None})
    assert pool.hide_headers == ()


@pytest.mark.parametrize(
    ("workers", "cpus", "count"), [("auto", 8, 8), ("auto", 200, 64), (3, 8, 3)]
)
def test_worker_count(workers: object, cpus: int, count: int) -> None:
    config = Config.model_validate(minimal(workers=workers))
    assert config.worker_count(cpu_count=cpus) == count


def test_worker_count_auto_uses_this_machine() -> None:
    assert 1 <= Config.model_validate(minimal()).worker_count() <= 64


@pytest.mark.parametrize("workers", [0, 65, "many", True, 2.5])
def test_workers_must_be_auto_or_1_to_64(workers: object) -> None:
    with pytest.raises(ValidationError, match='must be "auto" or a whole number from 1 to 64'):
        Config.model_validate(minimal(workers=workers))


def test_shutdown_grace_may_be_zero_but_timeouts_may_not() -> None:
    assert Config.model_validate(minimal(shutdown_grace="0s")).shutdown_grace == 0.0
    with pytest.raises(ValidationError, match="must be more than 0"):
        PoolConfig.model_validate({"servers": [{"address": "a:1"}], "timeouts": {"read": 0}})


def test_body_size_zero_means_unlimited_but_head_limits_must_be_positive() -> None:
    listener = {"name": "w", "bind": ":80", "default_pool": "p"}
    ok = ListenerConfig.model_validate({**listener, "limits": {"max_body_size": 0}})
    assert ok.limits.max_body_size == 0
    with pytest.raises(ValidationError, match="must be more than 0 bytes"):
        ListenerConfig.model_validate({**listener, "limits": {"max_header_size": 0}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", 0, "must be from 1 to 256, not 0"),
        ("weight", 257, "must be from 1 to 256, not 257"),
        ("weight", True, "must be a whole number, not true"),
    ],
)
def test_server_weight_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServerConfig.model_validate({"address": "a:1", field: value})


@pytest.mark.parametrize("key", ["client_ip", "path", "header:X-User-Id", "cookie:session_id"])
def test_hash_key_forms(key: str) -> None:
    pool = PoolConfig.model_validate(
        {"policy": "consistent_hash", "hash_key": key, "servers": [{"address": "a:1"}]}
    )
    assert pool.hash_key == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("header:", "is not a valid header name"),
        ("cookie:a b", "is not a valid cookie name"),
        ("query:x", "is not a hash key: use client_ip, path, header:NAME or cookie:NAME"),
        ("ip", "is not a hash key"),
    ],
)
def test_hash_key_syntax_is_checked(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PoolConfig.model_validate({"hash_key": key, "servers": [{"address": "a:1"}]})


def test_hide_headers_must_be_header_names() -> None:
    pool = PoolConfig.model_validate(
        {"servers": [{"address": "a:1"}], "hide_headers": ["Server", "X-Powered-By"]}
    )
    assert pool.hide_headers == ("Server", "X-Powered-By")
    with pytest.raises(ValidationError, match='"Bad Header" is not a valid header name'):
        PoolConfig.model_validate({"servers": [{"address": "a:1"}], "hide_headers": ["Bad Header"]})


def test_every_policy_name_is_accepted() -> None:
    assert "least_conn" in POLICY_NAMES
    for policy in POLICY_NAMES:
        pool = PoolConfig.model_validate({"policy": policy, "servers": [{"address": "a:1"}]})
        assert pool.policy == policy


def test_config_built_in_code_checks_references() -> None:
    data = minimal(pools={"other": {"servers": [{"address": "a:1"}]}})
    with pytest.raises(ValidationError, match='no pool named "app"'):
        Config.model_validate(data)
    deferred = Config.model_validate(data, context={DEFER_REFERENCES: True})
    assert check_references(deferred) == [
        ReferenceIssue(("listeners", 0, "default_pool"), 'no pool named "app" (pools are: other)')
    ]


def references(data: dict[str, Any]) -> list[str]:
    config = Config.model_validate(data, context={DEFER_REFERENCES: True})
    return [str(issue) for issue in check_references(config)]


def test_listener_names_and_binds_must_be_unique() -> None:
    listeners = [
        {"name": "web", "bind": "127.0.0.1:8080", "default_pool": "app"},
        {"name": "web", "bind": "127.0.0.1:8080", "default_pool": "app"},
        {"name": "all", "bind": ":8080", "default_pool": "app"},
        {"name": "v6", "bind": "[::]:8080", "default_pool": "app"},
        {"name": "other", "bind": "127.0.0.1:8081", "default_pool": "app"},
    ]
    assert references(minimal(listeners=listeners)) == [
        'listeners[1].name: listener name "web" is already used by listeners[0]',
        'listeners[1].bind: 127.0.0.1:8080 is already bound by listener "web" (listeners[0])',
        'listeners[2].bind: 0.0.0.0:8080 overlaps 127.0.0.1:8080 of listener "web" (listeners[0])',
    ]


def test_server_names_must_be_unique_within_a_pool() -> None:
    pools = {
        "app": {
            "servers": [
                {"address": "10.0.0.1:80"},
                {"address": "10.0.0.1:80"},
                {"address": "10.0.0.2:80", "name": "10.0.0.1:80"},
            ]
        },
        "video": {"servers": [{"address": "10.0.0.1:80"}]},
    }
    assert references(minimal(pools=pools)) == [
        "pools.app.servers[1].address: server 10.0.0.1:80 is listed twice (first as "
        "servers[0]): raise its weight instead, or give each entry its own name",
        'pools.app.servers[2].name: server name "10.0.0.1:80" is already used by servers[0]',
    ]


def test_format_loc_reads_like_the_yaml() -> None:
    assert format_loc(("pools", "app", "servers", 1, "address")) == "pools.app.servers[1].address"
    assert format_loc(("pools", "app.v2", "policy")) == 'pools["app.v2"].policy'
    assert format_loc(()) == ""
