"""The configuration model: what a valid Portico config file contains.

This module owns the frozen pydantic models (one per YAML mapping, fields named exactly like
the YAML keys), their defaults, the per-field rules, and the cross-reference rules between
parts of the config (`check_references`). It is *pure*: it never reads files, never parses
YAML and never formats errors with file names and lines; `load.py` does that.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, NamedTuple, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from portico.config.access import AccessConfig, BanRule
from portico.config.cache import CacheStorageConfig
from portico.config.content import CompressionConfig, compression_shorthand
from portico.config.plugins import FilterUse, builtin_names, check_reference
from portico.config.routes import HeaderName, Routes
from portico.config.tls import TlsConfig
from portico.config.units import (
    SERVER_NAME_SCHEMA,
    Address,
    BindAddress,
    Duration,
    DurationOrZero,
    HostPort,
    Name,
    ServerName,
    Size,
    parse_address,
    parse_rate,
    show,
)

__all__ = [
    "DEFER_REFERENCES",
    "MAX_WORKERS",
    "POLICY_NAMES",
    "ActiveHealthConfig",
    "Config",
    "DebugHeaderConfig",
    "ForwardedHeaders",
    "HealthConfig",
    "HttpCheckConfig",
    "ListenerConfig",
    "ListenerLimits",
    "ListenerTimeouts",
    "Loc",
    "PassiveHealthConfig",
    "PluginsConfig",
    "PolicyName",
    "PoolConfig",
    "PoolKeepalive",
    "PoolTimeouts",
    "ProbeName",
    "QueueConfig",
    "RateLimitConfig",
    "ReferenceIssue",
    "RetryBudgetConfig",
    "ServerConfig",
    "check_references",
    "format_loc",
    "json_schema",
]

MAX_WORKERS: Final = 64

PolicyName = Annotated[str, AfterValidator(check_reference("policies"))]
"""A balancing policy: a name registered in `portico.balancing.POLICIES` or by an entry point,
or ``module:Class`` (`portico.config.plugins` finds it)."""

POLICY_NAMES: Final[tuple[str, ...]] = builtin_names("policies")
"""The built-in policies' names."""

ProbeName = Annotated[str, AfterValidator(check_reference("probes"))]
"""An active health probe: ``http``, ``tcp``, a name registered by an entry point, or
``module:Class``."""

DEFER_REFERENCES: Final = "portico.defer_references"
"""Validation-context key: when true, `Config` skips `check_references` so that the caller
(the loader) can run it and report each issue at its own path and line."""


# ---------------------------------------------------------------------------------------------
# Field rules


def _reject_bool(value: object) -> object:
    # YAML reads yes/no/on/off as booleans, and pydantic's lax int would turn them into 1 and 0.
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {show(value)}")
    return value


def _between(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, not {value}")
        return value

    return check


def _ints(low: int, high: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})


# Int field types limited to low..high, with one message naming both bounds.
_NoBool = BeforeValidator(_reject_bool)
_Backlog = Annotated[int, _NoBool, AfterValidator(_between(1, 65_535)), _ints(1, 65_535)]
_MaxHeaders = Annotated[int, _NoBool, AfterValidator(_between(1, 10_000)), _ints(1, 10_000)]
_Weight = Annotated[int, _NoBool, AfterValidator(_between(1, 256)), _ints(1, 256)]
_MaxIdle = Annotated[int, _NoBool, AfterValidator(_between(0, 10_000)), _ints(0, 10_000)]
_MaxRequests = Annotated[int, _NoBool, AfterValidator(_between(0, 2**31 - 1)), _ints(0, 2**31 - 1)]
_Retries = Annotated[int, _NoBool, AfterValidator(_between(0, 10)), _ints(0, 10)]
_RiseFall = Annotated[int, _NoBool, AfterValidator(_between(1, 100)), _ints(1, 100)]
_Count = Annotated[int, _NoBool, AfterValidator(_between(1, 1_000_000)), _ints(1, 1_000_000)]
_Percent = Annotated[int, _NoBool, AfterValidator(_between(0, 100)), _ints(0, 100)]
_MaxConns = Annotated[int, _NoBool, AfterValidator(_between(0, 1_000_000)), _ints(0, 1_000_000)]
_QueueSize = Annotated[int, _NoBool, AfterValidator(_between(0, 1_000_000)), _ints(0, 1_000_000)]


# RFC 9110 token: the characters allowed in a header field name (and in a cookie name).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_HASH_KEY = re.compile(rf"client_ip|path|(?:header|cookie):{_TOKEN}")


def _check_hash_key(value: str) -> str:
    if _HASH_KEY.fullmatch(value):
        return value
    kind, colon, name = value.partition(":")
    if colon and kind in ("header", "cookie"):
        raise ValueError(f"{show(name)} is not a valid {kind} name in {show(value)}")
    raise ValueError(
        f"{show(value)} is not a hash key: use client_ip, path, header:NAME or cookie:NAME"
    )


