"""Router.match: which route a request takes, first match wins, across every index bucket."""

import random
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

import pytest

from portico.config.routes import RouteConfig, ValueMatch
from portico.http.headers import Header
from portico.routing import Route, Router
from portico.routing.matchers import host_name
from tests.unit.routing.routes import router, routes

GET = b"GET"


def pool_of(r: Router, path: bytes, host: bytes | None = None, **kw: object) -> str | None:
    method = kw.pop("method", GET)
    headers = kw.pop("headers", [])
    assert isinstance(method, bytes)
    assert isinstance(headers, list)
    return r.match(method, path, host, headers).pool


# ---------------------------------------------------------------------------------------------
# The issue's example


@pytest.fixture
def video_billing() -> Router:
    return router(
        {"name": "video-path", "match": {"path": "/video/"}, "pool": "video"},
        {"name": "video-host", "match": {"host": "video.example.com"}, "pool": "video"},
        {"name": "billing", "match": {"path": "/billing/"}, "pool": "billing"},
    )


@pytest.mark.parametrize(
    ("path", "host", "pool"),
    [
        (b"/video/clip.mp4", b"www.example.com", "video"),
        (b"/video/", None, "video"),
        (b"/anything", b"video.example.com", "video"),
        (b"/billing/invoices?page=2", b"video.example.com", "video"),  # video-host comes first
        (b"/billing/invoices?page=2", b"www.example.com", "billing"),
        (b"/billing", b"www.example.com", "app"),  # the prefix is "/billing/"
        (b"/videos", b"www.example.com", "app"),
        (b"/", b"www.example.com", "app"),
        (b"*", None, "app"),
    ],
)
def test_issue_example_video_billing_app(
    video_billing: Router, path: bytes, host: bytes | None, pool: str
) -> None:
    assert pool_of(video_billing, path, host) == pool


def test_default_route_is_flagged_and_named(video_billing: Router) -> None:
    route = video_billing.match(GET, b"/x", b"a.com", [])
    assert route == Route("default", "app", None, None, default=True, index=-1)
    chosen = video_billing.match(GET, b"/billing/", b"a.com", [])
    assert (chosen.name, chosen.index, chosen.default, chosen.actions) == (
        "billing",
        2,
        False,
        None,
    )


def test_unnamed_routes_are_named_by_position() -> None:
    r = router({"match": {"path": "/a/"}, "pool": "a"}, {"match": {"path": "/b/"}, "pool": "b"})
    assert r.match(GET, b"/b/", None, []).name == "routes[1]"


def test_no_routes_is_always_the_default() -> None:
    r = Router.compile((), "app")
    assert r.match(GET, b"/x", b"h", []) is r.default


def test_empty_match_matches_everything() -> None:
    r = router({"pool": "all"})
    assert pool_of(r, b"*") == "all"
    assert pool_of(r, b"/x?y", b"a.com:81") == "all"


# ---------------------------------------------------------------------------------------------
# Hosts


@pytest.mark.parametrize(
    ("host", "pool"),
    [
        (b"shop.example.com", "exact"),
        (b"SHOP.Example.COM", "exact"),
        (b"shop.example.com:8443", "exact"),
        (b"shop.example.com.", "exact"),
        (b"a.example.com", "wild"),
        (b"a.b.example.com:80", "wild"),  # one or more labels
        (b"example.com", "app"),  # the wildcard needs at least one label
        (b"xexample.com", "app"),
        (b"shop.example.org", "app"),
        (b"[::1]:8080", "v6"),
        (b"[::1]", "v6"),
        (b"10.0.0.1:80", "v4"),
        (None, "app"),
    ],
)
def test_host_exact_wildcard_port_and_case(host: bytes | None, pool: str) -> None:
    r = router(
        {"match": {"host": "shop.example.com"}, "pool": "exact"},
        {"match": {"host": "*.example.com"}, "pool": "wild"},
        {"match": {"host": ["[::1]"]}, "pool": "v6"},
        {"match": {"host": "10.0.0.1"}, "pool": "v4"},
    )
    assert pool_of(r, b"/", host) == pool


