"""Why a request goes where it goes, computed by the proxy's own decision objects. *pure*

Owns `explain`: it builds, from a validated `Config`, the very objects a worker builds (the
listener's `Router`, its filters, each `Pool` with its policy and outlier detector), applies a
server state (as a config starts, or a running Portico's live state), and asks them, step by
step, what they decide for one `SampleRequest`. The verdicts (the route, the server) are
always the production objects' own answers; what this module adds is the why: each route
condition is checked alone by a one-condition `Router`, each server's state is read off its
`BackendState`, and the policy's numbers are read through the policy's own cost functions.

Never does I/O and never reads the clock: `now` is an argument. Randomised policies draw from
a `random.Random(seed)`, so an explanation is reproducible (and says it is one possible draw).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from portico.balancing.p2c_ewma import P2CEwma, cost
from portico.config.routes import MatchConfig, RouteConfig, ValueMatch
from portico.config.schema import Config, ListenerConfig
from portico.explain.model import (
    Condition,
    Explanation,
    FilterStep,
    ListenerChoice,
    PoolStep,
    RequestSummary,
    RouteStep,
    ServerStep,
)
from portico.explain.request import SampleRequest
from portico.filters.ratelimit import RateLimitFilter
from portico.filters.redirect import RedirectToHttps
from portico.health import slow_start_factor
from portico.http.headers import Header
from portico.http.local import LocalResponse
from portico.proxy.debug_header import short_form
from portico.routing import Route, Router, apply_request_headers, redirect_response, rewrite_path
from portico.routing.actions import fixed_response
from portico.routing.matchers import RequestView, WantedHeaders, host_name
from portico.static.site import static_site
from portico.upstreams.backend import BackendState
from portico.upstreams.pool import FULL, Pool

__all__ = ["ServerLive", "explain"]


@dataclass(frozen=True, slots=True)
class ServerLive:
    """One server's state as a running Portico (or the person asking) reports it.

    `up`/`detail`: the active checks' verdict; `state`: the admin state (ready, drain, maint);
    `ejected_by`: how many workers' outlier detection keeps it out; `in_flight`: requests
    outstanding to it; `back_for`: seconds since it came back up (slow start), None if it
    never went down.
    """

    up: bool = True
    detail: str = ""
    state: str = "ready"
    ejected_by: int = 0
    in_flight: int = 0
    back_for: float | None = None


LiveState = Mapping[tuple[str, str], ServerLive]
"""(pool, server) -> state; a server not in it is as the config starts it (up, ready, idle)."""


def explain(
    config: Config,
    request: SampleRequest,
    *,
    listener: str | None = None,
    state: LiveState | None = None,
    live: bool = False,
    now: float = 0.0,
    seed: int = 0,
) -> Explanation:
    """Explain `request` against `config`, from its arrival at a listener to the server.

    `listener` names the listener (default: chosen from the URL's scheme and port); `state`
    is the server state to assume (a server not in it: as the config starts it); `live` says
    it is a running Portico's. Raises ValueError when `listener` names no HTTP listener.
    """
    notes: list[str] = []
    chosen, why = _choose_listener(config, request, listener)
    summary = RequestSummary(
        method=request.method.decode("ascii"),
        url=request.url,
        host=_text(request.host) if request.host is not None else None,
        target=_text(request.target),
        client_ip=request.client_ip,
        headers=[f"{_text(k)}: {_text(v)}" for k, v in request.headers],
    )
    base: dict[str, Any] = {
        "live": live,
        "request": summary,
        "listener": ListenerChoice(name=chosen.name, reason=why),
        "routes": [],
        "route": None,
        "answer": None,
        "upstream_target": None,
        "request_headers": [],
        "response_headers": [],
        "pools": [],
        "pool": None,
        "server": None,
        "notes": notes,
    }
    filters, answer = _filters(config, chosen, request, now, live, notes)
    base["filters"] = filters
    if answer is not None:
        base["answer"] = answer
        base["short"] = short_form(chosen.name, None, None, None, 0, 0, None, 1)
        return Explanation(**base)

    steps, route = _routes(chosen, request)
    base["routes"] = steps
    base["route"] = route.name
    actions = route.actions
    target = request.target
    if actions is not None:
        head = request.method == b"HEAD"
        if actions.respond is not None:
            fixed = fixed_response(actions)
            body = b"" if head else fixed.body  # an answer to HEAD leaves its body out
            base["answer"] = f"{fixed.status} from the route itself" + (
                f": {_text(body)!r}" if body else ""
            )
        elif actions.redirect is not None:
            scheme = b"https" if chosen.protocol == "https" else b"http"
            redirect = redirect_response(actions, request.host, target, scheme)
            location = _location(redirect)
            base["answer"] = f"{actions.redirect.status} redirect to {_text(location)}"
        if base["answer"] is not None:
            base["short"] = short_form(chosen.name, route.name, None, None, 0, 0, None, 1)
            return Explanation(**base)
        target = rewrite_path(target, actions)
        if actions.request_headers is not None:
            before = list(request.headers)
            after = apply_request_headers(before, actions)
            base["request_headers"] = _edits(before, after)
        if actions.response_headers is not None:
            edits = actions.response_headers
            base["response_headers"] = [f"remove {_text(n)}" for n in sorted(edits.remove)] + [
                f"add {_text(k)}: {_text(v)}" for k, v in edits.append
            ]
    static = chosen.routes[route.index].static if route.index >= 0 else None
    if static is not None:
        # the production site, on this machine's files: what it would answer, if anything
        route_config = chosen.routes[route.index]
        site = static_site(static, route_config.compression or chosen.compression)
        reply = site.answer(request.method, target, list(request.headers))
        if reply is not None:
            close = getattr(reply.body, "close", None)
            if close is not None:
                close()
            base["answer"] = f"{reply.status} from the static files under {static.root}"
            base["short"] = short_form(chosen.name, route.name, None, None, 0, 0, None, 1)
            return Explanation(**base)
        notes.append(f"no file for it under {static.root}: try_files falls back to the pool")
    base["upstream_target"] = _text(target)
    if route.timeouts is not None:
        set_ = {k: v for k, v in route.timeouts.model_dump().items() if v is not None}
        notes.append(
            "the route overrides the pool's timeouts: "
            + ", ".join(f"{k} {v:g}s" for k, v in set_.items())
        )

    assert route.pool is not None  # a route without a pool answered above
    servers = state or {}
    step, server, fallback, counts = _pool(config, route.pool, request, servers, now, seed)
    pools = [step]
    if server is None and fallback is not None:
        # as the proxy: one hop to the fallback pool, only when no server of the first is fit
        step, server, _, fallback_counts = _pool(config, fallback, request, servers, now, seed)
        pools.append(step)
        if server is not None:
            counts = fallback_counts
    served = pools[-1].name if server is not None else route.pool
    base["pools"] = pools
    base["pool"] = served
    base["server"] = server
    if not live:
        notes.append(
            (
                "servers as the config starts them (up, ready, idle)"
                if not state
                else "servers as --state says, the others as the config starts them"
            )
            + "; ask a running Portico with --live for its server state"
        )
    rotating = ("round_robin", "weighted_round_robin", "least_conn")
    if any(p.policy in rotating and len([s for s in p.servers if s.candidate]) > 1 for p in pools):
        notes.append(
            "a rotation's position (and least_conn's turn among ties) is kept per worker: the "
            "pick shown is a freshly started pool's"
        )
    if any(p.policy == "p2c_ewma" and any(s.candidate for s in p.servers) for p in pools):
        notes.append(
            "p2c_ewma: latency estimates live in each worker, so explain has no samples: an "
            "idle server costs 0, one with requests in flight the no-sample penalty (1e6)"
        )
    base["short"] = short_form(
        chosen.name,
        route.name,
        served,
        config.pools[served].policy,
        counts[0],
        counts[1],
        server,
        1,
    )
    return Explanation(**base)


# ---------------------------------------------------------------------------------------------
# The listener


def _choose_listener(
    config: Config, request: SampleRequest, name: str | None
) -> tuple[ListenerConfig, str]:
    http = [lis for lis in config.listeners if lis.protocol != "tcp"]
    if name is not None:
        for listener in config.listeners:
            if listener.name == name:
                if listener.protocol == "tcp":
                    raise ValueError(f'listener "{name}" is a tcp listener: it has no routes')
                return listener, "named with --listener"
        known = ", ".join(lis.name for lis in http) or "none"
        raise ValueError(f'no HTTP listener named "{name}" (HTTP listeners: {known})')
    if not http:
        raise ValueError("the config has no http or https listener to explain a request on")
    scheme = request.scheme
    same = [lis for lis in http if not scheme or lis.protocol == scheme]
    if not same:
        return http[0], (
            f"no {scheme} listener: explained on the first HTTP listener (use --listener)"
        )
    if request.port is not None:
        for listener in same:
            if listener.bind.port == request.port:
                return listener, f"the {listener.protocol} listener bound to port {request.port}"
    if len(same) == 1:
        what = f"the only {scheme} listener" if scheme else "the only HTTP listener"
        return same[0], what
    default = {"http": 80, "https": 443}.get(scheme)
    for listener in same:
        if default is not None and listener.bind.port == default:
            return listener, f"the {scheme} listener on the default port {default}"
    return same[0], f"the first of {len(same)} {scheme or 'HTTP'} listeners (use --listener)"


# ---------------------------------------------------------------------------------------------
# The listener's filters


class _Stub:
    """The attributes of an `Exchange` a filter reads, for a request that is not on a socket."""

    def __init__(self, request: SampleRequest) -> None:
        self.headers = list(request.headers)
        self.target = request.target
        self.head = self
        self.host = request.host
        self.client = self
        self.client_ip = request.client_ip


def _location(answer: LocalResponse) -> bytes:
    """The Location field of a redirect Portico would answer with."""
    return next((value for name, value in answer.headers if name.lower() == b"location"), b"")


def _filters(
    config: Config,
    listener: ListenerConfig,
    request: SampleRequest,
    now: float,
    live: bool,
    notes: list[str],
) -> tuple[list[FilterStep], str | None]:
    """The listener's request filters in the order a worker runs them (as `worker.py` builds
    them), each asked about this request; the answer if one would answer."""
    steps: list[FilterStep] = []
    stub = cast(Any, _Stub(request))
    if listener.redirect_https:
        redirect = RedirectToHttps().on_request(stub)
        location = _location(redirect) if redirect is not None else b""
        answer = f"308 redirect to {_text(location)}"
        steps.append(FilterStep(name="redirect_https", verdict="answer", detail=answer))
        return steps, answer
    limit = listener.rate_limit
    if limit is not None:
        limiter = RateLimitFilter(limit, lambda: now)
        key = limiter.key_of(stub.headers, stub.target, request.client_ip)
        decision = limiter.limiter.gcra.decide(None, now)
        where = (
            "counted in Redis for every worker and instance"
            if config.state.redis
            else "counted per worker"
        )
        detail = (
            f"key {limit.key} = {_text(key)!r}; {limit.rate:g}/s, burst {limit.burst_size()}, "
            f"{where}: a client with no recent requests passes with {decision.remaining} "
            "left in its burst"
        )
        steps.append(FilterStep(name="rate_limit", verdict="pass", detail=detail))
        if live:
            notes.append(
                "rate-limit state lives in each worker (or Redis), not in the supervisor: the "
                "verdict shown is for a client with no recent requests"
            )
    return steps, None


# ---------------------------------------------------------------------------------------------
# Routes


def _routes(listener: ListenerConfig, request: SampleRequest) -> tuple[list[RouteStep], Route]:
    """Each route in order until the router's choice; the route the production router takes."""
    router = Router.compile(listener.routes, listener.default_pool)
    chosen = router.match(request.method, request.target, request.host, request.headers)
    steps: list[RouteStep] = []
    for route, config in zip(router.routes, listener.routes, strict=True):
        conditions = _conditions(config.match, request)
        matched = route.index == chosen.index
        failed = [c for c in conditions if not c.holds]
        if matched:
            reason = "every condition holds" if conditions else "it has no conditions"
        elif failed:
            reason = "; ".join(f"{c.condition}: no, {c.actual}" for c in failed)
        else:  # pragma: no cover - the router and the one-condition checks always agree
            reason = "the router did not take it"
        steps.append(
            RouteStep(
                index=route.index,
                name=route.name,
                matched=matched,
                reason=reason,
                conditions=conditions,
                outcome=_outcome(config),
            )
        )
        if matched:
            return steps, chosen
    steps.append(
        RouteStep(
            index=-1,
            name=chosen.name,
            matched=True,
            reason="no route matched: the listener's default_pool",
            conditions=[],
            outcome=f'pool "{listener.default_pool}"',
        )
    )
    return steps, chosen


