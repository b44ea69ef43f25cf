"""The cache's shell without sockets: lookup, store through the tee, collapsing, 304s."""

from __future__ import annotations

import asyncio

from portico import tasks
from portico.cache.runtime import Cache, CacheRules, RouteCache, Step

FRESH = [(b"Cache-Control", b"max-age=60"), (b"ETag", b'"a"')]


def route(rules: CacheRules | None = None, clock: list[float] | None = None) -> RouteCache:
    now = clock if clock is not None else [1000.0]
    cache = Cache(1 << 20, 1 << 16, lambda: now[0])  # a loop only where collapsing waits
    return cache.route(("web", "r"), rules or CacheRules(collapse=False))


def exchange(r: RouteCache, method: bytes = b"GET", *headers: tuple[bytes, bytes]):  # type: ignore[no-untyped-def]
    return r.exchange(method, "http", b"h", b"/p", b"/p", [(b"Host", b"h"), *headers])


def store(r: RouteCache, body: bytes = b"body", headers=FRESH) -> None:  # type: ignore[no-untyped-def]
    ex = exchange(r)
    assert ex.lookup() is Step.FORWARD
    ex.on_response(200, list(headers), len(body))
    ex.feed(body)
    ex.end()


def test_stored_then_hit_with_counters() -> None:
    """RFC 9111 §3 then §4: a complete body is stored, then reused."""
    r = route()
    store(r)
    ex = exchange(r)
    assert ex.lookup() is Step.ANSWER
    assert ex.response is not None
    assert ex.response.body == b"body"
    assert (r.counters.misses, r.counters.hits, r.counters.stored) == (1, 1, 1)


def test_incomplete_bodies_are_never_stored() -> None:
    """§3.3-§3.4: an aborted body, or one shorter than its Content-Length, is not stored."""
    r = route()
    ex = exchange(r)
    ex.lookup()
    ex.on_response(200, list(FRESH), 10)
    ex.feed(b"half")
    ex.abort()
    assert exchange(r).lookup() is Step.FORWARD
    ex = exchange(r)
    ex.lookup()
    ex.on_response(200, list(FRESH), 10)
    ex.feed(b"short")
    ex.end()
    assert exchange(r).lookup() is Step.FORWARD


def test_entries_over_the_limit_are_not_stored() -> None:
    """The per-entry size limit: a known length over it is not teed; an unknown one stops."""
    r = route(CacheRules(collapse=False, max_entry=8))
    ex = exchange(r)
    ex.lookup()
    ex.on_response(200, list(FRESH), None)
    assert ex.storing
    ex.feed(b"0123456789")
    assert not ex.storing
    ex.end()
    assert exchange(r).lookup() is Step.FORWARD


def test_304_refreshes_and_serves_the_stored_body() -> None:
    """§4.3.1 conditional request, §4.3.4 update, then the stored body answers."""
    clock = [1000.0]
    r = route(clock=clock)
    store(r)
    clock[0] += 120  # stale now
    ex = exchange(r)
    assert ex.lookup() is Step.FORWARD
    conditional = ex.conditional([(b"Host", b"h")])
    assert conditional == [(b"Host", b"h"), (b"If-None-Match", b'"a"')]
    _, answer = ex.on_response(304, [(b"ETag", b'"a"'), (b"Cache-Control", b"max-age=300")], 0)
    assert answer is not None
    assert answer.body == b"body"
    assert exchange(r).lookup() is Step.ANSWER  # fresh again for 300 s
    assert r.counters.revalidations == 1


def test_only_if_cached_and_unsafe_invalidation() -> None:
    """§5.2.1.7 (504 when nothing usable is stored) and §4.4."""
    r = route()
    ex = exchange(r, b"GET", (b"Cache-Control", b"only-if-cached"))
    assert ex.lookup() is Step.ANSWER
    assert ex.response is not None
    assert ex.response.status == 504
    store(r)
    post = exchange(r, b"POST")
    assert post.lookup() is Step.FORWARD
    post.on_response(204, [], 0)
    assert exchange(r).lookup() is Step.FORWARD