def test_host_list_matches_any_of_them() -> None:
    r = router({"match": {"host": ["a.com", "*.b.com"]}, "pool": "ab"})
    assert [pool_of(r, b"/", h) for h in (b"a.com", b"x.b.com", b"b.com")] == ["ab", "ab", "app"]


def test_wildcard_before_exact_wins_by_order() -> None:
    r = router(
        {"match": {"host": "*.example.com"}, "pool": "wild"},
        {"match": {"host": "shop.example.com"}, "pool": "exact"},
    )
    assert pool_of(r, b"/", b"shop.example.com") == "wild"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"A.com", b"a.com"),
        (b"a.com:80", b"a.com"),
        (b"a.com.:80", b"a.com"),
        (b"[::1]:80", b"[::1]"),
        (b"[::1]", b"[::1]"),
        (b"1.2.3.4", b"1.2.3.4"),
    ],
)
def test_host_name_drops_port_case_and_trailing_dot(raw: bytes, name: bytes) -> None:
    assert host_name(raw) == name


def test_host_memo_stays_bounded_and_correct() -> None:
    r = router({"match": {"host": "*.example.com"}, "pool": "wild"})
    for i in range(10_000):
        assert pool_of(r, b"/", b"h%d.example.com" % i) == "wild"
        assert pool_of(r, b"/", b"h%d.example.org" % i) == "app"
    assert len(r._host_memo) <= 4096


# ---------------------------------------------------------------------------------------------
# Paths


@pytest.mark.parametrize(
    ("path", "pool"),
    [
        (b"/health", "exact"),
        (b"/health?full=1", "exact"),  # the query is not part of the path
        (b"/health/", "app"),
        (b"/healthz", "app"),
        (b"/api/v1/users", "regex"),
        (b"/api/v22/", "regex"),
        (b"/api/vx/", "api"),
        (b"/api", "app"),
        (b"/static/css/a.css", "static"),
        (b"/static", "app"),
        (b"/imgs/a.png", "img"),  # "/img" is a byte prefix: it matches "/imgs" too
        (b"/img", "img"),
        (b"/im", "app"),
        (b"/a/b/c/d", "deep"),
        (b"/a/b/c", "app"),
    ],
)
def test_path_exact_prefix_regex(path: bytes, pool: str) -> None:
    r = router(
        {"match": {"path_exact": "/health"}, "pool": "exact"},
        {"match": {"path_regex": "^/api/v[0-9]+/"}, "pool": "regex"},
        {"match": {"path_prefix": "/api/"}, "pool": "api"},
        {"match": {"path": "/static/"}, "pool": "static"},
        {"match": {"path": "/img"}, "pool": "img"},
        {"match": {"path": "/a/b/c/"}, "pool": "deep"},
    )
    assert pool_of(r, path) == pool


def test_regex_searches_anywhere_unless_anchored() -> None:
    r = router({"match": {"path_regex": r"\.php$"}, "pool": "php"})
    assert pool_of(r, b"/x/index.php?a=.html") == "php"
    assert pool_of(r, b"/x/index.php.html") == "app"


def test_prefix_and_exact_together_both_hold() -> None:
    r = router({"match": {"path_prefix": "/a/", "path_exact": "/a/b"}, "pool": "ab"})
    assert pool_of(r, b"/a/b") == "ab"
    assert pool_of(r, b"/a/c") == "app"


def test_partial_segment_prefix_in_a_deep_node() -> None:
    r = router(
        {"match": {"path": "/api/v"}, "pool": "v"}, {"match": {"path": "/api/"}, "pool": "api"}
    )
    assert pool_of(r, b"/api/v2/x") == "v"
    assert pool_of(r, b"/api/v") == "v"
    assert pool_of(r, b"/api/x") == "api"


def test_root_prefix_matches_every_origin_form_path_but_not_asterisk() -> None:
    r = router({"match": {"path": "/"}, "pool": "root"})
    assert pool_of(r, b"/x/y") == "root"
    assert pool_of(r, b"*", method=b"OPTIONS") == "app"


# ---------------------------------------------------------------------------------------------
# Method, headers, cookies, query