def _outcome(route: RouteConfig) -> str:
    if route.redirect is not None:
        return f"redirect {route.redirect.status} to {route.redirect.to}"
    if route.respond is not None:
        return f"respond {route.respond.status}"
    return f'pool "{route.pool}"'


def _holds(match: MatchConfig, request: SampleRequest) -> bool:
    """Whether one condition holds, asked of a production router holding only it."""
    router = Router.compile([RouteConfig(match=match, pool="explain")], "explain")
    return not router.match(request.method, request.target, request.host, request.headers).default


def _conditions(match: MatchConfig, request: SampleRequest) -> list[Condition]:
    """Every condition of `match`, each checked alone, with what the request has instead."""
    path, _, query = request.target.partition(b"?")
    names = [n.lower().encode("ascii") for n in match.headers]
    view = RequestView(
        request.method,
        path,
        query if b"?" in request.target else None,
        request.headers,
        WantedHeaders.of([*names, b"cookie"]),
    )
    out: list[Condition] = []

    def check(label: str, single: MatchConfig, actual: str) -> None:
        out.append(Condition(condition=label, holds=_holds(single, request), actual=actual))

    host = f'host is "{_text(host_name(request.host))}"' if request.host else "no Host"
    if match.host is not None:
        check(f"host is {' or '.join(match.host)}", MatchConfig(host=match.host), host)
    shown = f'path is "{_text(path)}"'
    if match.prefix is not None:
        check(f'path starts with "{match.prefix}"', MatchConfig(path_prefix=match.prefix), shown)
    if match.path_exact is not None:
        check(f'path is "{match.path_exact}"', MatchConfig(path_exact=match.path_exact), shown)
    if match.path_regex is not None:
        single = MatchConfig(path_regex=match.path_regex)
        check(f"path matches /{match.path_regex}/", single, shown)
    if match.method is not None:
        single = MatchConfig(method=match.method)
        method = f"method is {_text(request.method)}"
        check(f"method is {' or '.join(match.method)}", single, method)
    for name, rule in match.headers.items():
        values = view.header_values(name.lower().encode("ascii"))
        single = MatchConfig(headers={name: rule})
        check(f"header {name} {_rule(rule)}", single, _values(f"header {name}", values))
    for name, rule in match.cookies.items():
        values = view.cookie_values(name.encode("ascii"))
        single = MatchConfig(cookies={name: rule})
        check(f"cookie {name} {_rule(rule)}", single, _values(f"cookie {name}", values))
    for name, rule in match.query.items():
        values = view.param_values(name.encode("utf-8"))
        single = MatchConfig(query={name: rule})
        check(f"query {name} {_rule(rule)}", single, _values(f"query {name}", values))
    return out


