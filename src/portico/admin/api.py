"""The admin API's decisions: which endpoint a request names, whether it may use it, what it
asks for, and the answer.

Owns the endpoint table (`ENDPOINTS`), the bearer-token, Host and Origin checks, the request
bodies (checked with the config file's own rules), the JSON shapes of listeners, pools and
servers (`listener_views`, `pool_views`), the error answers (``{"error", "detail"}``), the log
line of every change (who, what; the log record says when) and the OpenAPI document that
describes all of it (`OPENAPI`). Never touches a socket (`server.py` does) and never changes
Portico itself: it asks the supervisor through `SupervisorView`, whose methods make the change
and tell the workers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import mimetypes
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol, TypeVar, cast, get_args
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

from portico.config.access import NetworkEntry
from portico.config.schema import Config, ListenerConfig, PoolConfig, ServerConfig
from portico.config.units import Duration, Name, ServerName
from portico.explain import ExplainRequest, Explanation, LiveState, ServerLive, explain
from portico.explain import parse_request as parse_sample
from portico.health.readiness import Check, Readiness, readiness
from portico.observe.stats import CODE_CLASSES, MergedStats
from portico.security.access import RuntimeEntry
from portico.security.bans import Ban

__all__ = [
    "ENDPOINTS",
    "OPENAPI",
    "SCHEMAS",
    "SERVER_STATES",
    "STATIC_DIR",
    "AdminApi",
    "AdminError",
    "AdminRequest",
    "AdminResponse",
    "BadRequest",
    "Check",
    "Conflict",
    "Endpoint",
    "ErrorBody",
    "FleetDown",
    "FleetView",
    "HealthView",
    "ListenerView",
    "NotFound",
    "PoolView",
    "Readiness",
    "ReloadResult",
    "Removed",
    "ServerState",
    "ServerView",
    "StateChange",
    "SupervisorView",
    "Unprocessable",
    "WeightChange",
    "error_response",
    "listener_views",
    "pool_views",
    "readiness",
]

log = logging.getLogger("portico.admin")

STATIC_DIR: Final = Path(__file__).parent / "static"  # the dashboard's files, when installed
MUTATING: Final = frozenset({"POST", "PUT", "DELETE", "PATCH"})

ServerState = Literal["ready", "drain", "maint"]
"""ready: takes traffic; drain: finishes what it has, gets no new requests (sticky ones
neither); maint: out of rotation and out of the health checks' say (HAProxy's MAINT)."""
SERVER_STATES: Final[tuple[str, ...]] = get_args(ServerState)


# ---------------------------------------------------------------------------------------------
# What the API shows: the OpenAPI document's schemas are generated from these types

_Count = Annotated[int, Field(ge=0)]
CodeClass = Literal["none", "1xx", "2xx", "3xx", "4xx", "5xx"]
"""`portico.observe.stats.CODE_CLASSES` as a type (a unit test keeps the two equal)."""
_Responses = Annotated[
    dict[CodeClass, _Count],
    Field(description="Requests per status class (" + ", ".join(CODE_CLASSES) + ")."),
]


class HealthView(TypedDict):
    active: Literal["up", "down", "unchecked"]  # the control plane's active checks
    detail: str  # the last check's outcome, in words
    ejected_by: Annotated[  # workers whose passive health checking keeps the server out now
        int, Field(ge=0, description="Workers whose passive checks keep it out now")
    ]


class ServerView(TypedDict):
    name: str
    address: str
    weight: Annotated[int, Field(ge=1, le=256)]
    state: ServerState
    health: HealthView
    in_flight: _Count
    requests: Annotated[int, Field(ge=0, description="Attempts sent to it, retries included")]
    failures: _Count
    ejections: _Count
    responses: _Responses  # status class -> requests it answered


class PoolView(TypedDict):
    name: str
    policy: str
    max_conns: Annotated[int, Field(ge=0, description="Per server; 0: no limit")]
    queue_length: _Count
    retries: _Count
    servers: list[ServerView]


class ListenerView(TypedDict):
    name: str
    protocol: Literal["http", "https", "tcp"]
    # as bound (a port 0 in the config shows the port the kernel chose)
    address: Annotated[str, Field(description="As bound, host:port")]
    default_pool: str
    routes: list[str]
    active_connections: _Count
    connections: _Count
    bytes_received: Annotated[  # the listener's portico_client_received_bytes_total
        int, Field(ge=0, description="Bytes read from its client connections, heads included")
    ]
    bytes_sent: Annotated[
        int, Field(ge=0, description="Bytes written to its client connections, heads included")
    ]
    ratelimited: _Count
    responses: _Responses  # status class -> requests


class ReloadResult(TypedDict):
    reloaded: bool  # False: the file was refused and the running config stays
    generation: _Count  # of the config running now
    detail: str  # why it was refused, or a short confirmation


class Removed(TypedDict):
    """What `DELETE /api/pools/{pool}/servers/{server}` answers."""

    pool: str
    removed: str


class Purged(TypedDict):
    """What `POST /api/cache/purge` answers: what every worker was told to drop."""

    url: str | None
    tag: str | None
    workers: int


class AccessEntryView(TypedDict):
    """A run-time access-list entry (added here, or by an abuse ban on a client address)."""

    network: Annotated[str, Field(description="An address (/32, /128) or network")]
    action: Literal["allow", "deny"]
    listener: Annotated[str, Field(description='A listener name, or "*" for every listener')]
    expires: Annotated[float | None, Field(description="Unix time it lapses; null: never")]
    expires_in: Annotated[float | None, Field(description="Seconds until it lapses")]
    reason: str


class BanView(TypedDict):
    """A client key banned by a listener's abuse rule."""

    listener: str
    key: Annotated[str, Field(description="The client address, or the header or cookie value")]
    rule: str
    expires: float
    expires_in: float


class ErrorBody(TypedDict):
    """Every error the API answers."""

    error: Annotated[str, Field(description="What went wrong, briefly")]
    detail: Annotated[str, Field(description="Which value, and what to do")]


class FleetView(TypedDict):
    """What `GET /api/fleet` answers."""

    instance: str  # this instance's name
    instances: list[dict[str, Any]]  # the live ones (heartbeats), this one included
    changes: list[dict[str, Any]]  # the latest fleet-wide changes, newest first, with `by`