def test_method_one_or_a_list() -> None:
    r = router(
        {"match": {"method": "post"}, "pool": "writes"},
        {"match": {"method": ["GET", "HEAD"]}, "pool": "reads"},
    )
    assert pool_of(r, b"/", method=b"POST") == "writes"
    assert pool_of(r, b"/", method=b"HEAD") == "reads"
    assert pool_of(r, b"/", method=b"DELETE") == "app"


@pytest.mark.parametrize(
    ("headers", "pool"),
    [
        ([(b"x-env", b"canary")], "equals"),
        ([(b"X-ENV", b"canary")], "equals"),  # names are case-insensitive
        ([(b"X-Env", b"Canary"), (b"X-Internal", b"1")], "app"),  # values are not
        ([(b"X-Env", b"prod"), (b"X-Env", b"canary")], "equals"),  # any field of the name
        ([(b"X-Debug", b"")], "present"),
        ([(b"User-Agent", b"curl/8.1")], "regex"),
        ([(b"User-Agent", b"Mozilla/5.0")], "absent"),
        ([(b"X-Internal", b"1")], "app"),
        ([], "absent"),  # the absent route is last
    ],
)
def test_header_present_equals_regex_absent(headers: list[Header], pool: str) -> None:
    r = router(
        {"match": {"headers": {"X-Env": "canary"}}, "pool": "equals"},
        {"match": {"headers": {"X-Debug": {"present": True}}}, "pool": "present"},
        {"match": {"headers": {"User-Agent": {"regex": "^curl/"}}}, "pool": "regex"},
        {
            "match": {"headers": {"X-Internal": {"present": False}, "X-Any": {"present": False}}},
            "pool": "absent",
        },
    )
    assert pool_of(r, b"/", headers=headers) == pool


@pytest.mark.parametrize(
    ("cookie", "pool"),
    [
        (b"beta=1", "beta"),
        (b"a=b; beta=1; c=d", "beta"),
        (b"beta=2", "app"),
        (b"Beta=1", "app"),  # cookie names are case-sensitive
        (b"xbeta=1", "app"),
        (b"session=abc123", "session"),
        (b"session=", "app"),
    ],
)
def test_cookie(cookie: bytes, pool: str) -> None:
    r = router(
        {"match": {"cookies": {"beta": 1}}, "pool": "beta"},
        {"match": {"cookies": {"session": {"regex": "^[a-z0-9]+$"}}}, "pool": "session"},
    )
    assert pool_of(r, b"/", headers=[(b"Cookie", cookie)]) == pool


def test_cookie_in_a_second_cookie_field() -> None:
    r = router({"match": {"cookies": {"beta": "1"}}, "pool": "beta"})
    headers = [(b"cookie", b"a=1"), (b"Cookie", b"beta=1")]
    assert pool_of(r, b"/", headers=headers) == "beta"


@pytest.mark.parametrize(
    ("target", "pool"),
    [
        (b"/?debug=1", "debug"),
        (b"/?a=2&debug=1&b", "debug"),
        (b"/?debug=0", "app"),
        (b"/?de%62ug=1", "debug"),  # percent-decoded
        (b"/?q=hello+world", "q"),  # "+" is a space
        (b"/?q=hello%20world", "q"),
        (b"/?flag", "flag"),
        (b"/", "app"),
        (b"/?", "app"),
    ],
)
def test_query_parameter(target: bytes, pool: str) -> None:
    r = router(
        {"match": {"query": {"debug": "1"}}, "pool": "debug"},
        {"match": {"query": {"q": "hello world"}}, "pool": "q"},
        {"match": {"query": {"flag": {"present": True}}}, "pool": "flag"},
    )
    assert pool_of(r, target) == pool


