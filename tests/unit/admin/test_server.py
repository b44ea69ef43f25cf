"""The admin API over a real loopback socket, in front of a fake supervisor: endpoints, the
token, errors, limits and HTTP/1.1 behaviour."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from portico.admin import server as server_module
from portico.admin.api import OPENAPI
from portico.admin.server import MAX_BODY, MAX_HEAD
from tests.unit.admin.running import TOKEN, Admin, read_reply

# ---------------------------------------------------------------------------------------------
# reading


def test_listeners_show_config_address_and_counters(admin: Admin) -> None:
    reply = admin.call("GET", "/api/listeners")
    assert reply.status == 200
    assert reply.headers["cache-control"] == "no-store"
    [web] = reply.json()
    assert web == {
        "name": "web",
        "protocol": "http",
        "address": "127.0.0.1:8080",
        "default_pool": "app",
        "routes": ["api", "routes[1]"],
        "active_connections": 1,
        "connections": 1,
        "bytes_received": 40,
        "bytes_sent": 400,
        "ratelimited": 0,
        "responses": {"2xx": 3, "5xx": 1},
    }


def test_pools_show_servers_with_health_state_and_counters(admin: Admin) -> None:
    admin.view.states["app", "s2"] = "maint"
    reply = admin.call("GET", "/api/pools")
    assert reply.status == 200
    pools = {p["name"]: p for p in reply.json()}
    assert set(pools) == {"app", "api"}
    app = pools["app"]
    assert app["policy"] == "least_conn"
    s1, s2 = app["servers"]
    assert s1["name"] == "s1"
    assert s1["address"] == "127.0.0.1:9001"
    assert s1["state"] == "ready"
    assert s1["health"] == {"active": "up", "detail": "HTTP 200", "ejected_by": 0}
    assert s1["responses"] == {"2xx": 3}
    assert s2["weight"] == 2
    assert s2["state"] == "maint"
    assert s2["health"]["active"] == "down"
    [api] = pools["api"]["servers"]
    assert api["name"] == "127.0.0.1:9101"
    assert api["health"] == {"active": "unchecked", "detail": "no active checks", "ejected_by": 0}
    assert api["responses"] == {"5xx": 1}


def test_one_pool(admin: Admin) -> None:
    reply = admin.call("GET", "/api/pools/api")
    assert reply.status == 200
    assert reply.json()["name"] == "api"


def test_an_unknown_pool_is_404_naming_the_pools_there_are(admin: Admin) -> None:
    reply = admin.call("GET", "/api/pools/nope")
    assert reply.status == 404
    assert reply.json() == {
        "error": "no such pool",
        "detail": 'no pool named "nope" (pools are: app, api)',
    }


def test_metrics_need_no_token_and_parse(admin: Admin) -> None:
    reply = admin.call("GET", "/metrics", auth=False)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert families["portico_workers"].samples[0].value == 1
    assert sum(s.value for s in families["portico_requests"].samples) == 4


def test_metrics_in_openmetrics_when_asked(admin: Admin) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    reply = admin.call("GET", "/metrics", headers=accept, auth=False)
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


def test_openapi_document_is_served(admin: Admin) -> None:
    reply = admin.call("GET", "/openapi.json")
    assert reply.status == 200
    assert reply.json() == OPENAPI


def test_head_answers_the_head_of_get(admin: Admin) -> None:
    with admin.connect() as sock:
        sock.sendall(admin.request_bytes("HEAD", "/api/pools"))
        head = read_reply(sock, head_only=True)
        sock.sendall(admin.request_bytes("GET", "/api/pools"))
        full = read_reply(sock)  # nothing of a body was sent after the HEAD's head
    assert head.status == 200
    assert head.headers["content-length"] == str(len(full.body))


# ---------------------------------------------------------------------------------------------
# the token


@pytest.mark.parametrize("path", ["/api/pools", "/api/listeners", "/openapi.json", "/nowhere"])
def test_no_token_is_401_with_a_bearer_challenge(admin: Admin, path: str) -> None:
    reply = admin.call("GET", path, auth=False)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="portico"'
    assert reply.json()["error"] == "token required"


@pytest.mark.parametrize("value", ["Basic czNjcmV0", "Bearer", "Bearer ", TOKEN])
def test_a_malformed_authorization_is_401(admin: Admin, value: str) -> None:
    reply = admin.call("GET", "/api/pools", headers={"Authorization": value}, auth=False)
    assert reply.status == 401


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
def test_a_wrong_token_is_403(admin: Admin, token: str) -> None:
    reply = admin.call("GET", "/api/pools", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 403
    assert reply.json() == {"error": "wrong token", "detail": "the token is not the admin token"}


def test_the_scheme_is_case_insensitive(admin: Admin) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    assert admin.call("GET", "/api/pools", headers=headers).status == 200


def test_a_repeated_authorization_field_is_not_accepted(admin: Admin) -> None:
    with admin.connect() as sock:
        request = admin.request_bytes("GET", "/api/pools")
        doubled = request.replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        sock.sendall(doubled)
        assert read_reply(sock).status == 403


def test_changes_need_the_token(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", {"weight": 5}, auth=False)
    assert reply.status == 401
    assert admin.view.calls == []


def test_authentication_failures_are_logged(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="portico.admin"):
        admin.call("GET", "/api/pools", headers={"Authorization": "Bearer wrong"})
    assert any("403 wrong token" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# without a token: only requests naming the listener by address


@pytest.mark.parametrize("host", ["127.0.0.1:9090", "localhost:9090", "[::1]:9090", "LOCALHOST"])
def test_without_a_token_an_address_in_host_is_enough(
    make_admin: Callable[..., Admin], host: str
) -> None:
    admin = make_admin(token=None)
    assert admin.call("GET", "/api/pools", headers={"Host": host}).status == 200


@pytest.mark.parametrize("host", ["evil.example:9090", "evil.example", "127.0.0.1.nip.io"])
def test_without_a_token_a_host_name_is_refused(
    make_admin: Callable[..., Admin], host: str
) -> None:
    admin = make_admin(token=None)
    reply = admin.call("GET", "/api/pools", headers={"Host": host})
    assert reply.status == 403
    assert reply.json()["error"] == "host not allowed"
    assert "DNS rebinding" in reply.json()["detail"]


def test_with_a_token_a_host_name_is_fine(admin: Admin) -> None:
    assert admin.call("GET", "/api/pools", headers={"Host": "lb.example"}).status == 200


# ---------------------------------------------------------------------------------------------
# cross-origin changes (a web page in the operator's browser)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_origin_changes_are_refused(
    make_admin: Callable[..., Admin], headers: dict[str, str]
) -> None:
    admin = make_admin(token=None)
    reply = admin.call("POST", "/api/reload", headers=headers)
    assert reply.status == 403
    assert reply.json()["error"] == "cross-origin request refused"
    assert admin.view.calls == []


def test_a_same_origin_change_is_accepted(make_admin: Callable[..., Admin]) -> None:
    admin = make_admin(token=None)
    headers = {"Origin": f"http://127.0.0.1:{admin.port}", "Sec-Fetch-Site": "same-origin"}
    assert admin.call("POST", "/api/reload", headers=headers).status == 200


# ---------------------------------------------------------------------------------------------
# changes


def test_set_weight(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="portico.admin"):
        reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", {"weight": 5})
    assert reply.status == 200
    assert reply.json()["weight"] == 5
    assert reply.json()["name"] == "s1"
    assert admin.view.calls == [("set_weight", "app", "s1", 5)]
    [record] = [r for r in caplog.records if "weight" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("admin: 127.0.0.1:")  # who
    assert "set the weight of server 's1' of pool 'app' to 5" in message  # what


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"weight": 0}, "weight: must be from 1 to 256, not 0"),
        ({"weight": 257}, "weight: must be from 1 to 256, not 257"),
        ({"weight": "5"}, 'weight: must be a whole number, not "5"'),
        ({"weight": True}, "weight: must be a whole number, not true"),
        ({"weight": 2.5}, "weight: must be a whole number, not 2.5"),
        ({}, 'missing field "weight"'),
        ({"weight": 5, "wieght": 5}, 'unknown field "wieght"'),
    ],
)
def test_an_invalid_weight_is_422_naming_the_problem(
    admin: Admin, body: dict[str, object], detail: str
) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", body)
    assert reply.status == 422
    assert reply.json() == {"error": "invalid body", "detail": detail}
    assert admin.view.calls == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "missing body"),
        (b"{weight: 5}", 400, "body is not JSON"),
        (b"\xff\xfe", 400, "body is not JSON"),
        (b"[5]", 422, "body is not a JSON object"),
        (b"5", 422, "body is not a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object(
    admin: Admin, body: bytes, status: int, error: str
) -> None:
    headers = {"Content-Length": str(len(body))}
    reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", body, headers=headers)
    assert reply.status == status
    assert reply.json()["error"] == error
    assert "weight" in reply.json()["detail"]  # the example says what to send


def test_a_change_to_an_unknown_server_is_404(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/s9/state", {"state": "drain"})
    assert reply.status == 404
    assert reply.json() == {
        "error": "no such server",
        "detail": 'pool "app" has no server named "s9" (its servers are: s1, s2)',
    }


def test_set_state(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/s2/state", {"state": "drain"})
    assert reply.status == 200
    assert reply.json()["state"] == "drain"
    assert admin.view.calls == [("set_state", "app", "s2", "drain")]


def test_an_unknown_state_is_422_listing_the_states(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/s2/state", {"state": "off"})
    assert reply.status == 422
    assert (
        reply.json()["detail"] == "state: must be one of: 'ready', 'drain' or 'maint', not \"off\""
    )


def test_a_server_name_is_percent_decoded(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/api/servers/127.0.0.1%3A9101/weight", {"weight": 3})
    assert reply.status == 200
    assert admin.view.calls == [("set_weight", "api", "127.0.0.1:9101", 3)]


def test_add_server(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    body = {"address": "127.0.0.1:9004", "weight": 3, "name": "s4"}
    with caplog.at_level(logging.INFO, logger="portico.admin"):
        reply = admin.call("POST", "/api/pools/app/servers", body)
    assert reply.status == 201
    assert reply.json()["name"] == "s4"
    assert reply.json()["address"] == "127.0.0.1:9004"
    assert reply.json()["weight"] == 3
    [(kind, pool, server)] = admin.view.calls
    assert (kind, pool, server.name, server.weight) == ("add_server", "app", "s4", 3)
    assert any(
        "added server 's4' (127.0.0.1:9004, weight 3)" in r.getMessage() for r in caplog.records
    )


def test_an_added_server_is_named_by_its_address_by_default(admin: Admin) -> None:
    reply = admin.call("POST", "/api/pools/app/servers", {"address": "[::1]:9005"})
    assert reply.status == 201
    assert reply.json()["name"] == "[::1]:9005"
    assert reply.json()["weight"] == 1


def test_adding_a_name_that_exists_is_409(admin: Admin) -> None:
    reply = admin.call("POST", "/api/pools/app/servers", {"address": "127.0.0.1:1", "name": "s1"})
    assert reply.status == 409
    assert reply.json()["error"] == "server exists"
    assert admin.view.calls == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"address": "nowhere"}, "address: "),
        ({"address": "127.0.0.1:70000"}, "address: "),
        ({"name": "x"}, 'missing field "address"'),
        ({"address": "127.0.0.1:1", "weight": 0}, "weight: must be from 1 to 256"),
        ({"address": "127.0.0.1:1", "colour": "red"}, 'unknown field "colour"'),
    ],
)
def test_adding_an_invalid_server_is_422(
    admin: Admin, body: dict[str, object], detail: str
) -> None:
    reply = admin.call("POST", "/api/pools/app/servers", body)
    assert reply.status == 422
    assert reply.json()["detail"].startswith(detail)


@pytest.mark.parametrize("name", ["a/b", "../../x", "x\x00y", "..", "a b", "ä"])
def test_a_server_name_the_config_file_refuses_is_refused_here_too(admin: Admin, name: str) -> None:
    reply = admin.call("POST", "/api/pools/app/servers", {"address": "127.0.0.1:1", "name": name})
    assert reply.status == 422
    assert reply.json()["detail"].startswith("name: ")
    assert "not a valid server name" in reply.json()["detail"]
    assert admin.view.calls == []


def test_adding_to_an_unknown_pool_is_404(admin: Admin) -> None:
    reply = admin.call("POST", "/api/pools/nope/servers", {"address": "127.0.0.1:1"})
    assert reply.status == 404


def test_remove_server(admin: Admin) -> None:
    reply = admin.call("DELETE", "/api/pools/app/servers/s2")
    assert reply.status == 200
    assert reply.json() == {"pool": "app", "removed": "s2"}
    assert [s["name"] for s in admin.call("GET", "/api/pools/app").json()["servers"]] == ["s1"]


def test_the_last_server_cannot_be_removed(admin: Admin) -> None:
    reply = admin.call("DELETE", "/api/pools/api/servers/127.0.0.1:9101")
    assert reply.status == 422
    assert reply.json()["error"] == "last server"
    assert admin.view.calls == []


def test_reload(admin: Admin) -> None:
    reply = admin.call("POST", "/api/reload")
    assert reply.status == 200
    assert reply.json() == {"reloaded": True, "generation": 2, "detail": "reloaded fake.yaml"}
    assert admin.view.calls == [("reload",)]


def test_a_refused_reload_is_422_with_the_reason(admin: Admin) -> None:
    admin.view.reload_result = {
        "reloaded": False,
        "generation": 1,
        "detail": "fake.yaml:3: pools.app.policy: must be one of ...",
    }
    reply = admin.call("POST", "/api/reload")
    assert reply.status == 422
    assert reply.json() == {
        "error": "reload refused",
        "reloaded": False,
        "generation": 1,
        "detail": "fake.yaml:3: pools.app.policy: must be one of ...",
    }


def test_an_error_inside_the_supervisor_is_a_500_without_internals(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(pool: str, server: str, weight: int) -> None:
        raise RuntimeError("secret internals")

    admin.view.set_weight = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="portico.admin"):
        reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", {"weight": 2})
    assert reply.status == 500
    assert "secret" not in reply.body.decode()
    assert any(r.exc_info for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# routing


@pytest.mark.parametrize("path", ["/api", "/api/pools/", "/api/pools/app/servers", "/x"])
def test_unknown_paths_are_404(admin: Admin, path: str) -> None:
    reply = admin.call("GET", path)
    assert reply.status in (404, 405)
    body = reply.json()
    assert set(body) == {"error", "detail"}


def test_a_path_with_another_method_is_405_with_allow(admin: Admin) -> None:
    reply = admin.call("DELETE", "/api/pools/app")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"
    reply = admin.call("GET", "/api/pools/app/servers/s1/weight")
    assert reply.status == 405
    assert reply.headers["allow"] == "PUT"


def test_a_query_string_is_ignored(admin: Admin) -> None:
    assert admin.call("GET", "/api/pools?pretty=1").status == 200


def test_bad_percent_encoding_is_400(admin: Admin) -> None:
    reply = admin.call("PUT", "/api/pools/app/servers/%ff/weight", {"weight": 1})
    assert reply.status == 400
    assert reply.json()["error"] == "bad path"


# ---------------------------------------------------------------------------------------------
# the dashboard's files


def test_without_a_dashboard_the_index_is_a_placeholder(admin: Admin) -> None:
    reply = admin.call("GET", "/", auth=False)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert b"/openapi.json" in reply.body


def test_static_files_are_served_without_a_token(
    make_admin: Callable[..., Admin], tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<p>dashboard</p>")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "app.js").write_text("console.log(1)")
    admin = make_admin(static_dir=tmp_path)
    index = admin.call("GET", "/", auth=False)
    assert index.body == b"<p>dashboard</p>"
    script = admin.call("GET", "/static/js/app.js", auth=False)
    assert script.status == 200
    assert script.body == b"console.log(1)"
    assert "javascript" in script.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/js/..%2f..%2fsecret.txt",
        "/static/.hidden",
        "/static/js",
        "/static/",
        "/static/link.txt",
        "/static/missing.css",
    ],
)
def test_nothing_outside_the_static_folder_is_served(
    make_admin: Callable[..., Admin], tmp_path: Path, path: str
) -> None:
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    (static / ".hidden").write_text("HIDDEN-CONTENT")
    (tmp_path / "secret.txt").write_text("SECRET-CONTENT")
    (static / "link.txt").symlink_to(tmp_path / "secret.txt")
    admin = make_admin(static_dir=static)
    reply = admin.call("GET", path, auth=False)
    assert reply.status in (400, 404)
    assert b"SECRET-CONTENT" not in reply.body
    assert b"HIDDEN-CONTENT" not in reply.body


# ---------------------------------------------------------------------------------------------
# HTTP/1.1: keep-alive, pipelining, limits


def test_keep_alive_and_pipelining_answer_in_order(admin: Admin) -> None:
    with admin.connect() as sock:
        sock.sendall(
            admin.request_bytes("GET", "/api/pools/app")
            + admin.request_bytes("PUT", "/api/pools/app/servers/s1/weight", {"weight": 9})
            + admin.request_bytes("GET", "/api/pools/api")
        )
        buffer = bytearray()
        replies = [read_reply(sock, buffer) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[0].json()["name"] == "app"
    assert replies[1].json()["weight"] == 9
    assert replies[2].json()["name"] == "api"


def test_connection_close_is_honoured(admin: Admin) -> None:
    with admin.connect() as sock:
        sock.sendall(admin.request_bytes("GET", "/api/pools", headers={"Connection": "close"}))
        reply = read_reply(sock)
        assert reply.headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_malformed_http_is_400_and_closes(admin: Admin) -> None:
    with admin.connect() as sock:
        sock.sendall(b"GET /api/pools HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        reply = read_reply(sock)
        assert reply.status == 400
        assert reply.json()["error"] == "bad request"
        assert sock.recv(1) == b""


def test_a_head_too_large_is_431(admin: Admin) -> None:
    reply = admin.call("GET", "/api/pools", headers={"X-Big": "a" * MAX_HEAD})
    assert reply.status == 431


def test_a_body_too_large_is_413_before_it_is_read(admin: Admin) -> None:
    body = b"x" * (MAX_BODY + 1)
    reply = admin.call("PUT", "/api/pools/app/servers/s1/weight", body)
    assert reply.status == 413
    assert reply.json()["error"] == "body too large"


def test_a_chunked_body_too_large_is_413(admin: Admin) -> None:
    chunk = b"x" * 40_000
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
    with admin.connect() as sock:
        head = admin.request_bytes(
            "PUT", "/api/pools/app/servers/s1/weight", headers={"Transfer-Encoding": "chunked"}
        )
        sock.sendall(head + framed)
        assert read_reply(sock).status == 413


def test_expect_100_continue_is_answered(admin: Admin) -> None:
    body = b'{"weight": 4}'
    with admin.connect() as sock:
        head = admin.request_bytes(
            "PUT",
            "/api/pools/app/servers/s1/weight",
            headers={"Expect": "100-continue", "Content-Length": str(len(body))},
        )
        sock.sendall(head)
        interim = read_reply(sock, head_only=True)
        assert interim.status == 100
        sock.sendall(body)
        assert read_reply(sock).status == 200


def test_a_token_with_non_ascii_characters_is_compared_as_utf_8(
    make_admin: Callable[..., Admin],
) -> None:
    admin = make_admin(token="pässwörd")
    with admin.connect() as sock:
        head = admin.request_bytes("GET", "/api/pools", auth=False)
        sock.sendall(head[:-2] + "Authorization: Bearer pässwörd\r\n\r\n".encode())
        assert read_reply(sock).status == 200


def test_an_upgrade_request_is_answered_and_the_connection_closed(admin: Admin) -> None:
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"}
    with admin.connect() as sock:
        sock.sendall(admin.request_bytes("GET", "/api/pools", headers=upgrade))
        reply = read_reply(sock)
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_a_request_that_does_not_arrive_whole_in_time_is_408(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT", 0.2)
    with admin.connect() as sock:
        sock.sendall(b"GET /api/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        reply = read_reply(sock)
        assert reply.status == 408
        assert sock.recv(1) == b""


def test_an_idle_keep_alive_connection_is_closed(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    with admin.connect() as sock:
        sock.sendall(admin.request_bytes("GET", "/api/pools"))
        assert read_reply(sock).status == 200
        assert sock.recv(1) == b""  # closed without a word: nothing was asked


def test_connections_beyond_the_limit_are_closed_at_once(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    held = [admin.connect() for _ in range(2)]
    try:
        for sock in held:  # each is being served: a request answered on each
            sock.sendall(admin.request_bytes("GET", "/api/pools"))
            assert read_reply(sock).status == 200
        with admin.connect() as extra:
            extra.sendall(admin.request_bytes("GET", "/api/pools"))
            with pytest.raises((EOFError, ConnectionError)):
                read_reply(extra)
    finally:
        for sock in held:
            sock.close()
