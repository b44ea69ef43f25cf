"""The route-actions stage: a route's redirect, fixed response, rewrite and request header edits
as one named request-phase stage (and the worker builds it only for routes with actions)."""

from dataclasses import dataclass, field
from typing import Any, cast

from portico.config.load import parse_config
from portico.http.headers import Header
from portico.http.local import http1_bytes
from portico.routing import RouteActions
from portico.routing.stages import RouteActionStage, RoutedRequest
from portico.worker import route_action_stages
from tests.unit.routing.routes import router


@dataclass
class FakeHead:
    host: bytes | None
    headers: list[Header] = field(default_factory=list)


@dataclass
class FakeRequest:
    target: bytes
    head: FakeHead


def request(target: bytes, host: bytes | None = b"example.com", *headers: Header) -> FakeRequest:
    return FakeRequest(target, FakeHead(host, list(headers)))


def stage(scheme: bytes = b"http", **route: Any) -> RouteActionStage:
    if "redirect" not in route and "respond" not in route:
        route.setdefault("pool", "p")
    actions = router(route).routes[0].actions
    assert isinstance(actions, RouteActions)
    return RouteActionStage(actions, scheme)


def run(s: RouteActionStage, req: FakeRequest) -> bytes | None:
    answer = s.on_request(cast(RoutedRequest, req))
    return None if answer is None else http1_bytes(answer, False)


def test_the_stage_is_named_and_synchronous() -> None:
    s = stage(strip_prefix="/a")
    assert s.name == "route_actions"
    assert s.asynchronous is False


def test_respond_answers_with_the_prebuilt_response() -> None:
    s = stage(respond={"status": 200, "body": "ok"})
    out = run(s, request(b"/x"))
    assert out is not None
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok")


def test_redirect_uses_the_listeners_scheme_and_the_request() -> None:
    s = stage(b"https", redirect={"status": 302, "to": "{scheme}://{host}{path}{query}"})
    out = run(s, request(b"/a?q=1", b"Example.com:8443"))
    assert out is not None
    assert out.startswith(b"HTTP/1.1 302 Found\r\nLocation: https://example.com/a?q=1\r\n")


def test_rewrite_and_request_header_edits_change_the_request_in_place() -> None:
    s = stage(
        strip_prefix="/api",
        replace_prefix="/v2",
        request_headers={"set": {"X-Env": "prod"}, "remove": ["x-secret"]},
    )
    req = request(b"/api/users?id=1", b"h", (b"X-Secret", b"s"), (b"Accept", b"*/*"))
    assert run(s, req) is None
    assert req.target == b"/v2/users?id=1"
    assert req.head.headers == [(b"Accept", b"*/*"), (b"X-Env", b"prod")]
    assert s.response_actions is None


def test_a_target_outside_the_prefix_is_left_alone() -> None:
    s = stage(strip_prefix="/api")
    req = request(b"/other")
    assert run(s, req) is None
    assert req.target == b"/other"


def test_response_header_edits_are_handed_to_the_proxy() -> None:
    s = stage(response_headers={"set": {"X-Served-By": "edge"}})
    req = request(b"/a", b"h", (b"Accept", b"*/*"))
    assert run(s, req) is None
    assert req.head.headers == [(b"Accept", b"*/*")]  # the request is not touched
    assert s.response_actions is not None
    assert s.response_actions.response_headers is not None


CONFIG = """
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    routes:
{routes}
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
"""


def stages_of(routes: str) -> tuple[RouteActionStage | None, ...] | None:
    config = parse_config(CONFIG.format(routes=routes), "test.yaml")
    return route_action_stages(config.listeners[0])


def test_no_stage_when_no_route_has_actions() -> None:
    assert stages_of("      - {match: {path: /a/}, pool: app}") is None


def test_one_stage_per_route_with_actions_and_none_for_the_default_route() -> None:
    stages = stages_of(
        "      - {match: {path: /a/}, pool: app}\n"
        "      - {match: {path: /b/}, pool: app, strip_prefix: /b}\n"
    )
    assert stages is not None
    assert len(stages) == 3
    assert stages[0] is None
    assert isinstance(stages[1], RouteActionStage)
    assert stages[-1] is None  # the default route (index -1)
