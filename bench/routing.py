"""Cost of choosing a route: Router.match with 1 route and with 200, in microseconds.

The 200 routes look like a real shared front end: tenants by exact host, regions by wildcard
host, services by path prefix, a few exact health paths, a canary by header, and host-bound
regex routes. Each router is timed for a request that takes its first route, one that takes
its last, and one that matches none (the default pool). Standard library only (plus portico).

    .venv/bin/python bench/routing.py [--number N]
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from pydantic import TypeAdapter

from portico.config.routes import Routes
from portico.http.headers import Header
from portico.routing import Router

HEADERS: list[Header] = [
    (b"Host", b""),  # the host is passed on its own; the field is here for realism
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/126.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.5"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Cookie", b"session=0123456789abcdef; theme=dark"),
    (b"Connection", b"keep-alive"),
    (b"Upgrade-Insecure-Requests", b"1"),
]


def realistic_routes(count: int) -> list[dict[str, Any]]:
    """`count` routes (a multiple of 10): per 10, 4 tenant hosts, 3 service prefixes, one
    region wildcard with a regex, one exact health path, one header canary."""
    out: list[dict[str, Any]] = []
    for n in range(count // 10):
        base = n * 10
        out += [{"match": {"host": f"tenant{base + k}.example.com"}, "pool": "t"} for k in range(4)]
        out += [{"match": {"path": f"/api/svc{base + k}/"}, "pool": "s"} for k in range(4, 7)]
        out.append(
            {
                "match": {"host": f"*.region{n}.example.net", "path_regex": "^/v[0-9]+/"},
                "pool": "r",
            }
        )
        out.append({"match": {"path_exact": f"/health/{n}"}, "respond": {"status": 200}})
        out.append(
            {
                "match": {"path": f"/beta{n}/", "headers": {"X-Canary": "1"}},
                "pool": "c",
            }
        )
    # the last route: a tenant host, the most common kind
    out[-1] = {"match": {"host": f"tenant{count - 1}.example.com"}, "pool": "last"}
    return out


def build(data: list[dict[str, Any]]) -> Router:
    return Router.compile(TypeAdapter(Routes).validate_python(data), "default")


def per_call_us(router: Router, request: tuple[bytes, bytes, bytes, list[Header]], n: int) -> float:
    method, path, host, headers = request
    match = router.match
    best = min(timeit.repeat(lambda: match(method, path, host, headers), number=n, repeat=7))
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing")
    args = parser.parse_args()

    many = build(realistic_routes(200))
    one = build([{"match": {"host": "tenant0.example.com"}, "pool": "t"}])
    assert len(many.routes) == 200

    cases = {
        "first": (b"GET", b"/index.html?utm=x", b"tenant0.example.com", HEADERS),
        "last": (b"GET", b"/index.html?utm=x", b"tenant199.example.com:443", HEADERS),
        "none": (b"GET", b"/api/other/list?page=2", b"www.example.org", HEADERS),
    }
    expected = {"first": (0, 0), "last": (0, 199), "none": (-1, -1)}
    one_cases = {**cases, "last": cases["first"]}  # with one route, first and last are one

    print(f"Router.match, microseconds per call (best of 7 x {args.number:,} calls)")
    print(f"{'request':<8} {'1 route':>9} {'200 routes':>11} {'extra':>7}")
    for name, request in cases.items():
        one_index, many_index = expected[name]
        assert one.match(*one_cases[name][:3], HEADERS).index == one_index
        assert many.match(*request[:3], HEADERS).index == many_index
        t1 = per_call_us(one, one_cases[name], args.number)
        t200 = per_call_us(many, request, args.number)
        print(f"{name:<8} {t1:>9.2f} {t200:>11.2f} {t200 - t1:>+7.2f}")
    extra = {
        "regex (region wildcard + path_regex)": (b"GET", b"/v2/items", b"eu.region7.example.net"),
        "header canary (lazy header parse)": (b"GET", b"/beta3/x", b"www.example.org"),
        "exact path respond": (b"GET", b"/health/19", b"www.example.org"),
    }
    print("\nother requests against the 200 routes")
    for label, (method, path, host) in extra.items():
        route = many.match(method, path, host, HEADERS)
        us = per_call_us(many, (method, path, host, HEADERS), args.number)
        print(f"{label:<40} {us:>6.2f}  -> {route.name}")


if __name__ == "__main__":
    main()