class SupervisorView(Protocol):
    """What the admin API needs from the supervisor, and nothing more.

    Mutations are called only after the API has checked that the pool and server exist (and,
    for `add_server`, that the name is free; for `remove_server`, that another server stays):
    they make the change, tell the workers, and raise an `AdminError` for anything else that
    stands in the way. The API then answers with the server as `pools()` shows it, so
    `pools()` must show a change as soon as the mutation returns.
    """

    def listeners(self) -> list[ListenerView]: ...

    def pools(self) -> list[PoolView]: ...

    def set_weight(self, pool: str, server: str, weight: int) -> None: ...

    def set_state(self, pool: str, server: str, state: ServerState) -> None: ...

    def add_server(self, pool: str, server: ServerConfig) -> None: ...

    def remove_server(self, pool: str, server: str) -> None: ...

    def purge_cache(self, url: str | None, tag: str | None) -> int:
        """Tell every worker to drop `url` and/or `tag` from its HTTP cache; the number of
        workers told."""
        ...

    def reload(self) -> Awaitable[ReloadResult]:
        """Reload the config file as SIGHUP does; the result once the new workers serve."""
        ...

    def metrics(self, accept: str) -> tuple[bytes, str]:
        """One Prometheus scrape: the body and its Content-Type, for this Accept header."""
        ...

    def running_config(self) -> Config:
        """The config the workers run now, with the API's changes (weights, servers) in it."""
        ...

    def readiness(self) -> Readiness:
        """Whether this instance should get traffic (`readiness`); cheap, never waits."""
        ...

    def fleet_change(self, change: dict[str, Any], by: dict[str, str]) -> Awaitable[None]:
        """Publish a change for every instance (this one included) and return once it
        applies here; AdminError if there is no fleet (no state.redis) or Redis is down."""
        ...

    def fleet(self) -> Awaitable[FleetView]: ...

    def fleet_reset(self, by: dict[str, str]) -> Awaitable[None]:
        """Every instance forgets the fleet's changes and reloads its file."""
        ...

    def access_entries(self) -> list[RuntimeEntry]:
        """The run-time access entries in force (lapsed ones left out)."""
        ...

    def add_access(self, entry: RuntimeEntry) -> None:
        """Add or replace an entry, on every worker (and instance, with Redis)."""
        ...

    def remove_access(self, listener: str, network: str) -> bool:
        """Remove an entry; False when there was none."""
        ...

    def bans(self) -> list[Ban]:
        """The bans in force."""
        ...

    def remove_ban(self, listener: str, key: str) -> bool:
        """Lift a ban; False when there was none."""
        ...


# ---------------------------------------------------------------------------------------------
# Errors: each names the problem (`error`) and what to do about it (`detail`)


class AdminError(Exception):
    """A request the API will not carry out; the answer is its status and JSON error."""

    status = 400
    error = "bad request"

    def __init__(
        self, detail: str, *, error: str | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if error is not None:
            self.error = error
        self.headers = headers

    def response(self) -> AdminResponse:
        return error_response(self.status, self.error, self.detail, self.headers)


class BadRequest(AdminError):
    status = 400
    error = "bad request"


class Unauthorized(AdminError):
    status = 401
    error = "token required"


class Forbidden(AdminError):
    status = 403
    error = "forbidden"


class NotFound(AdminError):
    status = 404
    error = "not found"


class MethodNotAllowed(AdminError):
    status = 405
    error = "method not allowed"


class Conflict(AdminError):
    status = 409
    error = "conflict"


class Unprocessable(AdminError):
    status = 422
    error = "invalid request"


class FleetDown(AdminError):
    status = 503
    error = "fleet unavailable"


class TooManyFailures(AdminError):
    status = 429
    error = "too many failed attempts"


# ---------------------------------------------------------------------------------------------
# Requests and answers, as plain values (server.py parses and writes the bytes)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str  # as sent, percent-encoded, without the query
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client: str = "unknown"  # "address:port", for the log
    query: str = ""  # as sent, percent-encoded, without the "?"
    user: str = ""  # the token's name ("admin" for admin.token), once checked


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, value: object, headers: tuple[tuple[str, str], ...] = ()) -> AdminResponse:
    body = json.dumps(value, ensure_ascii=False).encode() + b"\n"
    return AdminResponse(
        status, body, "application/json", (("Cache-Control", "no-store"), *headers)
    )


def error_response(
    status: int, error: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
) -> AdminResponse:
    body: ErrorBody = {"error": error, "detail": detail}
    return _json(status, body, headers)


# ---------------------------------------------------------------------------------------------
# Request bodies


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_weight(value: int) -> int:
    # the bounds of ServerConfig.weight in the config file (a unit test keeps them equal)
    if not 1 <= value <= 256:
        raise ValueError(f"must be from 1 to 256, not {value}")
    return value


class WeightChange(_Body):
    """``{"weight": 5}``: a server's new balancing weight (`"fleet": true`: every instance's)."""

    weight: Annotated[
        int,
        Field(strict=True),
        AfterValidator(_check_weight),
        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 256}),
    ]
    fleet: bool = False  # every instance (through state.redis), not only this one


def _check_purge_url(value: str | None) -> str | None:
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an absolute http(s) URL, not {_show(value)}")
    return value


class CachePurge(_Body):
    """``{"url": "http://example.com/a"}`` or ``{"tag": "product-42"}``: what to drop from
    the HTTP cache of every worker (a URL: every variant of it; a tag: every response whose
    Cache-Tag or Surrogate-Key named it)."""

    url: Annotated[str | None, AfterValidator(_check_purge_url)] = None
    tag: Annotated[str | None, Field(min_length=1, max_length=1024)] = None

    @model_validator(mode="after")
    def _something(self) -> CachePurge:
        if self.url is None and self.tag is None:
            raise ValueError('give "url", "tag" or both')
        return self


class StateChange(_Body):
    """``{"state": "drain"}``: take a server out of rotation gently, or bring it back."""

    state: ServerState
    fleet: bool = False  # every instance (through state.redis), not only this one


class AccessChange(_Body):
    """``{"address": "203.0.113.7", "action": "deny", "ttl": "10m"}``: an access-list entry
    added at run time, for one listener or (`listener` left out) every listener."""

    address: NetworkEntry
    action: Literal["allow", "deny"] = "deny"
    ttl: Duration | None = None  # null: until removed (or the instance restarts)
    listener: Name | None = None  # null: every listener


def _show(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _explain(exc: ValidationError) -> str:
    """Pydantic's errors in the words of this API: which field, what is wrong with it."""
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        value = error.get("input")
        if kind == "missing":
            out.append(f'missing field "{where}"')
            continue
        if kind == "extra_forbidden":
            out.append(f'unknown field "{where}"')
            continue
        if kind == "value_error":
            message = str(ctx.get("error", error["msg"].removeprefix("Value error, ")))
        elif kind == "literal_error":
            message = f"must be one of: {ctx.get('expected', '')}, not {_show(value)}"
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            message = f"must be a whole number, not {_show(value)}"
        elif kind in ("string_type", "str_type"):
            message = f"must be text, not {_show(value)}"
        else:
            message = error["msg"][:1].lower() + error["msg"][1:]
        out.append(f"{where}: {message}" if where else message)
    return "; ".join(out)


def _json_object(request: AdminRequest, example: str) -> dict[str, Any]:
    if not request.body.strip():
        raise BadRequest(f"send a JSON object, e.g. {example}", error="missing body")
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"{exc}; send a JSON object, e.g. {example}", error="body is not JSON"
        ) from None
    if not isinstance(value, dict):
        raise Unprocessable(
            f"got {_show(value)[:80]}; send a JSON object, e.g. {example}",
            error="body is not a JSON object",
        )
    return value