def _check_workers(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ValueError(f'must be "auto" or a whole number from 1 to {MAX_WORKERS}, not {show(value)}')


def _check_positive_size(value: int) -> int:
    if value <= 0:
        raise ValueError("must be more than 0 bytes")
    return value


PositiveSize = Annotated[Size, AfterValidator(_check_positive_size)]


def _none_is_empty(empty: object) -> Callable[[object], object]:
    """A section written as ``limits:`` with every line under it commented out is YAML null;
    treat it as the empty section (all defaults) rather than as an error."""

    def convert(value: object) -> object:
        return empty if value is None else value

    return convert


def _check_path(value: str) -> str:
    if not value.startswith("/") or any(c <= " " or c == "\x7f" for c in value):
        raise ValueError(
            f'{show(value)} is not a request path: start it with "/", no spaces or controls'
        )
    return value


def _check_host_header(value: str) -> str:
    if not value or any(c <= " " or c == "\x7f" for c in value):
        raise ValueError(f"{show(value)} is not a Host value: no spaces or control characters")
    return value


def _parse_status_range(value: object) -> object:
    """`200`, `"200-399"` or `[200, 399]` → (low, high)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d{3}\s*(-\s*\d{3}\s*)?", value):
        parts = [int(p) for p in value.split("-")]
        low, high = parts[0], parts[-1]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    else:
        raise ValueError(f'{show(value)} is not a status range: write e.g. 200 or "200-399"')
    if not (100 <= low <= high <= 599):
        raise ValueError(f"{show(value)} is not a status range from 100 to 599, low to high")
    return (low, high)


def _check_ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be from 0 to 1, not {value}")
    return value


def _check_non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must not be negative, not {value}")
    return value


def _parse_rate(value: object) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a rate: write e.g. 100/s, 600/m or 10000/h")
    return parse_rate(value)


_LIMIT_KEY = re.compile(rf"client_ip|(?:header|cookie):{_TOKEN}")


def _check_limit_key(value: str) -> str:
    if not _LIMIT_KEY.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not a rate-limit key: use client_ip, header:NAME or cookie:NAME"
        )
    return value


def _check_network(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(
            f"{show(value)} is not an IP address or network: write e.g. 10.0.0.0/8 or ::1"
        ) from None


_SNI = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _check_sni_pattern(value: str) -> str:
    if not _SNI.fullmatch(value.lower()):
        raise ValueError(
            f"{show(value)} is not a server name: write a.example.com or *.example.com"
        )
    return value.lower()


def _check_redirect_port(value: object) -> object:
    if isinstance(value, bool) or (isinstance(value, int) and 1 <= value <= 65_535):
        return value
    raise ValueError(f"must be true, false or a port from 1 to 65535, not {show(value)}")


def _seconds(value: float) -> str:
    return f"{value:g}s"


_EMPTY_SECTION = BeforeValidator(_none_is_empty({}))
_EMPTY_LIST = BeforeValidator(_none_is_empty(()))


class _Model(BaseModel):
    """Shared settings: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Listeners


class ListenerLimits(_Model):
    """Size limits on a client's request; over a limit, the listener answers with an error."""

    max_request_line: PositiveSize = 8 * 1024  # longer request line -> 414
    max_header_size: PositiveSize = 32 * 1024  # whole request head -> 431
    max_headers: _MaxHeaders = 100  # more header fields -> 431
    max_body_size: Size = 0  # 0 = unlimited; larger body -> 413
    # answered before its body was all in: this much of the rest is read and thrown away so
    # that the connection stays open; a longer rest closes it (after the answer)
    max_discard_size: Size = 16 * 1024 * 1024
    # the most response bytes held for one client beyond the kernel's socket buffers (a slow
    # reader): larger means fewer, bigger server reads on big downloads (less CPU), and more
    # memory per slow reader (HAProxy's tune.bufsize, NGINX's proxy_buffers)
    response_buffer: _ResponseBuffer = 64 * 1024


class ListenerTimeouts(_Model):
    """How long a client may keep the listener waiting, in seconds."""

    header: Duration = 10.0  # a complete request head must arrive within this (slowloris)
    keepalive: Duration = 75.0  # idle client connection between requests is closed after this
    body: Duration = 60.0  # idle gap while receiving a request body
    send: Duration = 60.0  # client not reading our response for this long -> closed
    tunnel: Duration = 3600.0  # an upgraded (WebSocket) connection idle both ways this long
    linger: Duration = 30.0  # after an early answer, the longest wait for the rest of the body


class ForwardedHeaders(_Model):
    """Which headers tell a server about the original client."""

    x_forwarded: bool = True  # X-Forwarded-For / -Proto / -Host
    forwarded: bool = True  # RFC 7239 Forwarded


class RateLimitConfig(_Model):
    """Per-client request rate limit (GCRA): over it, 429 with Retry-After."""

    rate: Annotated[  # "100/s", "600/m", "10000/h"
        float,
        BeforeValidator(_parse_rate),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "examples": ["100/s", "600/m", "10000/h"]},
                ]
            }
        ),
    ]
    burst: _Count | None = None  # requests at once from idle; default: one second's worth
    key: Annotated[str, AfterValidator(_check_limit_key)] = "client_ip"

    def burst_size(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))


class AccessLogConfig(_Model):
    """One line per request, written off the event loop."""

    path: str = "-"  # "-": standard output; else a file (appended; reopened on SIGUSR1)
    format: Literal["combined", "json"] = "combined"


class ProxyProtocolAccept(_Model):
    """Accept a PROXY protocol header (v1 or v2) from a trusted load balancer in front."""

    trusted: tuple[Annotated[str, AfterValidator(_check_network)], ...] = Field(min_length=1)


