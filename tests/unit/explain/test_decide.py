"""explain(): each step's verdict comes from the production objects, with the reason beside it."""

from __future__ import annotations

import random

import pytest
import trustme

from portico.config.load import parse_config
from portico.config.schema import Config
from portico.explain import ServerLive, explain, parse_request, render_text
from portico.routing import Router
from tests.unit.tls.pki import write_leaf

SHOP = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: shop
    rate_limit: {rate: 50/s, burst: 100, key: "header:X-Api-Key"}
    routes:
      - name: video
        match: {host: video.example.com}
        pool: video
      - name: beta-cart
        match:
          host: shop.example.com
          path: /cart
          cookies: {beta: "1"}
        pool: beta
        request_headers: {set: {X-Beta: "yes"}}
      - name: cart
        match: {host: shop.example.com, path: /cart, method: [GET, HEAD]}
        pool: shop
        strip_prefix: /cart
        replace_prefix: /basket
      - name: old
        match: {path: /old/}
        redirect: {status: 301, to: "https://{host}/new{query}"}
      - name: down
        match: {path_exact: /maintenance}
        respond: {status: 503, body: "back soon"}
  - name: secure
    bind: 127.0.0.1:8443
    protocol: https
    default_pool: shop
    tls: {certificates: [{cert: CERT, key: KEY}]}
  - name: plain-redirect
    bind: 127.0.0.1:8081
    default_pool: shop
    redirect_https: true
pools:
  shop:
    policy: least_conn
    max_conns: 10
    slow_start: 60s
    servers:
      - {address: 10.0.0.1:80, name: s1}
      - {address: 10.0.0.2:80, name: s2, weight: 2}
      - {address: 10.0.0.3:80, name: s3}
  beta:
    policy: p2c_ewma
    fallback_pool: shop
    servers:
      - {address: 10.0.1.1:80, name: b1}
      - {address: 10.0.1.2:80, name: b2}
  video:
    policy: consistent_hash
    hash_key: cookie:session
    servers:
      - {address: 10.0.2.1:80, name: v1}
      - {address: 10.0.2.2:80, name: v2}
      - {address: 10.0.2.3:80, name: v3}
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Config:
    # a real certificate: the config loads the files of an https listener
    leaf = trustme.CA().issue_cert("shop.example.com")
    pair = write_leaf(tmp_path_factory.mktemp("pki"), "shop", leaf)
    text = SHOP.replace("CERT", str(pair.cert)).replace("KEY", str(pair.key))
    return parse_config(text, "shop.yaml")