# ---------------------------------------------------------------------------------------------
# The JSON shapes, from the config and the merged counters (for the supervisor's `pools()`)


def _responses_by(stats: MergedStats, *keys: int) -> dict[tuple[str, ...], dict[CodeClass, int]]:
    """Requests per status class, grouped by the `requests` labels at positions `keys`."""
    out: dict[tuple[str, ...], dict[CodeClass, int]] = {}
    for labels, value in stats.counters.get("requests", {}).items():
        group = out.setdefault(tuple(labels[k] for k in keys), {})
        code_class = cast(CodeClass, labels[4])  # one of CODE_CLASSES: the stats made it
        group[code_class] = group.get(code_class, 0) + int(value)
    return out


def _count(stats: MergedStats, metric: str, *labels: str) -> int:
    return int(stats.value(metric, *labels) or 0)


def listener_views(
    listeners: Iterable[ListenerConfig], addresses: Mapping[str, str], stats: MergedStats
) -> list[ListenerView]:
    """What `GET /api/listeners` shows: each listener's config, the address it is bound to
    (`addresses`, by listener name) and its counters summed over the workers."""
    responses = _responses_by(stats, 0)
    out: list[ListenerView] = []
    for listener in listeners:
        name = listener.name
        out.append(
            {
                "name": name,
                "protocol": listener.protocol,
                "address": addresses.get(name, str(listener.bind)),
                "default_pool": listener.default_pool,
                "routes": [
                    route.name if route.name is not None else f"routes[{i}]"
                    for i, route in enumerate(listener.routes)
                ],
                "active_connections": _count(stats, "active_connections", name),
                "connections": _count(stats, "connections", name),
                "bytes_received": _count(stats, "client_received_bytes", name),
                "bytes_sent": _count(stats, "client_sent_bytes", name),
                "ratelimited": _count(stats, "ratelimited", name),
                "responses": responses.get((name,), {}),
            }
        )
    return out