def _http2_shorthand(value: object) -> object:
    """`http2: true` is `http2: {}` (defaults); `http2: false` is no section."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


def _window_size(value: int) -> int:
    if not 65_535 <= value <= 2**31 - 1:
        raise ValueError("must be from 65535 bytes (64KiB - 1) to 2GiB - 1 (RFC 9113 §6.9.2)")
    return value


_WindowSize = Annotated[Size, AfterValidator(_window_size)]


def _response_buffer(value: int) -> int:
    # the bounds of upstreams.connections (MIN_/MAX_RESPONSE_BUFFER): below 16 KiB a download
    # is many tiny reads; above 4 MiB a thousand slow readers hold gigabytes
    if not 16 * 1024 <= value <= 4 * 1024 * 1024:
        raise ValueError(f"must be from 16KiB to 4MiB, not {value} bytes")
    return value


_ResponseBuffer = Annotated[Size, AfterValidator(_response_buffer)]


class Http2Config(_Model):
    """HTTP/2 to clients: ALPN "h2" on https listeners, h2c with prior knowledge on http ones.
    Requests still reach servers over HTTP/1.1 keep-alive pools."""

    enabled: bool = True  # so that `http2: {enabled: false}` turns it off without deleting
    max_concurrent_streams: Annotated[
        int, _NoBool, AfterValidator(_between(1, 10_000)), _ints(1, 10_000)
    ] = 100
    initial_window_size: _WindowSize = 256 * 1024  # per stream, request bodies
    connection_window_size: _WindowSize = 16 * 1024 * 1024  # all streams of a connection
    only: bool = False  # no HTTP/1.x: h2c prior knowledge on http, ALPN "h2" alone on https


def _debug_header_shorthand(value: object) -> object:
    """`debug_header: X-Portico-Explain` is `debug_header: {name: X-Portico-Explain}`."""
    return {"name": value} if isinstance(value, str) else value


class DebugHeaderConfig(_Model):
    """A response header saying where the request went (route, pool, server: the short form
    of `portico explain`), sent only to clients from `trusted` networks."""

    name: HeaderName
    trusted: tuple[Annotated[str, AfterValidator(_check_network)], ...] = Field(
        default=("127.0.0.0/8", "::1/128"), min_length=1
    )


class ListenerConfig(_Model):
    """One listening socket and how requests arriving on it are handled."""

    name: Name
    bind: BindAddress  # port 0: any free port (the ready line says which)
    protocol: Literal["http", "https", "tcp"] = "http"
    tls: TlsConfig | None = None  # https: certificates and TLS settings
    # http: answer every request with 308 to the https URL; true: on the port of the config's
    # https listener (omitted when 443, or when there is none); or a port number
    redirect_https: Annotated[
        bool | int,
        BeforeValidator(_check_redirect_port),
        WithJsonSchema(
            {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1, "maximum": 65535}]}
        ),
    ] = False
    default_pool: Name
    backlog: _Backlog = 1024
    limits: Annotated[ListenerLimits, _EMPTY_SECTION] = Field(default_factory=ListenerLimits)
    timeouts: Annotated[ListenerTimeouts, _EMPTY_SECTION] = Field(default_factory=ListenerTimeouts)
    forwarded: Annotated[ForwardedHeaders, _EMPTY_SECTION] = Field(default_factory=ForwardedHeaders)
    routes: Routes = ()  # http: ordered rules, first match wins; else default_pool
    access_log: AccessLogConfig | None = None  # also turns on X-Request-Id (passed or made)
    rate_limit: RateLimitConfig | None = None
    filters: Annotated[tuple[FilterUse, ...], _EMPTY_LIST] = ()  # plugins, on every request
    max_conns_per_client: _MaxConns = 0  # open connections per client address (0 = no limit)
    max_conns: _MaxConns = 0  # open connections per worker; past it accepting pauses (0 = none)
    proxy_protocol: ProxyProtocolAccept | None = None  # accept PROXY headers from these peers
    access: AccessConfig | None = None  # IP allow/deny: a denied peer is closed at accept
    # peers whose X-Forwarded-For (or Forwarded) names the client, for `access` and `bans`
    trusted_proxies: tuple[Annotated[str, AfterValidator(_check_network)], ...] = ()
    trusted_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    bans: Annotated[tuple[BanRule, ...], _EMPTY_LIST] = ()  # abuse rules (fail2ban)
    http2: Annotated[  # off unless set
        Http2Config | None,
        BeforeValidator(_http2_shorthand, json_schema_input_type=bool | Http2Config | None),
    ] = None
    debug_header: Annotated[  # off; "X-Portico-Explain": to loopback clients, or {name, trusted}
        DebugHeaderConfig | None,
        BeforeValidator(
            _debug_header_shorthand, json_schema_input_type=str | DebugHeaderConfig | None
        ),
    ] = None
    compression: Annotated[  # off unless set; a route's own replaces it for that route
        CompressionConfig | None,
        BeforeValidator(
            compression_shorthand, json_schema_input_type=bool | CompressionConfig | None
        ),
    ] = None
    # tcp listeners only
    sni_routes: dict[Annotated[str, AfterValidator(_check_sni_pattern)], Name] | None = None
    on_bad_hello: Literal["default", "close"] = "default"  # unparsable ClientHello with sni_routes
    idle_timeout: Duration = 3600.0  # tcp: a connection silent both ways this long is closed


# ---------------------------------------------------------------------------------------------
# Pools


def _no_default(schema: dict[str, Any]) -> None:
    # a default filled in from another field: "" would mislead an editor
    schema.pop("default", None)


class ServerConfig(_Model):
    """One server in a pool. `name` is always a string: when the file gives none, it is
    the address as ``host:port``."""

    address: Address
    weight: _Weight = 1
    name: Annotated[  # "" only until filled in
        ServerName,
        WithJsonSchema(
            {
                "anyOf": [SERVER_NAME_SCHEMA, {"type": "null"}],
                "description": "Shown in logs, metrics and the admin API; default: the address",
            }
        ),
    ] = Field("", json_schema_extra=_no_default)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("name") is not None:
            return data
        try:
            address = parse_address(data.get("address"))
        except ValueError:
            return data  # the address field reports it; no name error on top
        return {**data, "name": str(address)}


def _check_srv_name(value: str) -> str:
    labels = value.rstrip(".").split(".")
    if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
        raise ValueError(f"{show(value)} is not an SRV name: write _service._proto.name")
    if not all(label and len(label) < 64 for label in labels):
        raise ValueError(f"{show(value)} has an empty or too long label")
    return value


class DiscoveryConfig(_Model):
    """Servers found in DNS (given in `servers:` as `dns:` or `srv:`), re-resolved as their
    records' TTLs say (bounded by `resolver.min_ttl`/`max_ttl`)."""

    dns: Address | None = None  # name:port: every A and AAAA record of the name, on this port
    srv: Annotated[str, AfterValidator(_check_srv_name)] | None = None  # _http._tcp.name
    weight: _Weight = 1  # for `dns` entries (SRV records carry their own)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.dns is None) == (self.srv is None):
            raise ValueError("give dns: NAME:PORT or srv: _service._proto.NAME (one of them)")
        if self.srv is not None and "weight" in self.model_fields_set:
            raise ValueError("srv: the records give each server's weight: remove weight")
        return self

    @property
    def key(self) -> str:
        """What the entry is called in logs, metrics and the admin API."""
        return f"dns {self.dns}" if self.dns is not None else f"srv {self.srv}"


