"""Cookie persistence: a client keeps landing on its server, through any Portico instance
that shares the secret, and is moved (with a new cookie) when that server is gone."""

from __future__ import annotations

from fakes import FakeBackend, Portico, Reply, Seen, eventually, pool_yaml, request

SECRET = "0123456789abcdef-shared-secret"


def _config(pool: list[FakeBackend], extra: str = "") -> str:
    return (
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "pools:\n"
        "  app:\n"
        f"    sticky: {{cookie: SRV, secret: {SECRET}, max_age: 3600}}\n"
        f"{extra}"
        "    servers:\n" + pool_yaml(pool)
    )


def _cookie(set_cookie: str | None) -> str:
    assert set_cookie is not None
    assert "HttpOnly" in set_cookie
    assert "SameSite=Lax" in set_cookie
    return set_cookie.split(";", 1)[0]  # "SRV=<value>"


def test_a_cookie_from_instance_a_holds_through_instance_b(backends, tmp_path) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Portico(_config(pool), tmp_path / "a") as a, Portico(_config(pool), tmp_path / "b") as b:
        first = request(a.port)
        server = first.header("X-Backend")
        cookie = _cookie(first.header("Set-Cookie"))
        assert server not in cookie  # opaque: the value does not name the server
        for i in range(100):
            proxy = a if i % 2 else b
            again = request(proxy.port, headers={"Cookie": f"theme=dark; {cookie}"})
            assert again.header("X-Backend") == server
            assert again.header("Set-Cookie") is None  # nothing to change


def test_a_tampered_or_foreign_cookie_is_ignored_and_replaced(backends, portico) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(_config(pool))
    cookie = _cookie(request(proxy.port).header("Set-Cookie"))
    name, value = cookie.split("=", 1)
    flipped = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    for bad in (f"{name}={flipped}", f"{name}=garbage", f"{name}="):
        answer = request(proxy.port, headers={"Cookie": bad})
        assert answer.status == 200
        assert answer.header("Set-Cookie") is not None  # a fresh, valid one


def test_when_the_sticky_server_dies_the_client_moves_with_a_new_cookie(backends, portico) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(_config(pool))
    first = request(proxy.port)
    server = first.header("X-Backend")
    cookie = _cookie(first.header("Set-Cookie"))
    next(b for b in pool if b.name == server).stop()
    moved = request(proxy.port, headers={"Cookie": cookie})
    assert moved.status == 200  # no error for the client: rebalanced
    assert moved.header("X-Backend") != server
    new_cookie = _cookie(moved.header("Set-Cookie"))
    assert new_cookie != cookie
    assert request(proxy.port, headers={"Cookie": new_cookie}).header("X-Backend") == moved.header(
        "X-Backend"
    )


def test_a_short_or_missing_secret_is_a_config_error_with_its_path() -> None:
    import pytest

    from portico.config.load import ConfigError, parse_config

    base = (
        "listeners:\n  - {name: web, bind: '127.0.0.1:0', default_pool: app}\n"
        "pools:\n  app:\n    sticky: {STICKY}\n    servers:\n      - address: 127.0.0.1:9\n"
    )
    for sticky, message in (
        ("{secret: short}", "at least 16 bytes"),
        ("{cookie: SRV}", "give secret or secret_env"),
        ("{secret_env: PORTICO_TEST_UNSET_SECRET}", "PORTICO_TEST_UNSET_SECRET is not set"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config(base.replace("{STICKY}", sticky), "portico.yaml")
        text = str(caught.value)
        assert "pools.app.sticky" in text
        assert message in text


def test_prefix_mode_tags_the_application_session_cookie(backends, portico) -> None:
    from fakes import Reply

    def session(name: str):  # type: ignore[no-untyped-def]
        def handler(seen):  # type: ignore[no-untyped-def]
            if seen.header("Cookie") is None:
                return Reply(
                    body=name.encode(), headers=[("Set-Cookie", f"JSESSIONID={name}-s1; Path=/")]
                )
            return Reply(body=name.encode())

        return handler

    pool = [backends(f"b{i}", session(f"b{i}")) for i in range(3)]
    proxy = portico(
        _config(pool).replace("sticky: {cookie: SRV,", "sticky: {mode: prefix, cookie: JSESSIONID,")
    )
    first = request(proxy.port)
    server = first.header("X-Backend")
    set_cookie = first.header("Set-Cookie")
    assert set_cookie is not None
    pair, _, attributes = set_cookie.partition(";")
    assert attributes.strip() == "Path=/"  # the application's own attributes are kept
    name, value = pair.split("=", 1)
    assert name == "JSESSIONID"
    assert value.endswith(f"~{server}-s1")  # <server token>~<the application's value>
    assert server not in value.split("~")[0]
    for _ in range(10):
        again = request(proxy.port, headers={"Cookie": pair})
        assert again.header("X-Backend") == server
    sticky_backend = next(b for b in pool if b.name == server)
    assert sticky_backend.seen[-1].header("Cookie") == f"JSESSIONID={server}-s1"  # token off


def test_a_stick_table_entry_holds_for_a_client_without_the_persistence_cookie(
    backends, portico
) -> None:
    """Cookie persistence and a stick table on one pool: a request with the application's
    session but without Portico's cookie (a client that dropped it, another app on the domain)
    goes where the stick table says; the cookie lookup finding nothing must not erase that."""

    def sessions(name: str):  # type: ignore[no-untyped-def]
        def handler(seen: Seen) -> Reply:
            if "JSESSIONID" not in (seen.header("Cookie") or ""):
                return Reply(body=name.encode(), headers=[("Set-Cookie", f"JSESSIONID=s-{name}")])
            return Reply(body=name.encode())

        return handler

    pool = [backends(f"b{i}", sessions(f"b{i}")) for i in range(3)]
    proxy = portico(_config(pool, "    stick: {key: 'cookie:JSESSIONID', ttl: 10m}\n"))
    first = request(proxy.port)
    server = first.header("X-Backend")
    session = f"JSESSIONID=s-{server}"

    def learnt() -> bool:  # learnt after answering: the next request must find it
        return request(proxy.port, headers={"Cookie": session}).header("X-Backend") == server

    eventually(learnt, "the stick table to learn the session")
    for _ in range(12):  # round robin over 3 would leave it 2 times in 3
        again = request(proxy.port, headers={"Cookie": session})
        assert again.header("X-Backend") == server