def test_collapsed_requests_wait_for_the_first() -> None:
    """Collapsed forwarding: one request goes, the others wait (at most `max_waiters`), then
    find the stored response."""

    async def run() -> list[Step]:
        r = route(CacheRules(collapse=True, max_waiters=2, collapse_timeout=5))
        first = exchange(r)
        assert first.lookup() is Step.FORWARD
        waiters = [exchange(r) for _ in range(3)]
        steps = [w.lookup() for w in waiters]
        assert steps == [Step.WAIT, Step.WAIT, Step.FORWARD]  # the third is over the bound
        pending = [tasks.spawn(w.waited()) for w in waiters[:2]]
        await asyncio.sleep(0)
        first.on_response(200, list(FRESH), 4)
        first.feed(b"body")
        first.end()
        return list(await asyncio.gather(*pending))

    assert asyncio.run(run()) == [Step.ANSWER, Step.ANSWER]


def test_a_stored_response_without_date_gets_one() -> None:
    """RFC 9110 §6.6.1: a cache adds Date to a response it stores without one."""
    r = route()
    store(r)
    ex = exchange(r)
    assert ex.lookup() is Step.ANSWER
    assert ex.response is not None
    assert any(name == b"Date" for name, _ in ex.response.headers)


def test_a_head_answer_freshens_or_retires_the_stored_get() -> None:
    """RFC 9111 §4.3.5: a HEAD's 200 with the stored validators freshens the stored GET (its
    body kept); with another validator the stored GET is no longer used."""
    clock = [1000.0]
    r = route(clock=clock)
    store(r)
    clock[0] += 120  # stale
    head = exchange(r, b"HEAD")
    assert head.lookup() is Step.FORWARD
    head.on_response(200, [(b"ETag", b'"a"'), (b"Cache-Control", b"max-age=600")], 0)
    head.end()
    again = exchange(r)
    assert again.lookup() is Step.ANSWER  # fresh for 600 s more
    assert again.response is not None
    assert again.response.body == b"body"
    clock[0] += 1000
    head = exchange(r, b"HEAD")
    assert head.lookup() is Step.FORWARD
    head.on_response(200, [(b"ETag", b'"b"'), (b"Cache-Control", b"max-age=600")], 0)
    head.end()
    assert exchange(r).lookup() is Step.FORWARD


def test_bodies_teed_at_once_are_bounded_together() -> None:
    """Memory held by responses being stored is bounded by the tier's size, all together: a
    body that would pass it is not kept (it still reaches its client)."""
    cache = Cache(3000, 2500, lambda: 1000.0)
    r = cache.route(("web", "r"), CacheRules(collapse=False))
    first = r.exchange(b"GET", "http", b"h", b"/a", b"/a", [])
    second = r.exchange(b"GET", "http", b"h", b"/b", b"/b", [])
    for ex in (first, second):
        ex.lookup()
        ex.on_response(200, list(FRESH), 2000)
    first.feed(b"x" * 2000)
    second.feed(b"y" * 2000)  # 4000 at once: over 3000
    assert cache.pending == 2000
    assert not second.storing
    first.end()
    second.end()
    assert cache.pending == 0
    assert r.exchange(b"GET", "http", b"h", b"/a", b"/a", []).lookup() is Step.ANSWER
    assert r.exchange(b"GET", "http", b"h", b"/b", b"/b", []).lookup() is Step.FORWARD


def test_an_overdue_request_in_flight_is_not_waited_for() -> None:
    """A request in flight longer than the collapse timeout (it never landed: its client
    left in a way nobody saw) no longer holds the others: the next one goes itself."""

    async def run() -> list[Step]:
        clock = [1000.0]
        r = route(CacheRules(collapse=True, collapse_timeout=5), clock=clock)
        stuck = exchange(r)
        assert stuck.lookup() is Step.FORWARD
        waiting = exchange(r)
        assert waiting.lookup() is Step.WAIT
        clock[0] += 6
        fresh = exchange(r)
        first = fresh.lookup()  # goes, and releases the one waiting on the stuck flight
        assert waiting.wait is not None
        await asyncio.wait_for(waiting.wait, 1)
        return [first, exchange(r).lookup()]

    assert asyncio.run(run()) == [Step.FORWARD, Step.WAIT]