def test_all_conditions_must_hold() -> None:
    r = router(
        {
            "match": {
                "host": "api.example.com",
                "path": "/v2/",
                "method": "POST",
                "headers": {"X-Env": "canary"},
                "cookies": {"beta": "1"},
                "query": {"dry": "1"},
            },
            "pool": "all",
        }
    )
    good = {"method": b"POST", "headers": [(b"X-Env", b"canary"), (b"Cookie", b"beta=1")]}
    assert pool_of(r, b"/v2/x?dry=1", b"api.example.com", **good) == "all"
    assert pool_of(r, b"/v2/x?dry=0", b"api.example.com", **good) == "app"
    assert pool_of(r, b"/v2/x?dry=1", b"www.example.com", **good) == "app"
    assert pool_of(r, b"/v1/x?dry=1", b"api.example.com", **good) == "app"
    assert (
        pool_of(r, b"/v2/x?dry=1", b"api.example.com", method=b"GET", headers=good["headers"])
        == "app"
    )
    only_env = {"method": b"POST", "headers": [(b"X-Env", b"canary")]}
    assert pool_of(r, b"/v2/x?dry=1", b"api.example.com", **only_env) == "app"


# ---------------------------------------------------------------------------------------------
# First match wins, across the index buckets


def test_earlier_catch_all_path_beats_later_exact_host() -> None:
    r = router(
        {"match": {"path": "/"}, "pool": "catch-all"},
        {"match": {"host": "a.example.com"}, "pool": "host"},
    )
    assert pool_of(r, b"/x", b"a.example.com") == "catch-all"


def test_earlier_no_condition_route_beats_everything_after() -> None:
    r = router(
        {"match": {"method": "GET"}, "pool": "gets"},
        {"match": {"host": "a.com", "path_exact": "/x"}, "pool": "exact"},
    )
    assert pool_of(r, b"/x", b"a.com") == "gets"
    assert pool_of(r, b"/x", b"a.com", method=b"PUT") == "exact"


def test_exact_host_route_first_beats_later_path_route() -> None:
    r = router(
        {"match": {"host": "a.com"}, "pool": "host"},
        {"match": {"path": "/x/"}, "pool": "path"},
    )
    assert pool_of(r, b"/x/1", b"a.com") == "host"
    assert pool_of(r, b"/x/1", b"b.com") == "path"


def test_a_failed_earlier_candidate_falls_through_to_a_later_bucket() -> None:
    r = router(
        {"match": {"host": "a.com", "headers": {"X-Beta": "1"}}, "pool": "beta"},
        {"match": {"path": "/x/"}, "pool": "path"},
        {"match": {"host": "a.com"}, "pool": "host"},
    )
    assert pool_of(r, b"/x/1", b"a.com", headers=[(b"X-Beta", b"1")]) == "beta"
    assert pool_of(r, b"/x/1", b"a.com") == "path"
    assert pool_of(r, b"/y", b"a.com") == "host"


def test_exact_path_and_deeper_prefix_keep_file_order() -> None:
    r = router(
        {"match": {"path": "/a/"}, "pool": "shallow"},
        {"match": {"path_exact": "/a/b/c"}, "pool": "exact"},
        {"match": {"path": "/a/b/"}, "pool": "deep"},
    )
    assert pool_of(r, b"/a/b/c") == "shallow"
    r = router(
        {"match": {"path": "/a/b/"}, "pool": "deep"},
        {"match": {"path": "/a/"}, "pool": "shallow"},
    )
    assert pool_of(r, b"/a/b/c") == "deep"
    assert pool_of(r, b"/a/c") == "shallow"


