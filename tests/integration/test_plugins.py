"""Plugins end to end: the examples in examples/plugins/ through `portico run`, real sockets.

Each test writes a config naming plugins by ``module:Class`` with `plugins.path` pointing at
the examples (or at a module the test writes), starts Portico, and checks what a client and
the servers see; failures in plugin code must cost one request, never the worker.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

from fakes import FakeBackend, Reply, Seen, connect, eventually, pool_yaml, request
from h2client import H2Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


def config(
    listener: str, pools: dict[str, list[FakeBackend]], *, top: str = "", pool_extra: str = ""
) -> str:
    """One listener `web` on a free port (`listener`: its extra lines, indented 4) in front
    of `pools`; the examples are importable."""
    text = (
        f"workers: 1\n{top}"
        f"plugins:\n  path: ['{EXAMPLES}', '.']\n"
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n"
        f"    default_pool: {next(iter(pools))}\n{listener}"
        "pools:\n"
    )
    for name, members in pools.items():
        text += f"  {name}:\n{pool_extra}    servers:\n" + pool_yaml(members)
    return text


def test_api_key_filter_answers_401_without_a_known_key_and_hides_the_key(
    backends, portico, tmp_path: Path
) -> None:
    app = backends("app")
    (tmp_path / "keys.txt").write_text("# clients\nsecret-1\nsecret-2\n")
    listener = (
        "    http2: true\n"
        "    filters:\n"
        "      - use: apikey:ApiKey\n"
        "        with: {header: X-Api-Key, keys_file: keys.txt}\n"
    )
    proxy = portico(config(listener, {"app": [app]}))
    refused = request(proxy.port)
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == 'ApiKey header="X-Api-Key"'
    assert request(proxy.port, headers={"X-Api-Key": "secret-3"}).status == 401
    assert app.seen == []  # never reached a server
    allowed = request(proxy.port, headers={"X-Api-Key": "secret-2"})
    assert allowed.status == 200
    assert allowed.body == b"app"
    assert app.seen[-1].header("X-Api-Key") is None  # the key stays with Portico
    # the same answers over HTTP/2 (h2c)
    with connect(proxy.port) as sock:
        client = H2Client(sock)
        denied = client.response(client.request("GET", "/"))
        passed = client.response(client.request("GET", "/", [("x-api-key", "secret-1")]))
    assert denied.status == 401
    assert bytes(denied.body) == b"missing or unknown API key\n"
    assert passed.status == 200
    assert bytes(passed.body) == b"app"


def test_canary_sends_a_header_selected_share_of_users_to_the_canary_pool(
    backends, portico
) -> None:
    stable, canary = backends("stable"), backends("canary")
    listener = (
        "    routes:\n"
        "      - match: {path: /}\n"
        "        pool: stable\n"
        "        filters:\n"
        "          - use: canary:Canary\n"
        "            with: {pool: canary, share: 0.5, key: X-User}\n"
    )
    proxy = portico(config(listener, {"stable": [stable], "canary": [canary]}))
    chosen = {}
    for n in range(40):
        user = f"user-{n}"
        first = request(proxy.port, headers={"X-User": user}).body
        assert request(proxy.port, headers={"X-User": user}).body == first  # sticks
        chosen[user] = first
    share = sum(body == b"canary" for body in chosen.values()) / len(chosen)
    assert 0.2 < share < 0.8  # about half (40 users, a fixed hash)
    assert request(proxy.port).body == b"stable"  # no user header: where the route says
    forced = request(proxy.port, headers={"X-User": "user-0", "X-Canary": "always"})
    assert forced.body == b"canary"


def test_response_filter_adds_headers_on_its_listener_and_route(backends, portico) -> None:
    app = backends("app", lambda seen: Reply(headers=[("X-Frame-Options", "SAMEORIGIN")]))
    listener = (
        "    filters:\n"
        "      - use: headers:ResponseHeader\n"
        "        with: {name: X-Frame-Options, value: DENY}\n"
        "    routes:\n"
        "      - match: {path: /tagged/}\n"
        "        pool: app\n"
        "        filters:\n"
        "          - use: headers:ResponseHeader\n"
        "            with: {name: X-Route, value: tagged}\n"
    )
    proxy = portico(config(listener, {"app": [app]}))
    plain = request(proxy.port, target="/plain")
    assert plain.header("X-Frame-Options") == "DENY"  # replaced the server's
    assert plain.header("X-Route") is None
    tagged = request(proxy.port, target="/tagged/x")
    assert tagged.header("X-Frame-Options") == "DENY"
    assert tagged.header("X-Route") == "tagged"


def test_body_filter_rewrites_html_as_it_streams_over_http1_and_http2(backends, portico) -> None:
    page = b"<a href='http://intranet.example/x'>" * 5000  # many matches across pieces

    def answer(seen: Seen) -> Reply:
        kind = "text/plain" if seen.target == "/plain" else "text/html; charset=utf-8"
        return Reply(headers=[("Content-Type", kind)], body=page)

    app = backends("app", answer)
    listener = (
        "    http2: true\n"
        "    filters:\n"
        "      - use: rewrite:ReplaceText\n"
        "        with: {old: 'http://intranet.example', new: 'https://www.example.com'}\n"
    )
    proxy = portico(config(listener, {"app": [app]}))
    expected = page.replace(b"http://intranet.example", b"https://www.example.com")
    html = request(proxy.port, target="/page")
    assert html.body == expected
    assert html.header("Content-Length") is None  # the length changed: sent chunked
    assert html.header("Transfer-Encoding") == "chunked"
    plain = request(proxy.port, target="/plain")
    assert plain.body == page  # not a type it rewrites: untouched, with its length
    assert plain.header("Content-Length") == str(len(page))
    with connect(proxy.port) as sock:
        client = H2Client(sock)
        streamed = client.response(client.request("GET", "/page"))
    assert bytes(streamed.body) == expected


def test_json_probe_takes_a_server_out_when_its_health_field_changes(backends, portico) -> None:
    state = {"status": "ok"}

    def sick(seen: Seen) -> Reply:
        if seen.target == "/health":
            return Reply(body=json.dumps({"status": state["status"]}).encode())
        return Reply(body=b"sick")

    flaky = backends("flaky", sick)
    health = (
        "    health:\n"
        "      active:\n"
        "        type: probes:JsonField\n"
        "        with: {path: /health, field: status, expect: ok}\n"
        "        interval: 100ms\n"
        "        timeout: 100ms\n"
        "        rise: 1\n"
        "        fall: 1\n"
    )
    proxy = portico(config("", {"app": [flaky]}, pool_extra=health))
    assert request(proxy.port).body == b"sick"
    start = len(proxy.stderr_lines)
    state["status"] = "degraded"
    assert proxy.wait_for_stderr(
        "server flaky of pool app is DOWN (status is 'degraded')", 10, start
    )
    eventually(lambda: request(proxy.port).status == 503, "requests refused: the pool is down")
    state["status"] = "ok"
    assert proxy.wait_for_stderr("server flaky of pool app is UP (status is 'ok')", 10, start)


def test_least_latency_policy_sends_requests_to_the_faster_server(backends, portico) -> None:
    slow = backends("slow", lambda seen: Reply(body=b"slow", delay=0.2))
    fast = backends("fast")
    text = config("", {"app": [slow, fast]}).replace(
        "  app:\n", "  app:\n    policy: policies:LeastLatency\n"
    )
    proxy = portico(text)
    answers = [request(proxy.port).body for _ in range(6)]
    # unsampled servers go first; once each has answered, the slow one is avoided
    assert answers.count(b"slow") == 1
    assert answers[-3:] == [b"fast"] * 3


FAULTY = """\
import asyncio
import time