class PoolTimeouts(_Model):
    """How long Portico waits on a pool's servers, in seconds."""

    connect: Duration = 3.0  # TCP connect to a server
    read: Duration = 30.0  # wait for the response head, and max gap between response bytes -> 504
    write: Duration = 30.0  # server not accepting our request bytes for this long


class PoolKeepalive(_Model):
    """Reuse of idle connections to a pool's servers."""

    max_idle: _MaxIdle = 32  # idle connections kept per server (0 = no reuse)
    idle_timeout: Duration = 60.0  # an idle pooled connection is closed after this
    max_requests: _MaxRequests = 0  # requests per connection (0 = unlimited)


class HttpCheckConfig(_Model):
    """What an active HTTP health check sends and expects."""

    method: HeaderName = "GET"
    path: Annotated[str, AfterValidator(_check_path)] = "/"
    host: Annotated[str, AfterValidator(_check_host_header)] | None = None  # default host:port
    expect_status: Annotated[
        tuple[int, int],
        BeforeValidator(_parse_status_range),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": 100, "maximum": 599},
                    {"type": "string", "examples": ["200-399"]},
                    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                ]
            }
        ),
    ] = (200, 399)
    expect_body: str | None = None  # a substring the body must contain

    @field_validator("expect_body")
    @classmethod
    def _body_needs_a_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("method") == "HEAD":
            raise ValueError("a HEAD response has no body to look into: use GET")
        if value == "":
            raise ValueError("must not be empty (leave it out to not check the body)")
        return value


class ActiveHealthConfig(_Model):
    """Active checks, run by the control plane once per instance and shared with workers."""

    type: ProbeName = "http"  # http, tcp, or a plugin: mypkg.probes:Grpc
    options: Annotated[dict[str, Any], _EMPTY_SECTION] = Field(default_factory=dict, alias="with")
    interval: Duration = 2.0
    timeout: Duration = 1.0  # must not exceed interval
    rise: _RiseFall = 2  # successes in a row that bring a server back
    fall: _RiseFall = 3  # failures in a row that take it out
    http: Annotated[HttpCheckConfig, _EMPTY_SECTION] = Field(default_factory=HttpCheckConfig)

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(
                f"must not be longer than interval ({_seconds(interval)}): a check would "
                "still be running when the next one starts"
            )
        return value


class PassiveHealthConfig(_Model):
    """Outlier detection on real traffic (as Envoy): failures in a row eject a server."""

    enabled: bool = True
    consecutive_failures: _Count = 5  # connect failures, timeouts (and 5xx with on_5xx)
    on_5xx: bool = True  # count 5xx responses as failures
    base_ejection_time: Duration = 30.0  # times the number of ejections, up to the max
    max_ejection_time: Duration = 300.0
    max_ejection_percent: _Percent = 50  # never eject more than this share of the pool

    @field_validator("max_ejection_time")
    @classmethod
    def _max_at_least_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("base_ejection_time")
        if base is not None and value < base:
            raise ValueError(f"must not be shorter than base_ejection_time ({_seconds(base)})")
        return value


class HealthConfig(_Model):
    """How a pool learns which servers are fit to receive traffic."""

    active: ActiveHealthConfig | None = None  # no active checks unless configured
    passive: Annotated[PassiveHealthConfig, _EMPTY_SECTION] = Field(
        default_factory=PassiveHealthConfig
    )


