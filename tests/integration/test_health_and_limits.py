"""End-to-end health checking: active checks, passive outlier ejection, slow start, fallback.

The real `portico run` in front of real `FakeBackend`s. A backend is killed with
`FakeBackend.stop()` (listener and connections closed, as when its process dies) and restarted
as a new `FakeBackend` on the same port. Active checks probe `/healthz`, so a backend tells
probes from traffic by the path. Verdicts are read from Portico's log ("server NAME of pool
POOL is DOWN/UP"), waited for as they arrive, never for a fixed time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import simple_config
from fakes import FakeBackend, Portico, Reply, ResponseReader, Seen, connect, pool_yaml, request

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

HEALTH_PATH = "/healthz"
ACTIVE = (
    "    health:\n"
    "      active:\n"
    "        interval: 100ms\n"
    "        timeout: 100ms\n"
    "        fall: 2\n"
    "        rise: 2\n"
    "        http:\n"
    f"          path: {HEALTH_PATH}\n"
)
VERDICT_TIMEOUT = 5.0  # a verdict is due after 2 probes 100ms apart; this is only a bound


def down_line(server: str, pool: str = "app") -> str:
    return f"server {server} of pool {pool} is DOWN"


def up_line(server: str, pool: str = "app") -> str:
    return f"server {server} of pool {pool} is UP"


def traffic(backend: FakeBackend) -> list[Seen]:
    """The requests a backend got from clients, health probes left out."""
    return [s for s in backend.seen if s.target != HEALTH_PATH]


@dataclass
class Outcome:
    """One request of the load: when it was sent and what came back (status 0: nothing)."""

    sent: float  # time.monotonic()
    status: int
    backend: str | None
    error: str = ""


class Load:
    """Steady load: `clients` threads, each sending GETs one after another on its own
    keep-alive connection to Portico until stopped (at most `limit` each). Every outcome is
    kept, failures included; a connection that fails is replaced by a new one."""

    def __init__(self, port: int, clients: int = 3, limit: int = 20_000) -> None:
        self.port = port
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return list(self.outcomes)

    def wait_count(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until `count` requests have been answered (or have failed)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.outcomes) >= count, timeout)

    def wait_sent_after(self, moment: float, timeout: float = 10.0) -> bool:
        """Wait until a request sent at or after `moment` (time.monotonic()) has come back."""
        with self._changed:
            return self._changed.wait_for(
                lambda: bool(self.outcomes) and self.outcomes[-1].sent >= moment, timeout
            )

    def _record(self, outcome: Outcome) -> None:
        with self._changed:
            self.outcomes.append(outcome)
            self._changed.notify_all()

    def _run(self, client: int) -> None:
        sent = 0
        while not self._stop.is_set() and sent < self.limit:
            try:
                sock = connect(self.port, timeout=5.0)
            except OSError as exc:
                self._record(Outcome(time.monotonic(), 0, None, f"connect: {exc!r}"))
                continue
            with sock:
                reader = ResponseReader(sock)
                while not self._stop.is_set() and sent < self.limit:
                    at = time.monotonic()
                    sent += 1
                    try:
                        sock.sendall(
                            b"GET /work/%d/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (client, sent)
                        )
                        response = reader.read()
                    except (OSError, EOFError) as exc:
                        self._record(Outcome(at, 0, None, repr(exc)))
                        break
                    self._record(Outcome(at, response.status, response.header("X-Backend")))
                    if (response.header("Connection") or "").lower() == "close":
                        break


def shares(outcomes: list[Outcome]) -> Counter[str | None]:
    return Counter(o.backend for o in outcomes)


# -- active checks: a backend dies under load, comes back, ramps up ------------------------------


def test_backend_killed_under_load_is_marked_down_and_clients_see_no_failure(
    backends: MakeBackend, portico: MakePortico
) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(simple_config(pool, extra_pool=ACTIVE))  # passive checks on (the default)
    with Load(proxy.port) as load:
        assert load.wait_count(150), "no steady load through Portico"
        mark = len(proxy.stderr_lines)
        kill_started = time.monotonic()
        pool[2].stop()
        killed = time.monotonic()
        down_at = proxy.wait_for_stderr(down_line("b2"), VERDICT_TIMEOUT, start=mark)
        assert down_at is not None, "".join(proxy.stderr_lines)
        answered = len(load.outcomes)
        assert load.wait_count(answered + 300)
    outcomes = load.outcomes
    print(f"\n[kill -> DOWN] {down_at - killed:.3f}s (interval 100ms, timeout 100ms, fall 2)")

    assert [o for o in outcomes if o.status != 200] == []  # zero failed requests
    before = [o for o in outcomes if o.sent < kill_started]
    after = [o for o in outcomes if o.sent >= killed]
    assert set(shares(before)) == {"b0", "b1", "b2"}  # b2 had its share until it died
    after_shares = shares(after)
    assert set(after_shares) == {"b0", "b1"}  # the two others absorb everything
    assert min(after_shares.values()) > 0.3 * len(after)  # ... evenly
    assert len(after) >= 300
    assert down_at - killed < 1.0  # detected within a few intervals, not seconds
    assert proxy.proc.poll() is None


def test_restarted_backend_gets_traffic_only_after_rise_checks_and_ramps_up_under_slow_start(
    backends: MakeBackend, portico: MakePortico
) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    # probes 300ms apart with a 300ms timeout: this test is about b2's return, and the healthy
    # b0 and b1 answer their probes from the test's own process, busy with the load's threads;
    # with 100ms a loaded CI host most likely timed out two in a row of both (819 answers 503)
    active = ACTIVE.replace("interval: 100ms", "interval: 300ms").replace(
        "timeout: 100ms", "timeout: 300ms"
    )
    extra = active + "      passive:\n        enabled: false\n" + "    slow_start: 2s\n"
    proxy = portico(simple_config(pool, extra_pool=extra))
    port = pool[2].port
    mark = len(proxy.stderr_lines)
    pool[2].stop()
    assert proxy.wait_for_stderr(down_line("b2"), VERDICT_TIMEOUT, start=mark) is not None

    with Load(proxy.port) as load:
        assert load.wait_count(60)
        mark = len(proxy.stderr_lines)
        with FakeBackend("b2", port=port) as revived:
            restarted = time.monotonic()
            up_at = proxy.wait_for_stderr(up_line("b2"), VERDICT_TIMEOUT, start=mark)
            assert up_at is not None, "".join(proxy.stderr_lines)
            # the ramp is 2s long: look at the share early in it and once it is over
            assert load.wait_sent_after(up_at + 2.8)
            outcomes = load.stop()
    print(f"\n[restart -> UP] {up_at - restarted:.3f}s (interval 300ms, rise 2)")

    verdicts = [line for line in proxy.stderr_lines if " is DOWN" in line or " is UP" in line]
    assert [o for o in outcomes if o.status != 200] == [], verdicts
    # no request before `rise` successful probes: the first client request came after 2 probes
    targets = [s.target for s in revived.seen]
    first = next(i for i, t in enumerate(targets) if t != HEALTH_PATH)
    assert first >= 2, targets[: first + 1]

    early = [o for o in outcomes if up_at <= o.sent < up_at + 0.3]
    late = [o for o in outcomes if up_at + 2.2 <= o.sent < up_at + 2.8]
    assert len(early) >= 30, len(early)  # enough requests for a share to mean something
    assert len(late) >= 30, len(late)
    early_share = shares(early)["b2"] / len(early)
    late_share = shares(late)["b2"] / len(late)
    print(f"[slow start] b2 share: first 300ms {early_share:.3f}, after the ramp {late_share:.3f}")
    assert early_share < 0.2  # well below a third while ramping up from 10%
    assert late_share > 0.25  # about a third once the ramp is over


def test_backend_ejected_by_passive_checks_gets_traffic_again_once_active_checks_see_it_up(
    backends: MakeBackend, portico: MakePortico
) -> None:
    # Under load, the killed backend is ejected by passive checks (connect failures, 30s
    # default ejection) before active checks mark it DOWN; when it is back and active checks say
    # UP, it must get traffic again, not sit out the ejection (Envoy's default,
    # successful_active_health_check_uneject_host; HAProxy brings it back on `rise`).
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(simple_config(pool, extra_pool=ACTIVE))
    port = pool[2].port
    got_traffic = threading.Event()

    def revived_handler(seen: Seen) -> Reply:
        if seen.target != HEALTH_PATH:
            got_traffic.set()
        return Reply(body=b"b2")

    with Load(proxy.port) as load:
        assert load.wait_count(150)
        mark = len(proxy.stderr_lines)
        pool[2].stop()
        assert proxy.wait_for_stderr(down_line("b2"), VERDICT_TIMEOUT, start=mark) is not None
        mark = len(proxy.stderr_lines)
        with FakeBackend("b2", revived_handler, port=port):
            up_at = proxy.wait_for_stderr(up_line("b2"), VERDICT_TIMEOUT, start=mark)
            assert up_at is not None
            back = got_traffic.wait(timeout=2.0)
            load.stop()
    assert back, "b2 is UP by active checks but got no request within 2s"


# -- active checks that fail: all down, fallback, misbehaving health endpoints --------------------


def failing_health(seen: Seen) -> Reply:
    """Healthy for traffic, failing its health checks: only probes can take it out."""
    if seen.target == HEALTH_PATH:
        return Reply(status=503, reason="Service Unavailable")
    return Reply(body=b"served")


def test_pool_with_every_server_down_answers_503_at_once_with_retry_after(
    backends: MakeBackend, portico: MakePortico
) -> None:
    pool = [backends(f"b{i}", failing_health) for i in range(2)]
    proxy = portico(simple_config(pool, extra_pool=ACTIVE))
    for backend in pool:
        assert proxy.wait_for_stderr(down_line(backend.name), VERDICT_TIMEOUT) is not None

    started = time.monotonic()
    response = request(proxy.port, target="/work")
    elapsed = time.monotonic() - started
    assert response.status == 503
    assert int(response.header("Retry-After") or "0") >= 1
    assert elapsed < 0.5  # refused at once, not after trying servers known to be down
    assert [traffic(b) for b in pool] == [[], []]


def test_pool_with_every_server_down_sends_requests_to_its_fallback_pool(
    backends: MakeBackend, portico: MakePortico
) -> None:
    pool = [backends(f"b{i}", failing_health) for i in range(2)]
    spare = backends("spare")
    config = simple_config(pool, extra_pool=ACTIVE + "    fallback_pool: spare\n")
    config += "  spare:\n    servers:\n" + pool_yaml([spare])
    proxy = portico(config)
    for backend in pool:
        assert proxy.wait_for_stderr(down_line(backend.name), VERDICT_TIMEOUT) is not None

    answers = [request(proxy.port, target=f"/work/{i}") for i in range(3)]
    assert [(r.status, r.header("X-Backend")) for r in answers] == [(200, "spare")] * 3
    assert [s.target for s in spare.seen] == ["/work/0", "/work/1", "/work/2"]
    assert [traffic(b) for b in pool] == [[], []]


@pytest.mark.parametrize(
    ("misbehaviour", "reply", "detail"),
    [
        ("garbage", Reply(raw=b"this is not HTTP\r\n\r\n"), "malformed response"),
        ("hang", Reply(action="hang"), "timed out"),
        ("close", Reply(action="close"), "closed before a response"),
    ],
)
def test_health_endpoint_that_misbehaves_takes_its_server_down_and_others_keep_serving(
    backends: MakeBackend, portico: MakePortico, misbehaviour: str, reply: Reply, detail: str
) -> None:
    def handler(seen: Seen) -> Reply:
        return reply if seen.target == HEALTH_PATH else Reply(body=b"bad")

    bad = backends("bad", handler)
    good = backends("good")
    proxy = portico(simple_config([bad, good], extra_pool=ACTIVE))
    assert proxy.wait_for_stderr(down_line("bad"), VERDICT_TIMEOUT) is not None
    line = next(x for x in proxy.stderr_lines if down_line("bad") in x)
    assert detail in line, line
    assert sum(s.target == HEALTH_PATH for s in bad.seen) >= 2  # fall: 2

    answers = [request(proxy.port, target=f"/work/{i}") for i in range(10)]
    assert [(r.status, r.header("X-Backend")) for r in answers] == [(200, "good")] * 10
    assert traffic(bad) == []
    assert not any(down_line("good") in x for x in proxy.stderr_lines)
    assert proxy.proc.poll() is None  # nothing crashed
    assert proxy.stop() == 0  # and the supervisor still answers: a clean stop


# -- passive checks: outlier ejection on real traffic ---------------------------------------------

PASSIVE = (
    "    health:\n"
    "      passive:\n"
    "        consecutive_failures: 3\n"
    "        base_ejection_time: 500ms\n"
    "        max_ejection_percent: 50\n"
)


def answers_500(seen: Seen) -> Reply:
    return Reply(status=500, reason="Internal Server Error", body=b"oops")


def test_backend_answering_500_is_ejected_after_consecutive_failures_and_returns_later(
    backends: MakeBackend, portico: MakePortico
) -> None:
    bad = backends("bad", answers_500)
    good = backends("good")
    proxy = portico(simple_config([bad, good], extra_pool=PASSIVE))
    for _ in range(10):
        if len(bad.seen) >= 3:
            break
        request(proxy.port)
    assert len(bad.seen) == 3
    ejected_at = time.monotonic()

    answers = [request(proxy.port) for _ in range(10)]
    during = time.monotonic() - ejected_at
    assert during < 0.4  # the check below is only meaningful inside the 500ms ejection
    assert [(r.status, r.header("X-Backend")) for r in answers] == [(200, "good")] * 10
    assert len(bad.seen) == 3  # ejected: no traffic

    # back after its ejection time: real traffic is the probe (a poll bounded by a deadline,
    # each round a real request)
    deadline = ejected_at + 5.0
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        while len(bad.seen) == 3 and time.monotonic() < deadline:
            sock.sendall(b"GET /poll HTTP/1.1\r\nHost: t\r\n\r\n")
            reader.read()
    back_after = time.monotonic() - ejected_at
    assert len(bad.seen) == 4, "never got traffic again"
    assert back_after >= 0.45  # not before its 500ms ejection ended


def test_ejection_is_capped_by_max_ejection_percent_so_a_failing_pool_still_answers(
    backends: MakeBackend, portico: MakePortico
) -> None:
    pool = [backends(f"b{i}", answers_500) for i in range(2)]
    proxy = portico(simple_config(pool, extra_pool=PASSIVE))
    answers = [request(proxy.port) for _ in range(20)]
    # every answer is a backend's own 500, never Portico's 503 for "no server left"
    assert [r.status for r in answers] == [500] * 20
    assert all(r.header("X-Backend") in ("b0", "b1") for r in answers)
    # one server was ejected after its 3 failures; the other, over the 50% cap, kept serving
    assert len({r.header("X-Backend") for r in answers[-10:]}) == 1


# -- bad input: portico check -----------------------------------------------------------------

CHECK_BASE = """workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
{listener}pools:
  app:
{pool}    servers:
      - address: 127.0.0.1:9
