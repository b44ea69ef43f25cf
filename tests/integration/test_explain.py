"""`portico explain` end to end: the command on a config file, the same question put to a real
`portico run` through its admin API (with its live server state), and the listener's
debug_header on real proxied responses, in front of real FakeBackends."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import simple_config
from fakes import FakeBackend, Portico, pool_yaml, request

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

TOKEN = "explain-test-token"

CONFIG = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: shop
    routes:
      - name: beta-cart
        match: {host: shop.example.com, path: /cart, cookies: {beta: "1"}}
        pool: beta
      - name: cart
        match: {host: shop.example.com, path: /cart}
        pool: shop
pools:
  shop:
    policy: least_conn
    servers:
      - {address: 10.0.0.1:80, name: s1}
      - {address: 10.0.0.2:80, name: s2}
  beta:
    servers:
      - {address: 10.0.1.1:80, name: b1}
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portico", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_prints_each_step_for_people(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    done = run_cli(
        "explain", str(path), "GET http://shop.example.com/cart?x=1", "-H", "Cookie: beta=2"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1. listener web: the only http listener" in out
    assert 'no    [0] beta-cart -> pool "beta"' in out
    assert 'cookie beta is "1": no, cookie beta is "2"' in out
    assert 'MATCH [1] cart -> pool "shop"' in out
    assert '=> pool "shop", server "s1"' in out


def test_explain_json_is_for_tools_and_state_can_be_assumed(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    done = run_cli(
        "explain", str(path), "GET http://shop.example.com/cart", "--json", "--state", "s1=down"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["route"], answer["pool"], answer["server"]) == ("cart", "shop", "s2")
    s1 = answer["pools"][0]["servers"][0]
    assert (s1["name"], s1["candidate"]) == ("s1", False)


def test_explain_refuses_what_it_cannot_explain(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(CONFIG)
    bad = run_cli("explain", str(path), "GET ftp://x/")
    assert bad.returncode == 2
    assert "is not an http(s) URL" in bad.stderr
    unknown = run_cli("explain", str(path), "GET /", "--state", "zz=down")
    assert unknown.returncode == 2
    assert "no server 'zz' in any pool" in unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("listeners: []\n")
    assert run_cli("explain", str(broken), "GET /").returncode == 1


def test_a_running_portico_explains_with_its_live_state(
    backends: MakeBackend, portico: MakePortico
) -> None:
    a, b = backends("a"), backends("b")
    proxy = portico(
        simple_config(
            [a, b], policy="least_conn", top=f"admin:\n  bind: 127.0.0.1:0\n  token: {TOKEN}\n"
        )
    )
    admin = int(re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line).group(1))  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"state": "drain"}).encode()
    drained = request(admin, "PUT", "/api/pools/app/servers/a/state", headers, body)
    assert drained.status == 200

    done = run_cli(
        "explain",
        str(proxy.path),
        "GET http://test.local/x",
        "--admin",
        f"http://127.0.0.1:{admin}",
    )
    assert done.returncode == 0, done.stderr
    assert "not a candidate: draining (admin)" in done.stdout
    assert '=> pool "app", server "b"' in done.stdout
    assert "as the config starts them" not in done.stdout

    # the same, as JSON from the endpoint itself; and the offline answer differs
    ask = json.dumps({"request": "GET http://test.local/x"}).encode()
    live = json.loads(request(admin, "POST", "/api/explain", headers, ask).body)
    assert live["live"] is True
    assert live["server"] == "b"
    offline = json.loads(
        run_cli("explain", str(proxy.path), "GET http://test.local/x", "--json").stdout
    )
    assert offline["server"] == "a"


def test_the_debug_header_carries_the_short_form_to_trusted_clients_only(
    backends: MakeBackend, portico: MakePortico, tmp_path: Path
) -> None:
    a = backends("a")
    config = (
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    debug_header: X-Portico-Explain\n"
        "  - name: strict\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    debug_header: {name: X-Portico-Explain, trusted: [10.0.0.0/8]}\n"
        "pools:\n"
        "  app:\n"
        "    servers:\n" + pool_yaml([a])
    )
    proxy = portico(config)
    web, strict = proxy.ports
    seen = request(web, "GET", "/x")
    assert seen.status == 200
    header = seen.header("x-portico-explain")
    assert header == (
        "listener=web; route=default; pool=app; policy=round_robin; candidates=1/1; "
        f"server={a.name}; attempt=1"
    )
    assert request(strict, "GET", "/x").header("x-portico-explain") is None

    # `portico explain` predicts the very same line
    explained = json.loads(
        run_cli("explain", str(proxy.path), "GET /x", "-H", "Host: test.local", "--json").stdout
    )
    assert explained["short"] == header


def test_the_debug_header_counts_the_attempt_after_a_refused_connect(
    backends: MakeBackend, portico: MakePortico
) -> None:
    live = backends("live")
    with socket.socket() as dead:  # bound, never listening: connecting is refused
        dead.bind(("127.0.0.1", 0))
        config = simple_config(
            [live],
            extra_pool="    retries: 1\n",
            extra_listener="    debug_header: X-Portico-Explain\n",
        )
        entry = f"      - address: 127.0.0.1:{dead.getsockname()[1]}\n        name: dead\n"
        config = config.replace("    servers:\n", "    servers:\n" + entry)
        proxy = portico(config)
        # round robin starts at the dead server: refused, then retried on the live one
        seen = request(proxy.port, "GET", "/x")
    assert seen.status == 200
    assert seen.header("x-portico-explain") == (
        "listener=web; route=default; pool=app; policy=round_robin; candidates=2/2; "
        "server=live; attempt=2"
    )