class QueueConfig(_Model):
    """Requests waiting for a server below max_conns (as HAProxy's queue)."""

    size: _QueueSize = 0  # 0: no queue, 503 at once when every server is full
    timeout: Duration | None = None  # required with a queue

    @model_validator(mode="after")
    def _queue_needs_timeout(self) -> Self:
        if self.size and self.timeout is None:
            raise PydanticCustomError(
                "queue_timeout", "a queue needs a timeout: set queue.timeout, e.g. 5s"
            )
        return self


class RetryBudgetConfig(_Model):
    """Retries allowed as a share of recent requests, so that retries never multiply the load
    on a failing pool (Finagle's and Envoy's retry budget)."""

    ratio: Annotated[float, AfterValidator(_check_ratio)] = 0.2
    min_per_second: Annotated[float, AfterValidator(_check_non_negative)] = 3.0


class StickyConfig(_Model):
    """Cookie persistence (HAProxy's `cookie ... insert`): Portico sets a cookie naming the
    server by an opaque, signed token; a client presenting it returns to that server while it
    is fit for traffic. Instances sharing the secret agree on every cookie."""

    mode: Literal["insert", "prefix"] = "insert"  # prefix: tag the application's own cookie
    cookie: HeaderName = "PORTICO_SRV"  # prefix mode: the application's cookie (JSESSIONID)
    secret: str | None = None  # at least 16 bytes; or secret_env
    secret_env: str | None = None  # the environment variable holding the secret
    max_age: _MaxConns | None = None  # seconds; None: a session cookie, never expired by us
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    httponly: bool = True
    samesite: Literal["Lax", "Strict", "None"] | None = "Lax"

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give secret or secret_env (exactly one)")
        secret = self.resolved_secret()
        if len(secret.encode()) < 16:
            raise ValueError("the secret must be at least 16 bytes")
        if self.samesite == "None" and not self.secure:
            raise ValueError("samesite: None needs secure: true (browsers refuse it otherwise)")
        return self

    def resolved_secret(self) -> str:
        if self.secret is not None:
            return self.secret
        assert self.secret_env is not None
        value = os.environ.get(self.secret_env)
        if value is None:
            raise ValueError(f"the environment variable {self.secret_env} is not set")
        return value


class StickConfig(_Model):
    """A stick table (HAProxy's `stick on`): a client key -> the server it was sent to, kept in
    the state store (shared by every worker and instance with `state.redis`)."""

    key: Annotated[str, AfterValidator(_check_limit_key)]  # client_ip | header:NAME | cookie:NAME
    ttl: Duration = 1800.0  # an entry unused this long is forgotten
    size: _MaxConns = 0  # entries kept at most (0: no bound beyond the TTL)
    learn_from_response: bool = True  # cookie keys: learn from the server's Set-Cookie


class PoolConfig(_Model):
    """A named group of servers and how requests are spread over them."""

    policy: PolicyName = "round_robin"
    # a policy's options, given as `policy: {use: NAME, with: {...}}`
    policy_with: Annotated[dict[str, Any], _EMPTY_SECTION] = Field(default_factory=dict)
    hash_key: Annotated[str, AfterValidator(_check_hash_key)] = "client_ip"
    # servers found in DNS: written in `servers:` as {dns: NAME:PORT} or {srv: _x._tcp.NAME}
    # (or here, as `discover:`); they come and go as the records change. Before `servers`,
    # whose check reads it.
    discover: tuple[DiscoveryConfig, ...] = ()
    servers: tuple[ServerConfig, ...]  # at least one, unless `discover` has an entry
    timeouts: Annotated[PoolTimeouts, _EMPTY_SECTION] = Field(default_factory=PoolTimeouts)
    keepalive: Annotated[PoolKeepalive, _EMPTY_SECTION] = Field(default_factory=PoolKeepalive)
    # Other servers tried after a connect failure, or after an idempotent request failed
    # before any response byte arrived.
    retries: _Retries = 1
    hide_headers: Annotated[tuple[HeaderName, ...], _EMPTY_LIST] = ()
    health: Annotated[HealthConfig, _EMPTY_SECTION] = Field(default_factory=HealthConfig)
    slow_start: DurationOrZero = 0.0  # a server coming back ramps up over this window
    max_conns: _MaxConns = 0  # concurrent requests per server (0 = unlimited)
    queue: Annotated[QueueConfig, _EMPTY_SECTION] = Field(default_factory=QueueConfig)
    retry_budget: Annotated[RetryBudgetConfig, _EMPTY_SECTION] = Field(
        default_factory=RetryBudgetConfig
    )
    fallback_pool: Name | None = None  # used when every server of this pool is down
    proxy_protocol: Literal["v1", "v2"] | None = None  # send a PROXY header to servers
    sticky: StickyConfig | None = None  # cookie persistence
    stick: StickConfig | None = None  # stick table on a client key (e.g. the app's session)

    @model_validator(mode="before")
    @classmethod
    def _policy_mapping(cls, data: Any) -> Any:
        """`policy: {use: NAME, with: {...}}` is the name, and its options beside it."""
        if not isinstance(data, dict) or not isinstance(data.get("policy"), dict):
            return data
        spec = data["policy"]
        unknown = [key for key in spec if key not in ("use", "with")]
        if unknown:
            raise ValueError(f'policy: unknown key "{unknown[0]}" (valid keys here: use, with)')
        if "use" not in spec:
            raise ValueError('policy: missing required key "use"')
        return {**data, "policy": spec["use"], "policy_with": spec.get("with") or {}}

    @model_validator(mode="before")
    @classmethod
    def _discovery_entries(cls, data: Any) -> Any:
        """`servers:` entries with `dns:` or `srv:` are DNS discovery entries: moved to
        `discover`, after those given there."""
        if not isinstance(data, dict) or not isinstance(data.get("servers"), list | tuple):
            return data
        servers = data["servers"]
        found = [s for s in servers if isinstance(s, dict) and ("dns" in s or "srv" in s)]
        if not found:
            return data
        static = [s for s in servers if not (isinstance(s, dict) and ("dns" in s or "srv" in s))]
        discover = data.get("discover") or []
        if not isinstance(discover, list | tuple):
            return data  # the field reports it
        return {**data, "servers": static, "discover": [*discover, *found]}

    @field_validator("servers")
    @classmethod
    def _some_server(
        cls, value: tuple[ServerConfig, ...], info: ValidationInfo
    ) -> tuple[ServerConfig, ...]:
        # (no `discover` in info.data: it was invalid, and is reported instead)
        if not value and info.data.get("discover", True) == ():
            raise ValueError("must have at least one entry")
        return value