def test_checks_are_lazy_no_regex_or_headers_unless_a_candidate() -> None:
    class Exploding(list[Header]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("headers were read")

    r = router(
        {"match": {"path": "/a/", "headers": {"X": "1"}}, "pool": "a"},
        {"match": {"host": "b.com", "cookies": {"c": "1"}}, "pool": "b"},
        {"match": {"path": "/c/"}, "pool": "c"},
    )
    assert r.match(GET, b"/c/x", b"other.com", Exploding()).pool == "c"
    with pytest.raises(AssertionError, match="headers were read"):
        r.match(GET, b"/a/x", b"other.com", Exploding())


# ---------------------------------------------------------------------------------------------
# The indexes agree with checking every route in order


def _naive_value(rule: ValueMatch, values: Sequence[bytes]) -> bool:
    if rule.present is not None:
        return bool(values) == rule.present
    if rule.regex is not None:
        return any(re.search(rule.regex.encode(), v) for v in values)
    assert rule.exact is not None
    return rule.exact.encode() in values


def _naive_matches(
    route: RouteConfig, method: bytes, target: bytes, host: bytes | None, headers: list[Header]
) -> bool:
    m = route.match
    path, _, query = target.partition(b"?")
    if m.host is not None:
        if host is None:
            return False
        name = host_name(host)
        if not any(
            name.endswith(p[1:].encode()) and len(name) > len(p) - 1
            if p.startswith("*.")
            else name == p.encode()
            for p in m.host
        ):
            return False
    if m.prefix is not None and not path.startswith(m.prefix.encode()):
        return False
    if m.path_exact is not None and path != m.path_exact.encode():
        return False
    if m.path_regex is not None and not re.search(m.path_regex.encode(), path):
        return False
    if m.method is not None and method.decode() not in m.method:
        return False
    for name_, rule in m.headers.items():
        values = [v for k, v in headers if k.lower() == name_.lower().encode()]
        if not _naive_value(rule, values):
            return False
    for name_, rule in m.cookies.items():
        values = [
            part.strip().partition(b"=")[2]
            for k, v in headers
            if k.lower() == b"cookie"
            for part in v.split(b";")
            if part.strip().partition(b"=")[0] == name_.encode()
        ]
        if not _naive_value(rule, values):
            return False
    for name_, rule in m.query.items():
        values = [
            unquote_to_bytes(p.partition(b"=")[2].replace(b"+", b" "))
            for p in query.split(b"&")
            if p and unquote_to_bytes(p.partition(b"=")[0].replace(b"+", b" ")) == name_.encode()
        ]
        if not _naive_value(rule, values):
            return False
    return True


def test_indexed_router_agrees_with_a_linear_scan() -> None:
    rng = random.Random(20240601)
    hosts = ["a.com", "b.com", "*.a.com", "*.x.a.com", "c.org"]
    prefixes = ["/", "/a/", "/a/b/", "/a/b", "/ab", "/b/", "/a/b/c/"]
    exacts = ["/a", "/a/b", "/a/b/c", "/b/"]
    regexes = ["^/a/b", "c$", "^/b/"]
    for _ in range(40):
        data = []
        for i in range(rng.randint(1, 25)):
            match: dict[str, object] = {}
            if rng.random() < 0.5:
                match["host"] = rng.sample(hosts, rng.randint(1, 2))
            kind = rng.random()
            if kind < 0.4:
                match["path"] = rng.choice(prefixes)
            elif kind < 0.6:
                match["path_exact"] = rng.choice(exacts)
            if rng.random() < 0.2:
                match["path_regex"] = rng.choice(regexes)
            if rng.random() < 0.2:
                match["method"] = rng.sample(["GET", "POST", "PUT"], rng.randint(1, 2))
            if rng.random() < 0.2:
                match["headers"] = {"X-T": rng.choice(["1", {"present": True}, {"present": False}])}
            if rng.random() < 0.1:
                match["cookies"] = {"c": "1"}
            if rng.random() < 0.1:
                match["query"] = {"q": "1"}
            data.append({"match": match, "pool": f"p{i}"})
        configs = routes(*data)
        r = Router.compile(configs, "app")
        for _ in range(200):
            host = rng.choice(
                [None, b"A.com", b"b.com:80", b"q.a.com", b"y.x.a.com", b"c.org", b"d.net"]
            )
            target = rng.choice(
                [
                    b"/",
                    b"/a",
                    b"/a/",
                    b"/a/b",
                    b"/a/b/",
                    b"/a/b/c",
                    b"/a/b/c/d",
                    b"/ab",
                    b"/b/",
                    b"/abc",
                    b"*",
                    b"/a/b?q=1",
                    b"/b/c?x&q=1",
                ]
            )
            method = rng.choice([b"GET", b"POST", b"PUT", b"DELETE"])
            headers: list[Header] = rng.choice(
                [[], [(b"x-t", b"1")], [(b"X-T", b"2"), (b"Cookie", b"c=1")], [(b"cookie", b"c=2")]]
            )
            want = next(
                (
                    i
                    for i, c in enumerate(configs)
                    if _naive_matches(c, method, target, host, headers)
                ),
                -1,
            )
            assert r.match(method, target, host, headers).index == want, (data, host, target)