from portico.plugins import Filter, Policy, Response


class Boom(Filter):
    def on_request(self, request):
        if request.header("X-Boom"):
            raise RuntimeError("boom")


class BadResponse(Filter):
    def on_response(self, request, response):
        raise KeyError("no such header")


class Slow(Filter):
    def on_request(self, request):
        if request.header("X-Slow"):
            time.sleep(0.05)


class Waits(Filter):
    async def on_request(self, request):
        await asyncio.sleep(0)
        if request.header("X-Forever"):
            await asyncio.sleep(60)
        if request.header("X-Teapot"):
            return Response(418, "short and stout\\n")


class Picky(Policy):
    def pick(self, candidates, key):
        raise ZeroDivisionError("cannot choose")
"""


def test_failing_plugin_code_fails_one_request_with_500_and_the_worker_lives(
    backends, portico, tmp_path: Path
) -> None:
    (tmp_path / "faulty.py").write_text(FAULTY)
    app, other = backends("app"), backends("other")
    listener = (
        "    filters:\n"
        "      - use: faulty:Boom\n"
        "      - use: faulty:Slow\n"
        "      - use: faulty:Waits\n"
        "    routes:\n"
        "      - match: {path: /response/}\n"
        "        pool: app\n"
        "        filters: [{use: faulty:BadResponse}]\n"
        "      - match: {path: /policy/}\n"
        "        pool: picky\n"
    )
    text = config(listener, {"app": [app], "picky": [other]})
    text = text.replace("  picky:\n", "  picky:\n    policy: faulty:Picky\n")
    text = text.replace("plugins:\n", "plugins:\n  block_budget: 10ms\n  timeout: 200ms\n")
    proxy = portico(text)
    pids = proxy.worker_pids()
    for _ in range(3):
        assert request(proxy.port, headers={"X-Boom": "1"}).status == 500
    assert request(proxy.port).body == b"app"  # the next request is served as usual
    assert request(proxy.port, target="/response/x").status == 500
    assert request(proxy.port, target="/policy/x").status == 500
    assert request(proxy.port, headers={"X-Forever": "1"}).status == 500  # over plugins.timeout
    teapot = request(proxy.port, headers={"X-Teapot": "1"})
    assert (teapot.status, teapot.body) == (418, b"short and stout\n")
    assert request(proxy.port, headers={"X-Slow": "1"}).status == 200
    assert proxy.worker_pids() == pids  # no worker died
    assert proxy.wait_for_stderr("plugin faulty:Boom (listener web) failed in on_request: ")
    assert proxy.wait_for_stderr("plugin faulty:BadResponse (route routes[0] of listener web)")
    assert proxy.wait_for_stderr("plugin faulty:Picky (pool picky) failed in pick: Zero")
    assert proxy.wait_for_stderr("plugin faulty:Waits (listener web) failed in on_request (no")
    assert proxy.wait_for_stderr("plugin faulty:Slow (listener web) blocked the event loop for")
    # three failures, one line: a plugin failing on every request cannot flood the log
    assert sum("faulty:Boom (listener web) failed in" in line for line in proxy.stderr_lines) == 1
    assert not [line for line in proxy.stderr_lines if "Traceback" in line and "Boom" in line]


def test_portico_check_reports_plugin_problems_at_their_lines(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("k\n")
    path = tmp_path / "portico.yaml"
    path.write_text(
        dedent(
            f"""\
            plugins:
              path: ['{EXAMPLES}']
            listeners:
              - name: web
                bind: 127.0.0.1:0
                default_pool: app
                filters:
                  - use: apikey:ApiKey
                    with:
                      header: X-Key
                      keys_fil: keys.txt
                  - use: apikey:ApiKye
                  - use: canary:Canary
                    with: {{pool: nowhere, share: 2}}
            pools:
              app:
                policy: nomodule.policies:Fast
                servers:
                  - address: 127.0.0.1:9
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "portico", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f'{path}:9 listeners[0].filters[0].with: missing required key "keys_file"',
        f'{path}:11 listeners[0].filters[0].with.keys_fil: unknown key "keys_fil": '
        'did you mean "keys_file"?',
        f'{path}:12 listeners[0].filters[1].use: module "apikey" has no attribute "ApiKye" '
        '(did you mean "ApiKey"?)',
        f'{path}:14 listeners[0].filters[2].with.pool: no pool named "nowhere" (pools are: app)',
        f"{path}:14 listeners[0].filters[2].with.share: must be at most 1.0, not 2",
        f'{path}:17 pools.app.policy: cannot import "nomodule.policies": no module named '
        '"nomodule"',
    ]


TAGGER = """\
from portico.plugins import Filter


class Tag(Filter):
    def on_response(self, request, response):
        response.set_header("X-Version", "{version}")
"""


def test_reload_picks_up_edited_plugin_code(backends, portico, tmp_path: Path) -> None:
    (tmp_path / "tagger.py").write_text(TAGGER.format(version="one"))
    app = backends("app")
    proxy = portico(config("    filters: [{use: tagger:Tag}]\n", {"app": [app]}))
    assert request(proxy.port).header("X-Version") == "one"
    # a different size as well as a new time: Python's bytecode cache checks both
    (tmp_path / "tagger.py").write_text(TAGGER.format(version="two, edited"))
    proxy.proc.send_signal(signal.SIGHUP)
    assert "generation 1" in proxy.wait_stdout("portico: reloaded")
    eventually(
        lambda: request(proxy.port).header("X-Version") == "two, edited",
        "the new workers run the edited plugin",
    )