def pool_views(
    pools: Mapping[str, PoolConfig],
    stats: MergedStats,
    *,
    health: Mapping[tuple[str, str], tuple[bool, str]] | None = None,
    states: Mapping[tuple[str, str], ServerState] | None = None,
) -> list[PoolView]:
    """What `GET /api/pools` shows. `pools`: the pools as they run now (with the servers and
    weights the API changed); `health`: (pool, server) -> (up, detail) from the active
    checks, for the servers that have them; `states`: (pool, server) -> admin state, for the
    servers not "ready"."""
    health = health or {}
    states = states or {}
    responses = _responses_by(stats, 2, 3)
    out: list[PoolView] = []
    for name, pool in pools.items():
        servers: list[ServerView] = []
        for server in pool.servers:
            key = (name, server.name)
            checked = health.get(key)
            active: Literal["up", "down", "unchecked"] = "unchecked"
            detail = "no active checks"
            if checked is not None:
                active, detail = ("up" if checked[0] else "down"), checked[1]
            servers.append(
                {
                    "name": server.name,
                    "address": str(server.address),
                    "weight": server.weight,
                    "state": states.get(key, "ready"),
                    "health": {
                        "active": active,
                        "detail": detail,
                        "ejected_by": _count(stats, "backend_ejected", *key),
                    },
                    "in_flight": _count(stats, "backend_in_flight", *key),
                    "requests": _count(stats, "backend_requests", *key),
                    "failures": _count(stats, "backend_failures", *key),
                    "ejections": _count(stats, "backend_ejections", *key),
                    "responses": responses.get(key, {}),
                }
            )
        out.append(
            {
                "name": name,
                "policy": pool.policy,
                "max_conns": pool.max_conns,
                "queue_length": _count(stats, "pool_queue_length", name),
                "retries": _count(stats, "retries", name),
                "servers": servers,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One method on one path template (OpenAPI's spelling: ``/api/pools/{pool}``)."""

    method: str
    template: str
    action: str  # the AdminApi method that answers
    public: bool = False  # answered without the token (scrapers, the dashboard's files)
    probe: bool = False  # a health probe: public, and answered whatever the Host header says

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.template.split("/")[1:])


ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("GET", "/api/listeners", "get_listeners"),
    Endpoint("GET", "/api/pools", "get_pools"),
    Endpoint("GET", "/api/pools/{pool}", "get_pool"),
    Endpoint("PUT", "/api/pools/{pool}/servers/{server}/weight", "put_weight"),
    Endpoint("PUT", "/api/pools/{pool}/servers/{server}/state", "put_state"),
    Endpoint("POST", "/api/pools/{pool}/servers", "post_server"),
    Endpoint("DELETE", "/api/pools/{pool}/servers/{server}", "delete_server"),
    Endpoint("POST", "/api/reload", "post_reload"),
    Endpoint("POST", "/api/cache/purge", "post_purge"),
    Endpoint("GET", "/api/fleet", "get_fleet"),
    Endpoint("POST", "/api/fleet/reset", "post_fleet_reset"),
    Endpoint("POST", "/api/explain", "post_explain"),
    Endpoint("GET", "/api/access", "get_access"),
    Endpoint("POST", "/api/access", "post_access"),
    Endpoint("DELETE", "/api/access/{listener}/{network}", "delete_access"),
    Endpoint("GET", "/api/bans", "get_bans"),
    Endpoint("DELETE", "/api/bans/{listener}/{key}", "delete_ban"),
    Endpoint("GET", "/metrics", "get_metrics", public=True),
    Endpoint("GET", "/healthz", "get_healthz", public=True, probe=True),
    Endpoint("GET", "/readyz", "get_readyz", public=True, probe=True),
    Endpoint("GET", "/openapi.json", "get_openapi"),
    Endpoint("GET", "/", "get_index", public=True),
    Endpoint("GET", "/static/{path}", "get_static", public=True),  # {path} may hold "/"
)


_PROBES: Final = {e.template: e.action for e in ENDPOINTS if e.probe}


def _match(endpoint: Endpoint, segments: list[str]) -> dict[str, str] | None:
    """The path parameters (still percent-encoded) if `segments` fit the endpoint's template."""
    pattern = endpoint.segments
    rest = pattern[-1] == "{path}"
    if len(segments) != len(pattern) and not (rest and len(segments) >= len(pattern)):
        return None
    params: dict[str, str] = {}
    for i, part in enumerate(pattern):
        if part.startswith("{"):
            if rest and part == "{path}":
                params["path"] = "/".join(segments[i:])  # each segment decoded later
                return params
            if not segments[i]:
                return None
            params[part[1:-1]] = segments[i]
        elif part != segments[i]:
            return None
    return params


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(f"{segment!r} is not percent-encoded UTF-8", error="bad path") from None


def _is_local_name(host: str) -> bool:
    """True for a Host header naming an IP address or localhost (with or without a port)."""
    host = host.strip()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


_PLACEHOLDER = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Portico</title></head>
<body><h1>Portico</h1>
<p>The dashboard is not installed. The admin API is described at
<a href="/openapi.json">/openapi.json</a>; metrics are at <a href="/metrics">/metrics</a>.</p>
</body></html>
"""

Action = Callable[["AdminRequest", dict[str, str]], Awaitable[AdminResponse]]


class AdminApi:
    """Answers one admin request at a time; see the module docstring for what it decides.

    `token`: when set, every endpoint but the public ones (`/metrics`, `/` and `/static/`)
    needs ``Authorization: Bearer <token>``. When it is None, anyone who can connect may use
    the API, so requests must then name the admin listener by address (``Host: 127.0.0.1:9090``
    or ``localhost``): a host name could be an attacker's, re-pointed at 127.0.0.1 (DNS
    rebinding), letting a web page in the operator's browser read the API.
    """

    def __init__(
        self,
        view: SupervisorView,
        token: str | None,
        static_dir: Path | None = STATIC_DIR,
        users: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`users`: named tokens (name -> token), accepted as `token` is (named "admin")."""
        self.view = view
        named = {**({"admin": token} if token else {}), **(users or {})}
        self._tokens = [(name, secret.encode("utf-8")) for name, secret in named.items()]
        self._token = b"" if self._tokens else None  # None: the API is open
        self.failures = AuthFailures(clock)
        self._static = static_dir
        self._openapi = json.dumps(OPENAPI, indent=2).encode() + b"\n"
        self._actions: dict[str, Action] = {
            "get_listeners": self.get_listeners,
            "get_pools": self.get_pools,
            "get_pool": self.get_pool,
            "put_weight": self.put_weight,
            "put_state": self.put_state,
            "post_server": self.post_server,
            "delete_server": self.delete_server,
            "post_reload": self.post_reload,
            "post_purge": self.post_purge,
            "get_fleet": self.get_fleet,
            "post_fleet_reset": self.post_fleet_reset,
            "post_explain": self.post_explain,
            "get_access": self.get_access,
            "post_access": self.post_access,
            "delete_access": self.delete_access,
            "get_bans": self.get_bans,
            "delete_ban": self.delete_ban,
            "get_metrics": self.get_metrics,
            "get_healthz": self.get_healthz,
            "get_readyz": self.get_readyz,
            "get_openapi": self.get_openapi,
            "get_index": self.get_index,
            "get_static": self.get_static,
        }

    @property
    def is_open(self) -> bool:
        """No token configured: anyone who can connect may use the API."""
        return self._token is None

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """The answer to `request`; never raises. A refused change is logged as a warning."""
        try:
            return await self._dispatch(request)
        except AdminError as exc:
            if request.method in MUTATING or exc.status in (401, 403, 429):
                log.warning(
                    "admin: %s %s %s refused (%d %s): %s",
                    request.client,
                    request.method,
                    request.path,
                    exc.status,
                    exc.error,
                    exc.detail,
                )
            return exc.response()
        except Exception:
            log.exception("admin: %s %s %s failed", request.client, request.method, request.path)
            return error_response(500, "internal error", "the Portico log has the details")

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        method = "GET" if request.method == "HEAD" else request.method
        if method == "GET" and request.path in _PROBES:
            # load balancers and keepalived probe by address or by name: no Host check, no
            # token, and nothing else looked at (cheap, and reveals nothing but up or not)
            return await self._actions[_PROBES[request.path]](request, {})
        if self._token is None:
            host = request.headers.get("host")
            if host is not None and not _is_local_name(host):
                raise Forbidden(
                    f"Host {host!r} is not an IP address or localhost: without admin.token "
                    "the admin API answers only requests that name it by address "
                    "(protection against DNS rebinding); set a token to use host names",
                    error="host not allowed",
                )
        if not request.path.startswith("/"):
            raise BadRequest(f"{request.path!r} is not a path", error="bad path")
        segments = request.path.split("/")[1:]
        matches = [(e, p) for e in ENDPOINTS if (p := _match(e, segments)) is not None]
        chosen = next(((e, p) for e, p in matches if e.method == method), None)
        public = chosen is not None and chosen[0].public
        if not public:
            user = self._check_token(request)
            if user:
                request = replace(request, user=user)
        if chosen is None:
            if not matches:
                raise NotFound(f"no endpoint at {request.path}; see /openapi.json")
            methods = {e.method for e, _ in matches}
            allowed = sorted(methods | {"HEAD"} if "GET" in methods else methods)
            raise MethodNotAllowed(
                f"{request.path} answers {', '.join(allowed)}, not {request.method}",
                headers=(("Allow", ", ".join(allowed)),),
            )
        if method in MUTATING:
            _check_origin(request)
        endpoint, params = chosen
        if not endpoint.template.endswith("{path}"):
            params = {name: _decode(value) for name, value in params.items()}
        return await self._actions[endpoint.action](request, params)

    def _check_token(self, request: AdminRequest) -> str:
        """The name of the token the request carries ("" when the API is open). An address
        with `AuthFailures.LIMIT` failed attempts within `AuthFailures.WINDOW` gets 429 without
        its guess being checked."""
        if self._token is None:
            return ""
        host = request.client.rpartition(":")[0] or request.client
        wait = self.failures.wait(host)
        if wait > 0:
            raise TooManyFailures(
                f"{AuthFailures.LIMIT} failed attempts from {host} within "
                f"{AuthFailures.WINDOW:g}s: try again in {wait:.0f}s",
                headers=(("Retry-After", str(max(1, round(wait)))),),
            )
        try:
            return self._compare_token(request)
        except AdminError:
            self.failures.failed(host)
            raise

    def _compare_token(self, request: AdminRequest) -> str:
        challenge = (("WWW-Authenticate", 'Bearer realm="portico"'),)
        header = request.headers.get("authorization")
        if header is None:
            raise Unauthorized(
                'send the admin token as "Authorization: Bearer <token>"', headers=challenge
            )
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized(
                'the Authorization header must be "Bearer <token>"', headers=challenge
            )
        # constant time: how much of a guess matched must not show in how long a refusal takes
        # (every token is compared, whichever matched); the header arrived as bytes read as
        # latin-1: compare those bytes with the UTF-8 tokens
        given = credentials.strip().encode("latin-1")
        found = ""
        for name, secret in self._tokens:
            if hmac.compare_digest(given, secret):
                found = name
        if not found:
            raise Forbidden("the token is not the admin token", error="wrong token")
        return found

    # -- reading ---------------------------------------------------------------------------------

    async def get_listeners(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return _json(200, self.view.listeners())

    async def get_pools(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return _json(200, self.view.pools())

    async def get_pool(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return _json(200, self._pool(params["pool"]))

    async def get_metrics(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        body, content_type = self.view.metrics(request.headers.get("accept", ""))
        return AdminResponse(200, body, content_type, (("Cache-Control", "no-store"),))

    async def get_healthz(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        """Alive: the supervisor's event loop answers (for restarts and VRRP tracking)."""
        return _json(200, {"status": "ok"})

    async def get_readyz(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        """Ready for traffic: 200, or 503 with the failing checks (for balancers in front)."""
        result = self.view.readiness()
        return _json(200 if result["ready"] else 503, result)

    async def get_openapi(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return AdminResponse(200, self._openapi, "application/json")

    async def get_index(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        page = self._static_file(("index.html",))
        if page is not None:
            return page
        return AdminResponse(200, _PLACEHOLDER, "text/html; charset=utf-8")

    async def get_static(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        parts = tuple(_decode(part) for part in params["path"].split("/"))
        found = self._static_file(parts)
        if found is None:
            raise NotFound(f"no file {request.path}", error="no such file")
        return found

    # -- changing ---------------------------------------------------------------------------------

    async def put_weight(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        pool, server = params["pool"], params["server"]
        self._server(pool, server)
        body = _parse(WeightChange, _json_object(request, '{"weight": 5}'))
        weight = body.weight
        what = f"set the weight of server {server!r} of pool {pool!r} to {weight}"
        if _fleet_wide(request, body.fleet):
            change = {"kind": "weight", "pool": pool, "server": server, "weight": weight}
            await self.view.fleet_change(change, self._by(request))
            what += ", fleet-wide"
        else:
            self.view.set_weight(pool, server, weight)
        _log_change(request, what)
        return _json(200, self._server(pool, server))

    async def put_state(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        pool, server = params["pool"], params["server"]
        self._server(pool, server)
        body = _parse(StateChange, _json_object(request, '{"state": "drain"}'))
        state = body.state
        what = f"set server {server!r} of pool {pool!r} to {state}"
        if _fleet_wide(request, body.fleet):
            change = {"kind": "state", "pool": pool, "server": server, "state": state}
            await self.view.fleet_change(change, self._by(request))
            what += ", fleet-wide"
        else:
            self.view.set_state(pool, server, state)
        _log_change(request, what)
        return _json(200, self._server(pool, server))

    async def post_server(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        pool = params["pool"]
        found = self._pool(pool)
        example = '{"address": "127.0.0.1:9004", "weight": 1, "name": "s4"}'
        server = _parse(ServerConfig, _json_object(request, example))
        if any(s["name"] == server.name for s in found["servers"]):
            raise Conflict(
                f'pool "{pool}" already has a server named "{server.name}": choose another '
                "name, or change that server's weight or state instead",
                error="server exists",
            )
        what = (
            f"added server {server.name!r} ({server.address}, weight {server.weight}) "
            f"to pool {pool!r}"
        )
        if _fleet_wide(request, False):
            change = {"kind": "add_server", "pool": pool, "new": server.model_dump(mode="json")}
            await self.view.fleet_change(change, self._by(request))
            what += ", fleet-wide"
        else:
            self.view.add_server(pool, server)
        _log_change(request, what)
        return _json(201, self._server(pool, server.name))

    async def delete_server(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        pool, server = params["pool"], params["server"]
        self._server(pool, server)
        if len(self._pool(pool)["servers"]) == 1:
            raise Unprocessable(
                f'"{server}" is the only server of pool "{pool}": add another one first',
                error="last server",
            )
        what = f"removed server {server!r} from pool {pool!r}"
        if _fleet_wide(request, False):
            change = {"kind": "remove_server", "pool": pool, "server": server}
            await self.view.fleet_change(change, self._by(request))
            what += ", fleet-wide"
        else:
            self.view.remove_server(pool, server)
        _log_change(request, what)
        removed: Removed = {"pool": pool, "removed": server}
        return _json(200, removed)

    async def post_purge(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        example = '{"url": "http://example.com/page"} or {"tag": "product-42"}'
        purge = _parse(CachePurge, _json_object(request, example))
        workers = self.view.purge_cache(purge.url, purge.tag)
        what = " and ".join(
            f"{name} {value!r}" for name, value in (("url", purge.url), ("tag", purge.tag)) if value
        )
        _log_change(request, f"purged {what} from the cache of {workers} workers")
        purged: Purged = {"url": purge.url, "tag": purge.tag, "workers": workers}
        return _json(202, purged)

    async def post_reload(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        _log_change(request, "asked for a reload")
        result = await self.view.reload()
        if not result["reloaded"]:
            log.warning("admin: %s: reload refused: %s", request.client, result["detail"])
            return _json(422, {"error": "reload refused", **result})
        _log_change(request, f"reloaded the config: generation {result['generation']}")
        return _json(200, result)

    async def get_fleet(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        """The live instances and the latest fleet-wide changes, with who made them."""
        return _json(200, await self.view.fleet())

    async def post_fleet_reset(
        self, request: AdminRequest, params: dict[str, str]
    ) -> AdminResponse:
        """Every instance forgets the fleet's changes and reloads its file."""
        await self.view.fleet_reset(self._by(request))
        _log_change(request, "reset the fleet's changes (every instance reloads its file)")
        return _json(200, {"reset": True})

    def _by(self, request: AdminRequest) -> dict[str, str]:
        """Who makes a change, as the fleet's log records it: the client's address and the
        name of the token used (admin.users, "admin" for admin.token, "anonymous" without
        one); an X-Portico-User header adds the person the token holder says acts."""
        by = {"client": request.client, "user": request.user or "anonymous"}
        claimed = request.headers.get("x-portico-user", "").strip()
        if claimed:
            if len(claimed) > 64 or not claimed.isprintable():
                raise BadRequest("X-Portico-User is at most 64 printable characters")
            by["on_behalf_of"] = claimed
        return by

    async def post_explain(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        """`portico explain` with this instance's live server state; changes nothing."""
        example = '{"request": "GET https://shop.example.com/cart", "headers": ["Cookie: a=1"]}'
        body = _parse(ExplainRequest, _json_object(request, example))
        try:
            sample = parse_sample(body.request, body.headers, body.client_ip)
            result = explain(
                self.view.running_config(),
                sample,
                listener=body.listener,
                state=live_state(self.view.pools()),
                live=True,
            )
        except ValueError as exc:
            raise Unprocessable(str(exc), error="cannot explain") from None
        return _json(200, result.model_dump(mode="json"))

    async def get_access(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return _json(200, [_access_view(e) for e in self.view.access_entries()])

    async def post_access(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        example = '{"address": "203.0.113.7", "action": "deny", "ttl": "10m"}'
        change = _parse(AccessChange, _json_object(request, example))
        listener = change.listener or "*"
        if listener != "*":
            self._listener(listener)
        expires = time.time() + change.ttl if change.ttl is not None else None
        entry = RuntimeEntry(change.address, change.action, listener, expires, "admin")
        self.view.add_access(entry)
        lasting = f"for {change.ttl:g}s" if change.ttl is not None else "until removed"
        where = "every listener" if listener == "*" else f"listener {listener!r}"
        _log_change(request, f"{change.action} {change.address} on {where} {lasting}")
        return _json(201, _access_view(entry))

    async def delete_access(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        listener = params["listener"]
        try:
            network = str(parse_network_entry(params["network"]))
        except ValueError as exc:
            raise BadRequest(str(exc), error="bad address") from None
        if not self.view.remove_access(listener, network):
            raise NotFound(
                f"no run-time entry {network} for {listener!r}; GET /api/access lists them",
                error="no such entry",
            )
        _log_change(request, f"removed the access entry {network} of {listener!r}")
        return _json(200, {"listener": listener, "removed": network})

    async def get_bans(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        return _json(200, [_ban_view(b) for b in self.view.bans()])

    async def delete_ban(self, request: AdminRequest, params: dict[str, str]) -> AdminResponse:
        listener, key = params["listener"], params["key"]
        if not self.view.remove_ban(listener, key):
            raise NotFound(
                f"{key!r} is not banned on {listener!r}; GET /api/bans lists the bans",
                error="no such ban",
            )
        _log_change(request, f"lifted the ban of {key!r} on listener {listener!r}")
        return _json(200, {"listener": listener, "removed": key})

    # -- helpers ---------------------------------------------------------------------------------

    def _listener(self, name: str) -> ListenerView:
        listeners = self.view.listeners()
        for listener in listeners:
            if listener["name"] == name:
                return listener
        known = ", ".join(item["name"] for item in listeners)
        raise NotFound(
            f'no listener named "{name}" (listeners are: {known})', error="no such listener"
        )

    def _pool(self, name: str) -> PoolView:
        pools = self.view.pools()
        for pool in pools:
            if pool["name"] == name:
                return pool
        known = ", ".join(p["name"] for p in pools)
        raise NotFound(f'no pool named "{name}" (pools are: {known})', error="no such pool")

    def _server(self, pool: str, name: str) -> ServerView:
        servers = self._pool(pool)["servers"]
        for server in servers:
            if server["name"] == name:
                return server
        known = ", ".join(s["name"] for s in servers)
        raise NotFound(
            f'pool "{pool}" has no server named "{name}" (its servers are: {known})',
            error="no such server",
        )

    def _static_file(self, parts: tuple[str, ...]) -> AdminResponse | None:
        """A file under the static folder, or None; never one outside it (no "..", no
        hidden files, no symbolic link out)."""
        root = self._static
        if root is None or not parts:
            return None
        for part in parts:
            if not part or part.startswith(".") or "/" in part or "\\" in part or "\0" in part:
                return None
        try:
            base = root.resolve(strict=True)
            path = base.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not path.is_relative_to(base) or not path.is_file():
            return None
        try:
            body = path.read_bytes()  # small local files: the control plane may block
        except OSError:
            return None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in (
            "application/javascript",
            "application/json",
            "image/svg+xml",
        ):
            content_type += "; charset=utf-8"
        return AdminResponse(200, body, content_type, (("Cache-Control", "no-cache"),))


def parse_network_entry(text: str) -> str:
    """An address or network from a path segment (``203.0.113.0%2F24`` decoded), canonical."""
    from portico.config.access import check_network_entry

    return check_network_entry(text)


def _access_view(entry: RuntimeEntry) -> AccessEntryView:
    expires = entry.expires
    return {
        "network": entry.network,
        "action": entry.action,
        "listener": entry.scope,
        "expires": expires,
        "expires_in": None if expires is None else round(max(0.0, expires - time.time()), 3),
        "reason": entry.reason,
    }


def _ban_view(ban: Ban) -> BanView:
    return {
        "listener": ban.listener,
        "key": ban.key,
        "rule": ban.rule,
        "expires": ban.expires,
        "expires_in": round(max(0.0, ban.expires - time.time()), 3),
    }


class AuthFailures:
    """Failed token attempts per client address: past `LIMIT` within `WINDOW` seconds, the
    address is refused (429) without its guess being checked, until the oldest failure is
    `WINDOW` old. Bounded: at most `MAX_CLIENTS` addresses are remembered."""

    LIMIT: Final = 10
    WINDOW: Final = 60.0
    MAX_CLIENTS: Final = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def wait(self, client: str) -> float:
        """Seconds `client` must wait before trying again (0: it may try now)."""
        times = self._failures.get(client)
        if times is None:
            return 0.0
        now = self.clock()
        while times and now - times[0] >= self.WINDOW:
            times.popleft()
        if not times:
            del self._failures[client]
            return 0.0
        if len(times) < self.LIMIT:
            return 0.0
        return self.WINDOW - (now - times[0])

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.MAX_CLIENTS:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque(maxlen=self.LIMIT)).append(self.clock())


def live_state(pools: Iterable[PoolView]) -> LiveState:
    """The servers' live state, as `explain` takes it, from what `GET /api/pools` shows."""
    return {
        (pool["name"], server["name"]): ServerLive(
            up=server["health"]["active"] != "down",
            detail=server["health"]["detail"],
            state=server["state"],
            ejected_by=server["health"]["ejected_by"],
            in_flight=server["in_flight"],
        )
        for pool in pools
        for server in pool["servers"]
    }


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(_explain(exc), error="invalid body") from None


def _check_origin(request: AdminRequest) -> None:
    """Refuse a change a web page from another origin asks for (CSRF): browsers say where a
    request comes from in Origin and Sec-Fetch-Site, and a form may POST cross-origin."""
    headers = request.headers
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"Sec-Fetch-Site is {site!r}", error="cross-origin request refused")
    origin = headers.get("origin")
    if origin is None:
        return
    host = headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.strip().lower():
        raise Forbidden(
            f"Origin {origin!r} is not this admin listener ({host!r})",
            error="cross-origin request refused",
        )


def _fleet_wide(request: AdminRequest, asked: bool) -> bool:
    """A change for every instance: `"fleet": true` in the body, or `?fleet=true` (or
    `?fleet`, `=1`, `=yes`) in the query."""
    if asked:
        return True
    for part in request.query.split("&"):
        name, _, value = part.partition("=")
        if name == "fleet":
            return value.lower() in ("", "1", "true", "yes")
    return False


def _log_change(request: AdminRequest, what: str) -> None:
    who = f"{request.client} ({request.user})" if request.user else request.client
    log.info("admin: %s %s", who, what)


# ---------------------------------------------------------------------------------------------
# The OpenAPI document (served at /openapi.json; a unit test checks it against ENDPOINTS). Its
# schemas are generated (`SCHEMAS`); the paths name them and say what each endpoint does.

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_AUTH_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
}
_POOL = {"$ref": "#/components/parameters/pool"}
_SERVER = {"$ref": "#/components/parameters/server"}
_LISTENER = {"$ref": "#/components/parameters/listener"}
_LISTENER_OR_ALL = {"$ref": "#/components/parameters/listenerOrAll"}
_NETWORK = {"$ref": "#/components/parameters/network"}
_BAN_KEY = {"$ref": "#/components/parameters/banKey"}


SCHEMAS: Final[dict[str, tuple[Any, JsonSchemaMode]]] = {
    # component name -> the type the API answers with (serialization) or validates (validation)
    "Listener": (ListenerView, "serialization"),
    "Pool": (PoolView, "serialization"),
    "Server": (ServerView, "serialization"),
    "Health": (HealthView, "serialization"),
    "ReloadResult": (ReloadResult, "serialization"),
    "Readiness": (Readiness, "serialization"),
    "Fleet": (FleetView, "serialization"),
    "Removed": (Removed, "serialization"),
    "Purged": (Purged, "serialization"),
    "CachePurge": (CachePurge, "validation"),
    "Error": (ErrorBody, "serialization"),
    "NewServer": (ServerConfig, "validation"),  # the config file's own server model
    "WeightChange": (WeightChange, "validation"),
    "StateChange": (StateChange, "validation"),
    "ExplainRequest": (ExplainRequest, "validation"),
    "Explanation": (Explanation, "serialization"),
    "AccessEntry": (AccessEntryView, "serialization"),
    "AccessChange": (AccessChange, "validation"),
    "Ban": (BanView, "serialization"),
}
"""The OpenAPI document's schemas: generated from the types the API answers with and the
models it validates request bodies with, so the document cannot drift from them."""


def _component_schemas() -> dict[str, Any]:
    """JSON Schemas of `SCHEMAS`, under their component names, referring to each other as
    ``#/components/schemas/NAME``."""
    generator = GenerateJsonSchema(ref_template="#/components/schemas/{model}")
    inputs = [(name, mode, TypeAdapter(tp).core_schema) for name, (tp, mode) in SCHEMAS.items()]
    found, definitions = generator.generate_definitions(inputs)
    # pydantic names definitions after the Python types: give them their component names
    renamed: dict[str, str] = {}
    for (name, _), schema in found.items():
        ref = schema.get("$ref")
        if ref is not None:
            renamed[ref.rsplit("/", 1)[1]] = name
    out: dict[str, Any] = {}
    for key, schema in definitions.items():
        name = renamed.get(key, key)
        out[name] = {**schema, "title": name}
    for (name, _), schema in found.items():
        if "$ref" not in schema:
            out[name] = schema
    text = json.dumps(out)
    for old, new in renamed.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    result: dict[str, Any] = json.loads(text)
    return result


def _json_body(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _ref(schema), "example": example}},
    }


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Portico admin API",
        "version": "1",
        "description": (
            "The live state of a Portico instance and changes to it, served by the supervisor "
            "on the admin listener (admin.bind, 127.0.0.1:9090 by default). When admin.token "
            "(or the variable named by admin.token_env, or a named token of admin.users) is "
            "set, every endpoint except /metrics, /healthz, /readyz "
            "and the dashboard's files needs `Authorization: Bearer <token>`. Without a token, "
            "requests must name the listener by IP address or localhost in Host. Changes made "
            "here apply to the running workers at once and are logged; they are not written to "
            "the config file, so a reload or restart goes back to what the file says. Every "
            'error is a JSON object {"error": ..., "detail": ...}.'
        ),
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/listeners": {
            "get": {
                "operationId": "getListeners",
                "summary": "Every listener, with its counters",
                "responses": {
                    "200": _ok("The listeners", {"type": "array", "items": _ref("Listener")}),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/pools": {
            "get": {
                "operationId": "getPools",
                "summary": "Every pool and its servers, with live state",
                "responses": {
                    "200": _ok("The pools", {"type": "array", "items": _ref("Pool")}),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/pools/{pool}": {
            "parameters": [_POOL],
            "get": {
                "operationId": "getPool",
                "summary": "One pool and its servers, with live state",
                "responses": {
                    "200": _ok("The pool", _ref("Pool")),
                    **_AUTH_ERRORS,
                    "404": _error("No such pool"),
                },
            },
        },
        "/api/pools/{pool}/servers": {
            "parameters": [_POOL],
            "post": {
                "operationId": "addServer",
                "summary": "Add a server to a pool",
                "description": "The name defaults to the address. The server gets traffic at "
                "once; passive health checking applies to it, active checks do not (they "
                "follow the config file).",
                "requestBody": _json_body(
                    "NewServer", {"address": "127.0.0.1:9004", "weight": 1, "name": "s4"}
                ),
                "responses": {
                    "201": _ok("The server, as added", _ref("Server")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "404": _error("No such pool"),
                    "409": _error("The pool has a server of that name"),
                    "422": _error("A field is invalid"),
                },
            },
        },
        "/api/pools/{pool}/servers/{server}": {
            "parameters": [_POOL, _SERVER],
            "delete": {
                "operationId": "removeServer",
                "summary": "Remove a server from a pool",
                "description": "Requests in flight on it finish; no new ones are sent to it.",
                "responses": {
                    "200": _ok("The server was removed", _ref("Removed")),
                    **_AUTH_ERRORS,
                    "404": _error("No such pool or server"),
                    "422": _error("It is the pool's last server"),
                },
            },
        },
        "/api/pools/{pool}/servers/{server}/weight": {
            "parameters": [_POOL, _SERVER],
            "put": {
                "operationId": "setWeight",
                "summary": "Change a server's balancing weight",
                "requestBody": _json_body("WeightChange", {"weight": 5}),
                "responses": {
                    "200": _ok("The server, changed", _ref("Server")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "404": _error("No such pool or server"),
                    "422": _error("The weight is invalid"),
                },
            },
        },
        "/api/pools/{pool}/servers/{server}/state": {
            "parameters": [_POOL, _SERVER],
            "put": {
                "operationId": "setState",
                "summary": "Put a server in ready, drain or maint state",
                "description": "ready: takes traffic. drain: finishes what it has and gets no "
                "new requests. maint: out of rotation whatever its health checks say.",
                "requestBody": _json_body("StateChange", {"state": "drain"}),
                "responses": {
                    "200": _ok("The server, changed", _ref("Server")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "404": _error("No such pool or server"),
                    "422": _error("The state is invalid"),
                },
            },
        },
        "/api/fleet": {
            "get": {
                "operationId": "getFleet",
                "summary": "The live instances of the fleet and its latest changes",
                "description": "With state.redis: every instance sharing that Redis, from "
                "their heartbeats (gone after 3 s without one), and the latest fleet-wide "
                'changes (made with ?fleet=true or "fleet": true), newest first, each with '
                "who made it (instance, client address, user) and when.",
                "responses": {
                    "200": _ok("The fleet", _ref("Fleet")),
                    **_AUTH_ERRORS,
                    "400": _error("No state.redis: no fleet"),
                    "503": _error("Redis does not answer"),
                },
            }
        },
        "/api/fleet/reset": {
            "post": {
                "operationId": "resetFleet",
                "summary": "Forget every fleet-wide change: each instance reloads its file",
                "responses": {
                    "200": _ok(
                        "Published; every instance reloads",
                        {"type": "object", "properties": {"reset": {"const": True}}},
                    ),
                    **_AUTH_ERRORS,
                    "400": _error("No state.redis: no fleet"),
                    "503": _error("Redis does not answer"),
                },
            }
        },
        "/api/access": {
            "get": {
                "operationId": "getAccess",
                "summary": "The run-time access-list entries in force",
                "description": "Entries added through this API (and bans of client addresses "
                "are listed under /api/bans). The config's own lists are not shown.",
                "responses": {
                    "200": _ok("The entries", {"type": "array", "items": _ref("AccessEntry")}),
                    **_AUTH_ERRORS,
                },
            },
            "post": {
                "operationId": "addAccess",
                "summary": "Allow or deny an address or network at run time, with a TTL",
                "description": "Applies at once on every worker (and, with state.redis, every "
                "instance), before the config's lists: a deny closes new connections from it "
                "at accept and refuses its requests behind trusted proxies. Lasts until its "
                "ttl, its removal, or the instance's restart (a reload keeps it).",
                "requestBody": _json_body(
                    "AccessChange", {"address": "203.0.113.7", "action": "deny", "ttl": "10m"}
                ),
                "responses": {
                    "201": _ok("The entry", _ref("AccessEntry")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "404": _error("No such listener"),
                    "422": _error("A field is invalid"),
                },
            },
        },
        "/api/access/{listener}/{network}": {
            "parameters": [_LISTENER_OR_ALL, _NETWORK],
            "delete": {
                "operationId": "removeAccess",
                "summary": "Remove a run-time access entry",
                "responses": {
                    "200": _ok("Removed", {"type": "object"}),
                    **_AUTH_ERRORS,
                    "404": _error("No such entry"),
                },
            },
        },
        "/api/bans": {
            "get": {
                "operationId": "getBans",
                "summary": "Client keys banned by the listeners' abuse rules",
                "responses": {
                    "200": _ok("The bans", {"type": "array", "items": _ref("Ban")}),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/bans/{listener}/{key}": {
            "parameters": [_LISTENER, _BAN_KEY],
            "delete": {
                "operationId": "liftBan",
                "summary": "Lift a ban, on every worker and instance",
                "responses": {
                    "200": _ok("Lifted", {"type": "object"}),
                    **_AUTH_ERRORS,
                    "404": _error("No such ban"),
                },
            },
        },
        "/api/explain": {
            "post": {
                "operationId": "explain",
                "summary": "Why a request would go where it goes, with the live server state",
                "description": "The listener, each route tried and the condition that failed, "
                "the filters, the pool's servers with why each is or is not a candidate, the "
                "policy's scores and the winner: what `portico explain --live` prints. "
                "Changes nothing.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ExplainRequest")}},
                },
                "responses": {
                    "200": _ok("The explanation", _ref("Explanation")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "422": _error("A field is invalid, or the request cannot be explained"),
                },
            }
        },
        "/api/cache/purge": {
            "post": {
                "operationId": "purgeCache",
                "summary": "Drop a URL or a tag from the HTTP cache of every worker",
                "description": "Every worker drops what it stores for the URL (every variant, "
                "under each route's key rules) and every response its origin tagged with the "
                "tag (Cache-Tag or Surrogate-Key). Answers once the workers have been told.",
                "requestBody": _json_body("CachePurge", {"url": "http://example.com/page"}),
                "responses": {
                    "202": _ok("The workers were told", _ref("Purged")),
                    "400": _error("The body is not a JSON object"),
                    **_AUTH_ERRORS,
                    "422": _error("Neither url nor tag, or a URL that is not absolute"),
                },
            }
        },
        "/api/reload": {
            "post": {
                "operationId": "reload",
                "summary": "Reload the config file (as SIGHUP)",
                "description": "Answers once the new workers serve and the old ones drain; a "
                "file that does not validate is refused and the running config stays.",
                "responses": {
                    "200": _ok("Reloaded", _ref("ReloadResult")),
                    **_AUTH_ERRORS,
                    "422": _ok(
                        "Refused: the running config stays",
                        {
                            "allOf": [
                                _ref("ReloadResult"),
                                {
                                    "type": "object",
                                    "required": ["error"],
                                    "properties": {"error": {"const": "reload refused"}},
                                },
                            ]
                        },
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics (no token needed)",
                "description": "Prometheus' text format, or OpenMetrics when the Accept header "
                "asks for application/openmetrics-text. Counters are summed over the workers, "
                "including workers that have exited since the start.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The metrics",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "getHealthz",
                "summary": "Alive (no token needed, any Host)",
                "description": "200 while the supervisor answers: for keepalived's track "
                "script and restart decisions.",
                "security": [],
                "responses": {
                    "200": _ok(
                        "Alive",
                        {
                            "type": "object",
                            "properties": {"status": {"const": "ok"}},
                            "required": ["status"],
                        },
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "getReadyz",
                "summary": "Ready for traffic (no token needed, any Host)",
                "description": "200 when every listener is open, every worker is up, a config "
                "is loaded and (with state.redis) Redis answers; 503 otherwise, and while "
                "starting or draining.",
                "security": [],
                "responses": {
                    "200": _ok("Ready", _ref("Readiness")),
                    "503": _ok("Not ready: the failing checks say why", _ref("Readiness")),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {
                    "200": _ok("The OpenAPI document", {"type": "object"}),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/": {
            "get": {
                "operationId": "getDashboard",
                "summary": "The dashboard (no token needed; it asks for one)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The dashboard page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/static/{path}": {
            "get": {
                "operationId": "getStatic",
                "summary": "The dashboard's files (no token needed)",
                "security": [],
                "parameters": [
                    {
                        "name": "path",
                        "in": "path",
                        "required": True,
                        "description": "A file under the dashboard's folder; may contain /",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "404": _error("No such file"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "admin.token from the config (or the variable admin.token_env)",
            }
        },
        "parameters": {
            "pool": {
                "name": "pool",
                "in": "path",
                "required": True,
                "description": "A pool's name, as in the config",
                "schema": TypeAdapter(Name).json_schema(),
            },
            "server": {
                "name": "server",
                "in": "path",
                "required": True,
                "description": "A server's name (host:port when the config gives none), "
                "percent-encoded",
                "schema": TypeAdapter(ServerName).json_schema(),
            },
            "listener": {
                "name": "listener",
                "in": "path",
                "required": True,
                "description": "A listener's name, as in the config",
                "schema": TypeAdapter(Name).json_schema(),
            },
            "listenerOrAll": {
                "name": "listener",
                "in": "path",
                "required": True,
                "description": 'A listener\'s name, or "*" for an entry of every listener',
                "schema": {"type": "string"},
            },
            "network": {
                "name": "network",
                "in": "path",
                "required": True,
                "description": "The entry's address or network, percent-encoded (203.0.113.0%2F24)",
                "schema": {"type": "string"},
            },
            "banKey": {
                "name": "key",
                "in": "path",
                "required": True,
                "description": "The banned key (a client address, header or cookie value), "
                "percent-encoded",
                "schema": {"type": "string"},
            },
        },
        "responses": {
            "Unauthorized": _error("No token, or not a Bearer token (when admin.token is set)"),
            "Forbidden": _error(
                "A wrong token, a cross-origin change, or (without a token) a Host that is not "
                "an IP address or localhost"
            ),
        },
        "schemas": _component_schemas(),
    },
}