def ask(config: Config, line: str, *headers: str, **kw: object) -> object:
    return explain(config, parse_request(line, headers), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The listener


def test_the_url_scheme_and_port_choose_the_listener(shop: Config) -> None:
    assert ask(shop, "GET https://shop.example.com/").listener.name == "secure"  # type: ignore[attr-defined]
    by_port = ask(shop, "GET http://shop.example.com:8081/")
    assert by_port.listener.name == "plain-redirect"  # type: ignore[attr-defined]
    assert "port 8081" in by_port.listener.reason  # type: ignore[attr-defined]


def test_a_listener_that_redirects_to_https_answers_before_any_route(shop: Config) -> None:
    e = explain(
        shop, parse_request("GET http://shop.example.com/cart?x=1"), listener="plain-redirect"
    )
    assert e.filters[0].name == "redirect_https"
    assert e.answer == "308 redirect to https://shop.example.com/cart?x=1"
    assert e.routes == []
    assert e.pool is None
    assert e.server is None


def test_an_unknown_listener_is_refused_by_name(shop: Config) -> None:
    with pytest.raises(ValueError, match='no HTTP listener named "nope"'):
        explain(shop, parse_request("GET /"), listener="nope")


# ---------------------------------------------------------------------------------------------
# Filters


def test_the_rate_limit_shows_its_key_and_the_burst_a_fresh_client_has(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://shop.example.com/", ["X-Api-Key: k1"]))
    step = e.filters[0]
    assert (step.name, step.verdict) == ("rate_limit", "pass")
    assert "header:X-Api-Key = 'k1'" in step.detail
    assert "99 left in its burst" in step.detail


# ---------------------------------------------------------------------------------------------
# Routes


def test_each_route_before_the_match_names_the_condition_that_failed(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://shop.example.com/cart?x=1", ["Cookie: a=2"]))
    assert [(r.name, r.matched) for r in e.routes] == [
        ("video", False),
        ("beta-cart", False),
        ("cart", True),
    ]
    beta = e.routes[1]
    assert [(c.condition, c.holds) for c in beta.conditions] == [
        ("host is shop.example.com", True),
        ('path starts with "/cart"', True),
        ('cookie beta is "1"', False),
    ]
    assert beta.reason == 'cookie beta is "1": no, cookie beta is absent'
    assert e.routes[0].reason == 'host is video.example.com: no, host is "shop.example.com"'
    assert e.route == "cart"
    assert e.pool == "shop"


def test_the_route_taken_is_the_production_routers_choice(shop: Config) -> None:
    """Over many random requests, the explained route is the one Router.match takes."""
    listener = shop.listeners[0]
    router = Router.compile(listener.routes, listener.default_pool)
    rng = random.Random(7)
    for _ in range(300):
        host = rng.choice(["shop.example.com", "video.example.com", "SHOP.example.com:80", "x"])
        path = rng.choice(["/cart", "/cart/1", "/cartx", "/old/a", "/maintenance", "/", "/c"])
        method = rng.choice(["GET", "HEAD", "POST"])
        cookie = rng.choice(["beta=1", "beta=2", "a=1; beta=1", ""])
        headers = [f"Host: {host}"] + ([f"Cookie: {cookie}"] if cookie else [])
        sample = parse_request(f"{method} {path}", headers)
        e = explain(shop, sample, listener="web")
        expected = router.match(sample.method, sample.target, sample.host, sample.headers)
        assert e.route == expected.name, (method, host, path, cookie)
        matched = [r for r in e.routes if r.matched]
        assert len(matched) == 1
        assert matched[0] is e.routes[-1]
        for step in e.routes[:-1]:
            assert any(not c.holds for c in step.conditions), step


def test_a_method_condition_reports_the_method_sent(shop: Config) -> None:
    e = explain(shop, parse_request("POST http://shop.example.com/cart"))
    cart = next(r for r in e.routes if r.name == "cart")
    assert cart.reason == "method is GET or HEAD: no, method is POST"
    assert e.route == "default"
    assert e.routes[-1].reason == "no route matched: the listener's default_pool"


def test_a_redirect_route_answers_with_the_location_it_would_send(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://a.example.com/old/x?q=1"))
    assert e.route == "old"
    assert e.answer == "301 redirect to https://a.example.com/new?q=1"
    assert e.pools == []
    assert e.server is None


def test_a_respond_route_answers_with_its_status_and_body(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://a.example.com/maintenance"))
    assert e.answer == "503 from the route itself: 'back soon'"


def test_the_upstream_target_and_header_edits_of_the_route_are_shown(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://shop.example.com/cart/7?x=1"))
    assert e.upstream_target == "/basket/7?x=1"
    beta = explain(shop, parse_request("GET http://shop.example.com/cart", ["Cookie: beta=1"]))
    assert beta.request_headers == ["add X-Beta: yes"]


# ---------------------------------------------------------------------------------------------
# The pool and its servers


def test_every_server_says_why_it_is_or_is_not_a_candidate(shop: Config) -> None:
    state = {
        ("shop", "s1"): ServerLive(in_flight=10),
        ("shop", "s3"): ServerLive(state="drain"),
    }
    e = explain(shop, parse_request("GET http://shop.example.com/cart"), state=state)
    servers = {s.name: s for s in e.pools[0].servers}
    assert not servers["s1"].candidate
    assert servers["s1"].reasons == ["at max_conns (10 in flight, max 10)"]
    assert servers["s2"].candidate
    assert servers["s2"].chosen
    assert not servers["s3"].candidate
    assert servers["s3"].reasons[0].startswith("draining")
    assert e.server == "s2"


def test_down_and_ejected_servers_are_not_candidates(shop: Config) -> None:
    state = {
        ("shop", "s1"): ServerLive(up=False, detail="HTTP 500"),
        ("shop", "s2"): ServerLive(ejected_by=2),
    }
    e = explain(shop, parse_request("GET http://shop.example.com/"), state=state)
    servers = {s.name: s for s in e.pools[0].servers}
    assert servers["s1"].reasons == ["down by active health checks: HTTP 500"]
    assert servers["s2"].reasons == [
        "ejected by outlier detection in 2 worker(s) (consecutive failures)"
    ]
    assert e.server == "s3"
    assert e.short.endswith("candidates=1/3; server=s3; attempt=1")


def test_least_conn_scores_are_in_flight_per_weight(shop: Config) -> None:
    state = {("shop", "s1"): ServerLive(in_flight=1), ("shop", "s2"): ServerLive(in_flight=4)}
    e = explain(shop, parse_request("GET http://shop.example.com/"), state=state)
    pool = e.pools[0]
    assert pool.score == "in_flight / weight"
    assert {s.name: s.score for s in pool.servers} == {"s1": 1.0, "s2": 2.0, "s3": 0.0}
    assert e.server == "s3"


def test_slow_start_shows_the_share_a_returning_server_keeps(shop: Config) -> None:
    state = {("shop", "s3"): ServerLive(back_for=15.0)}
    e = explain(shop, parse_request("GET http://shop.example.com/"), state=state, now=100.0)
    s3 = next(s for s in e.pools[0].servers if s.name == "s3")
    assert s3.candidate
    assert s3.reasons == ["slow start: keeps 32% of its picks (15s of 60s)"]


def test_p2c_chances_are_the_policys_own_verdict_over_every_pair(shop: Config) -> None:
    state = {("beta", "b2"): ServerLive(in_flight=3)}
    e = explain(
        shop, parse_request("GET http://shop.example.com/cart", ["Cookie: beta=1"]), state=state
    )
    pool = e.pools[0]
    chances = {s.name: s.chance for s in pool.servers}
    # two candidates: every draw pairs them, and the idle one (cost 0) always wins
    assert chances == {"b1": 1.0, "b2": 0.0}
    assert e.server == "b1"


def test_a_pool_with_no_fit_server_falls_back_once(shop: Config) -> None:
    state = {("beta", "b1"): ServerLive(up=False), ("beta", "b2"): ServerLive(state="maint")}
    e = explain(
        shop, parse_request("GET http://shop.example.com/cart", ["Cookie: beta=1"]), state=state
    )
    assert [p.name for p in e.pools] == ["beta", "shop"]
    assert e.pools[0].outcome == 'no server is fit for traffic: fallback to pool "shop"'
    assert e.pool == "shop"
    assert e.server is not None


def test_every_server_at_max_conns_means_the_queue_or_503(shop: Config) -> None:
    state = {("shop", s): ServerLive(in_flight=10) for s in ("s1", "s2", "s3")}
    e = explain(shop, parse_request("GET http://shop.example.com/"), state=state)
    assert e.server is None
    assert e.pools[0].outcome == "every fit server is at max_conns (10) and there is no queue: 503"


def test_a_hash_policy_shows_its_key_and_keeps_a_key_on_one_server(shop: Config) -> None:
    first = explain(shop, parse_request("GET http://video.example.com/", ["Cookie: session=abc"]))
    assert first.pools[0].key == "cookie:session = 'abc'"
    again = explain(shop, parse_request("GET http://video.example.com/x", ["Cookie: session=abc"]))
    assert first.server == again.server is not None


def test_offline_explanations_say_what_they_assume(shop: Config) -> None:
    e = explain(shop, parse_request("GET http://shop.example.com/"))
    assert not e.live
    assert any("as the config starts them" in note for note in e.notes)


def test_the_text_form_shows_each_step(shop: Config) -> None:
    text = render_text(
        explain(shop, parse_request("GET http://shop.example.com/cart?x=1", ["Cookie: beta=2"]))
    )
    assert "1. listener web" in text
    assert 'no    [1] beta-cart -> pool "beta"' in text
    assert 'cookie beta is "1": no, cookie beta is "2"' in text
    assert "MATCH [2] cart" in text
    assert '=> pool "shop", server "s1"' in text
    assert "debug header: listener=web; route=cart; pool=shop" in text


def test_a_static_route_answers_from_its_files_or_falls_back(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("www")
    (root / "app.js").write_text("1")
    config = parse_config(
        f"""
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: app
    routes:
      - name: files
        match: {{path: /s/}}
        strip_prefix: /s
        static: {{root: {root}}}
      - name: spa
        static: {{root: {root}, try_files: fallback}}
        pool: app
pools:
  app:
    servers: [{{address: 10.0.0.1:80, name: a}}]
""",
        "t.yaml",
    )
    found = explain(config, parse_request("GET http://a.example.com/s/app.js"))
    assert found.answer == f"200 from the static files under {root}"
    assert found.pools == []
    missing = explain(config, parse_request("GET http://a.example.com/s/nope.js"))
    assert missing.answer == f"404 from the static files under {root}"
    fallback = explain(config, parse_request("GET http://a.example.com/app/route"))
    assert fallback.answer is None
    assert fallback.pool == "app"
    assert any("try_files falls back" in note for note in fallback.notes)