def _rule(rule: ValueMatch) -> str:
    if rule.present is not None:
        return "is present" if rule.present else "is absent"
    if rule.regex is not None:
        return f"matches /{rule.regex}/"
    return f'is "{rule.exact}"'


def _values(what: str, values: Sequence[bytes]) -> str:
    if not values:
        return f"{what} is absent"
    return f"{what} is " + " and ".join(f'"{_text(v)}"' for v in values)


def _edits(before: list[Header], after: list[Header]) -> list[str]:
    kept = list(before)
    out: list[str] = []
    added: list[Header] = []
    for field in after:
        if field in kept:
            kept.remove(field)
        else:
            added.append(field)
    out.extend(f"remove {_text(k)}: {_text(v)}" for k, v in kept)
    out.extend(f"add {_text(k)}: {_text(v)}" for k, v in added)
    return out


# ---------------------------------------------------------------------------------------------
# The pool, its servers and its policy

_HOW: dict[str, tuple[str, str]] = {
    "round_robin": ("", "each candidate in turn, ignoring weights"),
    "weighted_round_robin": (
        "share of turns",
        "in turn, in proportion to weight (smooth: no bursts)",
    ),
    "least_conn": ("in_flight / weight", "the lowest in_flight / weight wins; ties take turns"),
    "random": ("", "a random candidate, in proportion to weight"),
    "p2c_ewma": (
        "cost = latency x (in_flight + 1) / weight",
        "two random candidates; the cheaper one wins",
    ),
    "ip_hash": ("", "the client address picks a slot of a weighted table (xxhash)"),
    "consistent_hash": ("", "the key picks a point on a hash ring (xxhash)"),
}


