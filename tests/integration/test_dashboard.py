"""The live dashboard end to end: a real headless Chromium (Debian's, driven by Playwright's
Python API) against the real `portico run`, its admin listener and three FakeBackends.

The page polls the admin API and /metrics every second and workers report once a second, so
every check waits for what it expects to see (Playwright's auto-waiting, `expect`,
`wait_for_function`), bounded, never for a fixed time. Chromium is Debian's package
(`scripts/test` installs it); Playwright's own browser download is never used. The screenshot
of a drained server under load goes to tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import simple_config
from fakes import FakeBackend, Portico, Reply, ResponseReader, Seen, request
from redis_server import RedisServer, redis_server_binary

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as the machine notes say: no sandbox (root), no GPU, and nothing that calls home (the network
# is closed here, and Chromium retries refused connections many at a time)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "dashboard-test-token"
ADMIN = f"admin:\n  bind: 127.0.0.1:0\n  token: {TOKEN}\n"
WAIT = 10.0  # seconds: a bound on a snapshot (every second) or a change reaching the page
WAIT_MS = WAIT * 1000
UNKNOWN = "\N{EN DASH}"  # what the page shows for a value it does not know yet


def admin_port(proxy: Portico) -> int:
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, f"no admin address in the ready line: {proxy.ready_line!r}"
    return int(found.group(1))


def server_state(proxy: Portico, server: str, token: str | None = TOKEN) -> str:
    """The admin state of a server of pool "app", as the JSON API shows it."""
    port = admin_port(proxy)
    headers = {"Host": f"127.0.0.1:{port}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    reply = request(port, "GET", "/api/pools/app", headers=headers)
    assert reply.status == 200, reply.body
    [found] = [s for s in json.loads(reply.body)["servers"] if s["name"] == server]
    return str(found["state"])


class Load:
    """Requests through the proxy from a background thread, one at a time, until the block
    ends (or `limit` requests): bounded in count and time."""

    def __init__(self, port: int, limit: int = 20_000) -> None:
        self.port = port
        self.limit = limit
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < self.limit:
            try:
                status = request(self.port, target="/load").status
                self.statuses[status] = self.statuses.get(status, 0) + 1
            except OSError as exc:
                self.errors.append(exc)
            self.sent += 1
            # pacing, not synchronisation: a steady ~150 requests a second leaves the two
            # cores to the proxy and the browser
            self._stop.wait(0.005)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)
        assert not self._thread.is_alive(), "the load thread did not stop"


def wait_until_out_of_rotation(proxy: Portico, backend: FakeBackend) -> None:
    """Send requests until a burst of 12 in a row reaches nothing at `backend` (the worker hears
    of a state change over its channel, a moment after the API answered)."""
    deadline = time.monotonic() + WAIT
    while True:
        before = len(backend.heads)
        for _ in range(12):
            assert request(proxy.port).status == 200
        if len(backend.heads) == before:
            return
        assert time.monotonic() < deadline, f"{backend.name} still gets requests"


def wait_until_in_rotation(proxy: Portico, backend: FakeBackend) -> None:
    deadline = time.monotonic() + WAIT
    before = len(backend.heads)
    while len(backend.heads) == before:
        assert request(proxy.port).status == 200
        assert time.monotonic() < deadline, f"{backend.name} gets no requests"


def has_rate_above_zero(page: Page, selector: str) -> None:
    """Wait until the element at `selector` shows a request rate above zero."""
    page.wait_for_function(
        """selector => {
            const el = document.querySelector(selector);
            return el !== null && Number(el.dataset.value) > 0
                && /^[0-9.,k]+$/.test(el.textContent) && el.textContent !== "0";
        }""",
        arg=selector,
        timeout=WAIT_MS,
    )


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium (its own --user-data-dir, via a persistent context);
    uncaught script errors fail the test."""
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (no chromium on PATH): scripts/test installs "
            "it with apt-get when run as root; Playwright's own browser download is not used"
        )
    errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 760},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            context.close()
    assert errors == [], f"the page raised: {errors}"