# ---------------------------------------------------------------------------------------------
# The whole file


class StateConfig(_Model):
    """Where state shared by workers and instances lives (rate limits, for now)."""

    redis: str | None = None  # redis://host:port/db; None: in memory, per worker
    timeout: Duration = 0.1  # no request waits longer than this on the store
    rate_limit_fallback: Literal["local", "open", "closed"] = "local"  # Redis unreachable:
    # local = this worker's own limiter, open = allow, closed = refuse (429)
    # this instance's name in the fleet (changes made with `fleet`, /api/fleet); default:
    # host name and pid
    instance: Name | None = None

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{show(value)} is not a Redis URL: write redis://host:port/db")
        return value


class PluginsConfig(_Model):
    """How Portico runs the plugins a config names (docs/plugins.md)."""

    path: Annotated[tuple[str, ...], _EMPTY_LIST] = ()  # module directories, from the config's
    block_budget: Duration = 0.005  # a plugin call holding the event loop longer is logged
    timeout: Duration = 1.0  # an async filter hook must answer within this, else 500
    _base_dir: str = PrivateAttr(default="")  # the config file's directory, set by load.py

    @property
    def base_dir(self) -> str:
        """The directory of the config file: relative paths in plugin options start there."""
        return self._base_dir


class ResolverConfig(_Model):
    """How servers named in DNS (`dns:`, `srv:` in a pool) are looked up: asynchronously,
    from these name servers, never with the blocking system call."""

    nameservers: tuple[Address, ...] = ()  # IP:port; empty: those of /etc/resolv.conf
    min_ttl: DurationOrZero = 1.0  # records are looked up again after their TTL, at least
    max_ttl: Duration = 300.0  # ... and at most this long after the last lookup
    timeout: Duration = 2.0  # one lookup (all tries together); a failure keeps the last set
    drain_timeout: DurationOrZero = 30.0  # a removed server drains this long at most

    @model_validator(mode="after")
    def _ttl_bounds(self) -> Self:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl:g}s) exceeds max_ttl ({self.max_ttl:g}s)")
        return self


class AdminUser(_Model):
    """A named admin token: what the user's changes are recorded under (the log, the fleet)."""

    name: Name
    token: str | None = None
    token_env: str | None = None  # or: the environment variable that holds it

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give token or token_env (one of them)")
        return self


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminTls(_Model):
    """TLS on the admin listener: its certificate, and client certificates (mTLS) checked
    against `client_ca` when `client_auth` is optional or require."""

    cert: str
    key: str
    client_auth: Literal["none", "optional", "require"] = "none"
    client_ca: str | None = None

    @model_validator(mode="after")
    def _ca_with_auth(self) -> Self:
        if self.client_auth != "none" and self.client_ca is None:
            raise ValueError(f"client_auth: {self.client_auth} needs client_ca (a CA bundle)")
        for path in (self.cert, self.key, self.client_ca):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{path}: no such file")
        return self


class AdminConfig(_Model):
    """The admin API, metrics and dashboard, served by the supervisor."""

    bind: BindAddress = Field(default_factory=lambda: parse_address("127.0.0.1:9090"))
    token: str | None = None  # required as "Authorization: Bearer <token>" when set
    token_env: str | None = None  # or: the environment variable that holds the token
    users: tuple[AdminUser, ...] = ()  # named tokens, each accepted as the token is

    @model_validator(mode="after")
    def _unique_users(self) -> Self:
        names = [user.name for user in self.users]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"users: {name!r} is named twice")
        if "admin" in names and (self.token is not None or self.token_env is not None):
            raise ValueError('users: "admin" is the name of admin.token: choose another')
        return self

    tls: AdminTls | None = None  # https on the admin listener, optionally with client certs

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        verified = self.tls is not None and self.tls.client_auth == "require"
        if self.token is None and self.token_env is None and not self.users and not verified:
            host = self.bind.host
            if not _is_loopback_host(host):
                raise ValueError(
                    f"the admin listener binds {host or 'every address'}, which is not "
                    "loopback, without a token: anyone who can reach it could change pools and "
                    "reload; set token (or token_env), or tls with client_auth: require"
                )
        return self