"""


@pytest.mark.parametrize(
    ("listener", "pool", "marker", "path", "message"),
    [
        (
            "",
            "    health:\n      active:\n        rise: 0\n",
            "rise: 0",
            "pools.app.health.active.rise",
            "must be from 1 to 100, not 0",
        ),
        (
            "",
            "    health:\n      active:\n        interval: 100ms\n        timeout: 200ms\n",
            "timeout: 200ms",
            "pools.app.health.active.timeout",
            "must not be longer than interval",
        ),
        (
            "",
            "    queue:\n      size: 10\n",
            "queue:",
            "pools.app.queue",
            "a queue needs a timeout",
        ),
        (
            "",
            "    fallback_pool: nowhere\n",
            "fallback_pool: nowhere",
            "pools.app.fallback_pool",
            'no pool named "nowhere"',
        ),
        (
            "    rate_limit:\n      rate: ten/s\n",
            "",
            "rate: ten/s",
            "listeners[0].rate_limit.rate",
            '"ten/s" is not a rate',
        ),
    ],
    ids=["rise-0", "timeout-over-interval", "queue-without-timeout", "unknown-fallback", "rate"],
)
def test_check_refuses_bad_health_and_limit_settings_with_key_path_and_line(
    tmp_path: Path, listener: str, pool: str, marker: str, path: str, message: str
) -> None:
    text = CHECK_BASE.format(listener=listener, pool=pool)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if marker in x)
    (tmp_path / "portico.yaml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "portico", "check", "portico.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert f"portico.yaml:{line} {path}: " in result.stderr, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