def _pool(
    config: Config,
    name: str,
    request: SampleRequest,
    live: LiveState,
    now: float,
    seed: int,
) -> tuple[PoolStep, str | None, str | None, tuple[int, int]]:
    """One pool, as a worker builds it, with `live` applied: (the step, the winner, the
    fallback pool to try next, (candidates, servers))."""
    pool_config = config.pools[name]
    pool = Pool.from_config(name, pool_config, lambda: now, random.Random(seed))
    _apply(pool, name, live, now)
    max_conns = pool.max_conns
    fit = set(pool.available)
    candidates = [b for b in pool.available if not max_conns or b.in_flight < max_conns]
    prefer: str | None = None
    sticky: str | None = None
    persistence = pool.persistence
    cookie_rule = persistence.cookie if persistence is not None else None
    if cookie_rule is not None:
        prefer = cookie_rule.server_of(request.headers, pool.backends)
        cookie = cookie_rule.name.decode()
        if prefer is None:
            sticky = f"no valid {cookie} cookie: the policy picks, and the response sets one"
        elif any(b.name == prefer for b in candidates):
            sticky = f'cookie {cookie} names "{prefer}", which is fit: it wins'
        else:
            sticky = f'cookie {cookie} names "{prefer}", which is not fit: the policy picks'
    stick_bound = persistence is not None and persistence.stick is not None
    if stick_bound or pool_config.stick is not None:
        notes = "a stick table entry, if the state store has one, wins over the policy"
        sticky = f"{sticky}; {notes}" if sticky else notes
    key: str | None = None
    if pool.key_of is not None:
        spec = "client_ip" if pool_config.policy == "ip_hash" else pool_config.hash_key
        key = f"{spec} = {_text(pool.key_of(request.headers, request.target, request.client_ip))!r}"

    chosen = pool.select(request.headers, request.target, request.client_ip, (), now, prefer)
    winner = chosen if isinstance(chosen, BackendState) else None
    scores, chances = _scores(pool_config.policy, candidates, seed)
    steps: list[ServerStep] = []
    for backend in pool.backends:
        state = live.get((name, backend.name))
        reasons = _reasons(pool, backend, state, backend in fit, now)
        steps.append(
            ServerStep(
                name=backend.name,
                address=f"{backend.host}:{backend.port}"
                if ":" not in backend.host
                else f"[{backend.host}]:{backend.port}",
                weight=backend.weight,
                in_flight=backend.in_flight,
                candidate=backend in candidates,
                reasons=reasons,
                score=scores.get(backend.name),
                chance=chances.get(backend.name),
                chosen=backend is winner,
            )
        )
    fallback: str | None = None
    if winner is not None:
        outcome = f'server "{winner.name}"'
        randomised = pool_config.policy in ("random", "p2c_ewma") and len(candidates) > 1
        if randomised and prefer != winner.name:
            outcome += " (one random draw; see each server's chance)"
    elif chosen == FULL:
        queue = pool_config.queue
        outcome = (
            f"every fit server is at max_conns ({max_conns}): the request waits in the "
            f"pool's queue (up to {queue.size}, for {queue.timeout:g}s), else 503"
            if queue.size and queue.timeout
            else f"every fit server is at max_conns ({max_conns}) and there is no queue: 503"
        )
    elif pool.fallback is not None:
        fallback = pool.fallback
        outcome = f'no server is fit for traffic: fallback to pool "{fallback}"'
    else:
        outcome = "no server is fit for traffic: 503 with Retry-After"
    score, how = _HOW.get(pool_config.policy, ("", pool_config.policy))
    step = PoolStep(
        name=name,
        policy=pool_config.policy,
        score=score,
        how=how,
        key=key,
        sticky=sticky,
        servers=steps,
        winner=winner.name if winner is not None else None,
        outcome=outcome,
    )
    return step, step.winner, fallback, (len(pool.available), len(pool.backends))