def _check_account(value: str) -> str:
    if not value or not all(c.isalnum() or c in "_.-" for c in value) or value.startswith("-"):
        raise ValueError(f"{show(value)} is not a user or group name (or number)")
    return value


_Account = Annotated[str, AfterValidator(_check_account)]


class Config(_Model):
    """A whole config file. Valid means every field is valid and every reference resolves."""

    workers: Annotated[
        int | Literal["auto"],
        BeforeValidator(_check_workers),
        WithJsonSchema({"anyOf": [{"const": "auto"}, _ints(1, MAX_WORKERS).json_schema]}),
    ] = "auto"
    shutdown_grace: DurationOrZero = 30.0  # in-flight requests may finish within this on stop
    pid_file: str | None = None  # written by `portico run`, read by `portico reload`
    user: _Account | None = None  # started as root: switch to this user once bound
    group: _Account | None = None  # ... and this group (default: the user's primary group)
    state: Annotated[StateConfig, _EMPTY_SECTION] = Field(default_factory=StateConfig)
    listeners: tuple[ListenerConfig, ...] = Field(min_length=1)
    pools: dict[Name, PoolConfig] = Field(min_length=1)
    admin: Annotated[AdminConfig, _EMPTY_SECTION] | None = None  # no admin listener unless set
    resolver: Annotated[ResolverConfig, _EMPTY_SECTION] = Field(default_factory=ResolverConfig)
    plugins: Annotated[PluginsConfig, _EMPTY_SECTION] = Field(default_factory=PluginsConfig)
    # the HTTP cache's storage (the routes' `cache:` say what is cached)
    cache: Annotated[CacheStorageConfig, _EMPTY_SECTION] = Field(default_factory=CacheStorageConfig)

    @model_validator(mode="after")
    def _check_references(self, info: ValidationInfo) -> Self:
        if info.context and info.context.get(DEFER_REFERENCES):
            return self
        issues = check_references(self)
        if issues:
            raise ValueError("; ".join(str(issue) for issue in issues))
        return self

    def https_port(
        self, listener: ListenerConfig, bound: Mapping[str, int] | None = None
    ) -> int | None:
        """The port `listener`'s `redirect_https` sends clients to: the one it names, or for
        `true` the port of the https listeners (`bound`: actual ports by listener name, for
        binds to port 0); None when that is 443 or unknown (no https listener here, or
        several on different ports: `check_references` refuses that)."""
        setting = listener.redirect_https
        if setting is False:
            return None
        if setting is True:
            ports = _https_ports(self, bound)
            port = ports.pop() if len(ports) == 1 else 443
        else:
            port = setting
        return None if port == 443 else port

    def worker_count(self, cpu_count: int | None = None) -> int:
        """The number of worker processes to start: `workers`, or for ``auto`` the number of
        CPUs this process may run on (`cpu_count` if given), capped at MAX_WORKERS."""
        if isinstance(self.workers, int):
            return self.workers
        if cpu_count is None:
            cpu_count = _usable_cpus()
        return max(1, min(cpu_count, MAX_WORKERS))