def test_the_dashboard_shows_live_traffic_and_drains_and_re_enables_a_server(
    backends: MakeBackend, portico: MakePortico, page: Page
) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    proxy = portico(simple_config([a, b, c], top=ADMIN))
    page.goto(f"http://127.0.0.1:{admin_port(proxy)}/")

    # the API needs a token: the page asks for it once
    form = page.locator("#token-form")
    expect(form).to_be_visible()
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(form).to_be_hidden()

    pool = page.locator('section[data-pool="app"]')
    rows = pool.locator("tr.server")
    expect(rows).to_have_count(3)
    for name, backend in (("a", a), ("b", b), ("c", c)):
        row = pool.locator(f'tr[data-server="{name}"]')
        expect(row.locator('[data-field="address"]')).to_have_text(backend.address)
        expect(row.locator(".chip")).to_have_text("up")
        expect(row.get_by_role("button", name="Ready")).to_have_attribute("aria-pressed", "true")

    row_b = pool.locator('tr[data-server="b"]')
    with Load(proxy.port) as load:
        # under load the numbers move: the pool, the totals and every server show a rate
        has_rate_above_zero(page, '[data-pool="app"] .pool-stats [data-field="rate"]')
        has_rate_above_zero(page, "#total-rate")
        for name in "abc":
            has_rate_above_zero(page, f'tr[data-server="{name}"] [data-field="rate"]')
        expect(pool.locator('[data-field="p50"]')).not_to_have_text(UNKNOWN)
        # requests to a server on loopback take well under 5 ms: the quantiles are values
        # (buckets from 100 µs), not "< 5 ms"; bodiless GETs still bring bytes in (their heads)
        expect(page.locator("#total-quantiles")).to_have_text(
            re.compile(r"^p50 \d[\d.]* (µs|ms|s) · p99 ")
        )
        expect(page.locator("#total-bandwidth")).not_to_have_text(re.compile(r"^in 0 B/s"))

        # drain b from the page: the API shows it, and the proxy stops sending it requests
        row_b.get_by_role("button", name="Drain").click()
        expect(row_b.get_by_role("button", name="Drain")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#toast")).to_contain_text("b (app) is draining")
        assert server_state(proxy, "b") == "drain"
        wait_until_out_of_rotation(proxy, b)
        reached_b, reached_a = len(b.heads), len(a.heads)
        for _ in range(30):
            assert request(proxy.port).status == 200
        expect(pool.locator('[data-field="up"]')).to_have_text("2 of 3 in rotation")
        expect(row_b.locator('[data-field="rate"]')).to_have_text("0", timeout=WAIT_MS)
        expect(row_b.locator('[data-field="share"]')).to_have_text("0%")
        assert len(b.heads) == reached_b, "a drained server got a request"
        assert len(a.heads) > reached_a
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # re-enable it: back in rotation, and the page shows its traffic again
        row_b.get_by_role("button", name="Ready").click()
        expect(row_b.get_by_role("button", name="Ready")).to_have_attribute("aria-pressed", "true")
        assert server_state(proxy, "b") == "ready"
        wait_until_in_rotation(proxy, b)
        has_rate_above_zero(page, 'tr[data-server="b"] [data-field="rate"]')
        expect(pool.locator('[data-field="up"]')).to_have_text("3 of 3 in rotation")

    assert load.errors == []
    assert set(load.statuses) == {200}
    assert load.sent > 0


def test_the_token_can_come_from_the_url_fragment(
    backends: MakeBackend, portico: MakePortico, page: Page
) -> None:
    proxy = portico(simple_config([backends("a"), backends("b"), backends("c")], top=ADMIN))
    base = f"http://127.0.0.1:{admin_port(proxy)}/"
    page.goto(f"{base}#token={TOKEN}")
    expect(page.locator("tr.server")).to_have_count(3)
    expect(page.locator("#token-form")).to_be_hidden()
    # kept for the tab, and gone from the address bar (a fragment is never sent anyway)
    expect(page).to_have_url(base)
    stored: Any = page.evaluate("sessionStorage.getItem('portico.admin-token')")
    assert stored == TOKEN
    page.reload()
    expect(page.locator("tr.server")).to_have_count(3)
    expect(page.locator("#token-form")).to_be_hidden()


def test_the_dashboard_works_without_a_token(
    backends: MakeBackend, portico: MakePortico, page: Page
) -> None:
    top = "admin:\n  bind: 127.0.0.1:0\n"
    proxy = portico(simple_config([backends("a"), backends("b"), backends("c")], top=top))
    page.goto(f"http://127.0.0.1:{admin_port(proxy)}/")
    expect(page.locator("tr.server")).to_have_count(3)
    expect(page.locator("#token-form")).to_be_hidden()
    row_c = page.locator('tr[data-server="c"]')
    row_c.get_by_role("button", name="Maint").click()
    expect(row_c.get_by_role("button", name="Maint")).to_have_attribute("aria-pressed", "true")
    assert server_state(proxy, "c", token=None) == "maint"
    expect(page.locator("#status")).to_contain_text("live")


def test_the_dashboard_shows_the_cache_hit_ratio_per_route(
    backends: MakeBackend, portico: MakePortico, page: Page
) -> None:
    origin = backends("a", lambda seen: Reply(200, [("Cache-Control", "max-age=600")], b"x"))
    top = "admin:\n  bind: 127.0.0.1:0\n"
    routes = (
        "    routes:\n      - name: cached\n        match: {path_prefix: /}\n"
        "        pool: app\n        cache: {}\n"
    )
    proxy = portico(simple_config([origin], top=top, extra_listener=routes))
    for _ in range(4):  # a miss, then three hits
        assert request(proxy.port, target="/page").status == 200
    page.goto(f"http://127.0.0.1:{admin_port(proxy)}/")
    row = page.locator('tr[data-route="web/cached"]')
    expect(row.locator("td").nth(1)).to_have_text("75.0%")
    expect(row.locator("td").nth(2)).to_have_text("3")
    expect(page.locator("#cache-size")).to_contain_text("responses stored: 1")


def test_the_dashboard_lists_the_live_instances_of_a_fleet(
    backends: MakeBackend, portico: MakePortico, page: Page, tmp_path: Path
) -> None:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed: scripts/test installs it when run as root")
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis", binary)
    redis.start()
    try:
        servers = [backends("a")]
        configs = [
            simple_config(servers, top=f"{ADMIN}state: {{redis: '{redis.url}', instance: {n}}}\n")
            for n in ("edge-1", "edge-2")
        ]
        first = portico(configs[0], filename="one.yaml")
        portico(configs[1], filename="two.yaml")
        page.goto(f"http://127.0.0.1:{admin_port(first)}/#token={TOKEN}")
        expect(page.locator("#fleet-card")).to_be_visible()
        expect(page.locator("#fleet tr")).to_have_count(2)
        expect(page.locator("#fleet tr.self th")).to_have_text("edge-1")
        expect(page.locator("#fleet")).to_contain_text("edge-2")
    finally:
        redis.stop()


def served_from(port: int, source: str, target: str = "/") -> int | None:
    """The status of one request from the loopback address `source`; None when the connection
    was closed without an answer (a banned address is closed at accept)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            return ResponseReader(sock).read().status
        except (OSError, AssertionError):
            return None


def test_the_dashboard_lists_bans_and_access_entries_and_lifts_them(
    backends: MakeBackend, portico: MakePortico, page: Page
) -> None:
    def handler(seen: Seen) -> Reply:
        return Reply(status=401 if seen.target == "/login" else 200, body=b"ok")

    bans = (
        "    bans: [{name: guessing, key: client_ip, status: 4xx, count: 2, window: 1m,"
        " duration: 1h}]\n"
    )
    proxy = portico(simple_config([backends("a", handler)], top=ADMIN, extra_listener=bans))
    page.goto(f"http://127.0.0.1:{admin_port(proxy)}/#token={TOKEN}")
    expect(page.locator("tr.server")).to_have_count(1)
    # nothing banned, nothing added: neither card shows
    expect(page.locator("#bans-card")).to_be_hidden()
    expect(page.locator("#access-card")).to_be_hidden()

    # three 401s from 127.0.0.5 (more than count: 2) ban it: closed at accept from then on
    client = "127.0.0.5"
    assert [served_from(proxy.port, client, "/login") for _ in range(3)] == [401] * 3
    deadline = time.monotonic() + WAIT
    while served_from(proxy.port, client) is not None:
        assert time.monotonic() < deadline, "the ban never took effect"
        time.sleep(0.02)
    assert served_from(proxy.port, "127.0.0.6") == 200  # another client is served

    row = page.locator(f'#bans tr[data-ban="{client}"]')
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(0)).to_have_text("web")
    expect(row.locator("td").nth(2)).to_have_text("guessing")
    expect(row.locator("td").nth(3)).to_have_text(re.compile(r"^(59m \d\ds|1h 00m)$"))
    expect(page.locator("#ban-counters")).to_contain_text(re.compile(r"^1 banned · "))
    ARTIFACTS.mkdir(exist_ok=True)

    # a run-time access entry shows too, and goes with its button
    port = admin_port(proxy)
    headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {TOKEN}"}
    added = request(
        port,
        "POST",
        "/api/access",
        headers={**headers, "Content-Type": "application/json"},
        body=json.dumps({"address": "203.0.113.0/24", "action": "deny", "ttl": "10m"}).encode(),
    )
    assert added.status == 201, added.body
    entry = page.locator('#access tr[data-network="203.0.113.0/24"]')
    expect(entry.locator("td").nth(0)).to_have_text("every listener")
    expect(entry.locator("td").nth(2)).to_have_text("deny")
    page.screenshot(path=str(ARTIFACTS / "dashboard-bans.png"), full_page=True)
    entry.get_by_role("button", name="Remove").click()
    expect(page.locator("#toast")).to_contain_text("Removed 203.0.113.0/24")
    expect(page.locator("#access-card")).to_be_hidden()
    assert json.loads(request(port, "GET", "/api/access", headers=headers).body) == []

    # lift the ban from the page: the row goes, the API agrees, and the client is served again
    row.get_by_role("button", name="Lift").click()
    expect(page.locator("#toast")).to_contain_text(f"Lifted the ban of {client} on web")
    expect(row).to_have_count(0)
    expect(page.locator("#bans-empty")).to_be_visible()  # the counters stay: the card too
    assert json.loads(request(port, "GET", "/api/bans", headers=headers).body) == []
    deadline = time.monotonic() + WAIT
    while served_from(proxy.port, client) != 200:
        assert time.monotonic() < deadline, "the lifted ban still refuses the client"
        time.sleep(0.02)