def _apply(pool: Pool, name: str, live: LiveState, now: float) -> None:
    """Put `live` into the pool's own objects the way the control plane and traffic would."""
    for backend in pool.backends:
        state = live.get((name, backend.name))
        if state is None:
            continue
        backend.in_flight = state.in_flight
        if state.state != "ready":
            pool.set_state(backend.name, state.state, now)
        if not state.up:
            pool.set_active_health(backend.name, False, now)
        elif state.back_for is not None and pool.slow_start:
            backend.up_since = now - state.back_for
    outliers = pool.outliers
    if outliers is None:
        return
    for backend in pool.backends:
        state = live.get((name, backend.name))
        if state is not None and state.ejected_by:
            # a run of failures through the pool's own outlier detector, as real traffic
            # would have ejected it (max_ejection_percent applies, as in a worker)
            for _ in range(outliers.consecutive_failures):
                pool.observe(backend, True, now)


def _reasons(
    pool: Pool, backend: BackendState, state: ServerLive | None, fit: bool, now: float
) -> list[str]:
    out: list[str] = []
    if backend.admin_state == "drain":
        out.append("draining (admin): finishes what it has, gets no new requests")
    elif backend.admin_state == "maint":
        out.append("in maintenance (admin): out of rotation")
    if not backend.active_up:
        detail = f": {state.detail}" if state is not None and state.detail else ""
        out.append(f"down by active health checks{detail}")
    if backend.ejected:
        workers = state.ejected_by if state is not None else 0
        out.append(f"ejected by outlier detection in {workers} worker(s) (consecutive failures)")
    elif state is not None and state.ejected_by and pool.outliers is not None:
        out.append(
            "reported ejected, but max_ejection_percent keeps it in (too much of the pool "
            "would be out)"
        )
    if fit and pool.max_conns and backend.in_flight >= pool.max_conns:
        out.append(f"at max_conns ({backend.in_flight} in flight, max {pool.max_conns})")
    if fit and backend.up_since is not None and pool.slow_start:
        factor = slow_start_factor(backend.up_since, now, pool.slow_start)
        if factor < 1.0:
            out.append(
                f"slow start: keeps {factor:.0%} of its picks ({now - backend.up_since:g}s of "
                f"{pool.slow_start:g}s)"
            )
    return out