def _https_ports(config: Config, bound: Mapping[str, int] | None = None) -> set[int]:
    bound = bound or {}
    return {
        bound.get(listener.name) or listener.bind.port
        for listener in config.listeners
        if listener.protocol == "https"
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config file, generated from these models: editors
    with a YAML language server complete and check portico.yaml with it (`portico schema`).
    It accepts what the models accept, text forms included (``2s``, ``64KiB``); rules across
    fields and files (references, certificates) are `portico check`'s."""
    schema = Config.model_json_schema(mode="validation")
    # a pool's `servers:` also takes DNS entries ({dns: ...} or {srv: ...}), which validation
    # moves to `discover` (PoolConfig._discovery_entries): say so to editors
    servers = schema["$defs"]["PoolConfig"]["properties"]["servers"]
    servers["items"] = {"anyOf": [servers["items"], {"$ref": "#/$defs/DiscoveryConfig"}]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "Portico configuration",
    }


def _usable_cpus() -> int:
    # sched_getaffinity honours taskset and container cpusets; os.cpu_count() does not.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without sched_getaffinity


# ---------------------------------------------------------------------------------------------
# Cross-references

Loc = tuple[str | int, ...]
"""A key path into the config, like ``("pools", "app", "servers", 1, "address")``."""


class ReferenceIssue(NamedTuple):
    """A rule between parts of the config that does not hold, at the key path `loc`."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{format_loc(self.loc)}: {self.message}"


def format_loc(loc: Loc) -> str:
    """Write a key path the way the YAML reads: ``pools.app.servers[1].address``.

    Keys that are not plain words (pool names with dots, say) are quoted:
    ``pools["app.v2"].policy``.
    """
    out: list[str] = []
    for part in loc:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out.append(f".{part}" if out else part)
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)


def check_references(config: Config) -> list[ReferenceIssue]:
    """Return every broken rule between parts of `config`, in file order: a listener's
    default_pool must name a pool, listener names and binds must be unique, and server names
    must be unique within their pool. An empty list means the config is consistent."""
    issues: list[ReferenceIssue] = []
    pool_names = ", ".join(config.pools)

    names: dict[str, int] = {}
    binds: dict[HostPort, int] = {}
    for i, listener in enumerate(config.listeners):
        if listener.name in names:
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "name"),
                    f'listener name "{listener.name}" is already used by '
                    f"listeners[{names[listener.name]}]",
                )
            )
        else:
            names[listener.name] = i
        clash = _bind_clash(listener.bind, binds) if listener.bind.port else None
        if clash is not None:
            k = binds[clash]
            other = f'listener "{config.listeners[k].name}" (listeners[{k}])'
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "bind"),
                    f"{listener.bind} is already bound by {other}"
                    if clash == listener.bind
                    else f"{listener.bind} overlaps {clash} of {other}",
                )
            )
        else:
            binds[listener.bind] = i
        for pattern, target in (listener.sni_routes or {}).items():
            if target not in config.pools:
                issues.append(
                    ReferenceIssue(
                        ("listeners", i, "sni_routes", pattern),
                        f'no pool named "{target}" (pools are: {pool_names})',
                    )
                )
        if listener.sni_routes is not None and listener.protocol != "tcp":
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "sni_routes"),
                    "sni_routes (TLS passthrough) need protocol: tcp",
                )
            )
        for j, route in enumerate(listener.routes):
            if route.pool is not None and route.pool not in config.pools:
                issues.append(
                    ReferenceIssue(
                        ("listeners", i, "routes", j, "pool"),
                        f'no pool named "{route.pool}" (pools are: {pool_names})',
                    )
                )
        if listener.protocol == "https" and listener.tls is None:
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "tls"), "protocol: https needs a tls section (certificates)"
                )
            )
        if listener.tls is not None and listener.protocol != "https":
            issues.append(
                ReferenceIssue(("listeners", i, "tls"), "tls is for protocol: https listeners")
            )
        http2 = listener.http2 is not None and listener.http2.enabled
        if http2 and listener.protocol == "tcp":
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "http2"),
                    "http2 is for protocol: https (ALPN) or http (h2c) listeners",
                )
            )
        only = listener.http2 is not None and listener.http2.only
        if only and not http2:
            issues.append(
                ReferenceIssue(("listeners", i, "http2", "only"), "only: true needs HTTP/2 on")
            )
        tls = listener.tls
        if only and tls is not None and "alpn" in tls.model_fields_set and "http/1.1" in tls.alpn:
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "tls", "alpn"),
                    'offers "http/1.1" but the listener speaks only HTTP/2 (http2.only)',
                )
            )
        if listener.tls is not None and "h2" in listener.tls.alpn and not http2:
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "tls", "alpn"),
                    'offers "h2" but HTTP/2 is off on this listener: add `http2: true`',
                )
            )
        if listener.debug_header is not None and listener.protocol == "tcp":
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "debug_header"), "debug_header is for http/https listeners"
                )
            )
        if listener.redirect_https is True and len(https_ports := _https_ports(config)) > 1:
            ports = ", ".join(str(port) for port in sorted(https_ports))
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "redirect_https"),
                    f"the https listeners are on ports {ports}: say which, e.g. "
                    f"redirect_https: {max(https_ports)}",
                )
            )
        if listener.routes and listener.protocol == "tcp":
            issues.append(ReferenceIssue(("listeners", i, "routes"), "routes need protocol: http"))
        if listener.compression is not None and listener.protocol == "tcp":
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "compression"), "compression needs protocol: http or https"
                )
            )
        if listener.filters and listener.protocol == "tcp":
            issues.append(
                ReferenceIssue(("listeners", i, "filters"), "filters need protocol: http or https")
            )
        if listener.default_pool not in config.pools:
            issues.append(
                ReferenceIssue(
                    ("listeners", i, "default_pool"),
                    f'no pool named "{listener.default_pool}" (pools are: {pool_names})',
                )
            )

    for pool_name, pool in config.pools.items():
        fallback = pool.fallback_pool
        if fallback is not None and fallback not in config.pools:
            issues.append(
                ReferenceIssue(
                    ("pools", pool_name, "fallback_pool"),
                    f'no pool named "{fallback}" (pools are: {pool_names})',
                )
            )
        elif fallback == pool_name:
            issues.append(
                ReferenceIssue(
                    ("pools", pool_name, "fallback_pool"), "a pool cannot be its own fallback"
                )
            )
        seen: dict[str, int] = {}
        for j, server in enumerate(pool.servers):
            first = seen.setdefault(server.name, j)
            if first == j:
                continue
            if pool.servers[first].address == server.address:
                issues.append(
                    ReferenceIssue(
                        ("pools", pool_name, "servers", j, "address"),
                        f"server {server.address} is listed twice (first as servers[{first}]):"
                        " raise its weight instead, or give each entry its own name",
                    )
                )
            else:
                issues.append(
                    ReferenceIssue(
                        ("pools", pool_name, "servers", j, "name"),
                        f'server name "{server.name}" is already used by servers[{first}]',
                    )
                )
    return issues


_WILDCARDS: Final = {"0.0.0.0": 4, "::": 6}


def _bind_clash(bind: HostPort, taken: dict[HostPort, int]) -> HostPort | None:
    """The already-taken bind that `bind` collides with, if any: the same host and port, or
    the same port where one side is the wildcard address of the other's IP family."""
    if bind in taken:
        return bind
    for other in taken:
        if other.port != bind.port:
            continue
        for wild, side in ((other, bind), (bind, other)):
            family = _WILDCARDS.get(wild.host)
            if family is not None and _ip_family(side.host) == family:
                return other
    return None


def _ip_family(host: str) -> int | None:
    if ":" in host:
        return 6
    if re.fullmatch(r"[0-9.]+", host):
        return 4
    return None