class _Draws(random.Random):
    """A random source that returns given numbers: drives a policy through chosen draws."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self._values = list(values)

    def random(self) -> float:
        return self._values.pop(0)


def _scores(
    policy: str, candidates: Sequence[BackendState], seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Each candidate's score under the policy, and its chance of being picked when that is
    a probability (randomised policies) or a share (rotations)."""
    n = len(candidates)
    scores: dict[str, float] = {}
    chances: dict[str, float] = {}
    if not n:
        return scores, chances
    total = sum(b.weight for b in candidates)
    if policy == "least_conn":
        scores = {b.name: b.in_flight / b.weight for b in candidates}
    elif policy == "round_robin":
        chances = {b.name: 1 / n for b in candidates}
    elif policy in ("weighted_round_robin", "random"):
        chances = {b.name: b.weight / total for b in candidates}
        if policy == "weighted_round_robin":
            scores = dict(chances)
    elif policy == "p2c_ewma":
        scores = {b.name: cost(b) for b in candidates}
        if n == 1:
            chances = {candidates[0].name: 1.0}
        else:
            # every ordered pair the policy can draw, each equally likely, decided by the
            # policy itself: the exact probability of each candidate winning
            wins = dict.fromkeys((b.name for b in candidates), 0)
            for i in range(n):
                for j in range(n - 1):
                    draws = [(i + 0.5) / n, (j + 0.5) / (n - 1)]
                    picked = P2CEwma(_Draws(draws)).pick(candidates, b"")
                    assert picked is not None
                    wins[picked.name] += 1
            chances = {k: v / (n * (n - 1)) for k, v in wins.items()}
    return scores, chances


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")
