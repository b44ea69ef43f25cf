"""The config model of L7 routes: which requests a route takes, and what it does with them.

This module owns the frozen pydantic models under a listener's ``routes:`` key (one per YAML
mapping, fields named exactly like the YAML keys), their per-field rules and the rules between
the fields of one route (exactly one of pool / redirect / respond, strip_prefix inside the
matched prefix, ...). It is *pure*: it never reads files, never checks that a pool exists (the
schema's `check_references` does, knowing every pool), and never compiles a router
(`portico.routing.router` does). It must not import `schema.py`, which imports it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core.core_schema import CoreSchema

from portico.config.access import AccessConfig
from portico.config.cache import RouteCacheConfig
from portico.config.content import CompressionConfig, StaticConfig, compression_shorthand
from portico.config.plugins import FilterUse
from portico.config.units import Duration, Name
from portico.config.units import show as _show_plain

__all__ = [
    "FRAMING_HEADERS",
    "REDIRECT_FIELDS",
    "HeaderEditsConfig",
    "MatchConfig",
    "RedirectConfig",
    "RespondConfig",
    "RouteConfig",
    "RouteTimeouts",
    "Routes",
    "ValueMatch",
    "compile_regex",
]


def show(value: object) -> str:
    """Quote a value as `units.show` does, with control characters escaped so that a message
    stays on one line."""
    if isinstance(value, str) and any(c < " " or c == "\x7f" for c in value):
        return json.dumps(value)
    return _show_plain(value)


# ---------------------------------------------------------------------------------------------
# Field rules (small twins of schema.py's: importing schema.py here would be circular)


class _Model(BaseModel):
    """Shared settings: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _none_is_empty(empty: object) -> Callable[[object], object]:
    """A section whose lines are all commented out is YAML null: read it as empty."""

    def convert(value: object) -> object:
        return empty if value is None else value

    return convert


_EMPTY_SECTION = BeforeValidator(_none_is_empty({}))
_EMPTY_LIST = BeforeValidator(_none_is_empty(()))

# RFC 9110 token: the characters of a header field name, a method and a cookie name.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid header name")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


def _check_cookie_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid cookie name")
    return value


def _check_query_name(value: str) -> str:
    if not value:
        raise ValueError("a query parameter name must not be empty")
    return value


def _text(what: str) -> Callable[[object], object]:
    """YAML reads ``beta: 1`` as a number: take whole numbers as their text, and refuse the
    values whose text YAML would have changed (``yes`` -> true, ``1.10`` -> 1.1)."""

    def convert(value: object) -> object:
        if isinstance(value, bool | float):
            raise ValueError(f"{show(value)} is not {what}: write it in quotes")
        if isinstance(value, int):
            return str(value)
        return value

    return convert


def _check_field_value(value: str) -> str:
    # RFC 9110 §5.5: no controls but HTAB (a CR or LF here would split the header), and no
    # whitespace at either end (the parser strips it, so it could never match or be sent).
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise ValueError(f"{show(value)} is not a header value: no control characters")
    if value != value.strip(" \t"):
        raise ValueError(f"{show(value)} is not a header value: no spaces at either end")
    return value


HeaderValue = Annotated[
    str,
    BeforeValidator(_text("a header value"), json_schema_input_type=str | int),
    AfterValidator(_check_field_value),
]


def _check_path(value: str) -> str:
    if not value.startswith("/") or any(c <= " " or c == "\x7f" for c in value):
        raise ValueError(
            f'{show(value)} is not a request path: start it with "/", no spaces or controls'
        )
    if not value.isascii():
        raise ValueError(
            f"{show(value)} is not a request path as sent: percent-encode non-ASCII characters "
            "(/caf%C3%A9 for /café)"
        )
    if "?" in value or "#" in value:
        raise ValueError(
            f"{show(value)} is not a request path: paths are matched without the query, "
            'so leave out "?" (match query parameters with "query:")'
        )
    return value


Path = Annotated[str, AfterValidator(_check_path)]


def compile_regex(text: str) -> re.Pattern[bytes]:
    """Compile a route regex for bytes (paths and header values travel as bytes).

    Raises ValueError naming the problem. Patterns must be ASCII: a request target arrives
    percent-encoded, so a non-ASCII character could never match it as written.
    """
    if not text.isascii():
        raise ValueError(
            f"{show(text)}: a regex must be ASCII (paths arrive percent-encoded: match é as %C3%A9)"
        )
    try:
        return re.compile(text.encode("ascii"))
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(f"{show(text)} is not a valid regex: {exc.msg}{where}") from None


def _check_regex(value: str) -> str:
    compile_regex(value)
    return value


Regex = Annotated[str, AfterValidator(_check_regex)]
"""A regular expression (Python `re` syntax, ASCII), searched anywhere in the value: anchor it
with ``^`` and ``$`` to match the whole value. Compiled at load, so a bad one is a config error."""


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_HOST_HINT = "write a.example.com, *.example.com or an IP address"


def _check_host_pattern(value: str) -> str:
    host = value.strip().lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{show(value)} is not an IPv6 address") from None
    if host == "*":
        raise ValueError('"*" is every host: leave "host" out to match every host')
    if ":" in host:
        raise ValueError(
            f"{show(value)} has a port: a route matches the host name whatever the port, "
            "so leave the port out"
        )
    if len(host) > 253 or not _HOST_PATTERN.fullmatch(host):
        raise ValueError(f"{show(value)} is not a host name or *.pattern: {_HOST_HINT}")
    return host


def _one_or_many(value: object) -> object:
    """``host: a.com`` is the list ``[a.com]``."""
    return [value] if isinstance(value, str) else value


def _no_duplicates(what: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A list that must not be empty (that would match nothing) nor name a value twice."""

    def check(values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError(f"must have at least one {what} (leave the key out to match any)")
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise ValueError(f"{what} {show(value)} is listed twice")
            seen.add(value)
        return values

    return check


HostPattern = Annotated[str, AfterValidator(_check_host_pattern)]


def _check_method(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{show(value)} is not an HTTP method")
    # Methods are case-sensitive on the wire, but "get" in a config file means GET.
    return value.upper()


Method = Annotated[str, AfterValidator(_check_method)]


def _unique_keys(what: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Header names are case-insensitive: `X-Env` and `x-env` in one mapping is a mistake."""

    def check(mapping: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for key in mapping:
            first = seen.setdefault(key.lower(), key)
            if first != key:
                raise ValueError(f"{what} {show(key)} is the same as {show(first)}")
        return mapping

    return check


# ---------------------------------------------------------------------------------------------
# Match


class ValueMatch(_Model):
    """What one header, cookie or query parameter must be: exactly one of `exact`, `present`,
    `regex`. A plain value (``X-Env: canary``) is short for ``{exact: canary}``.

    With several fields of one name (or a cookie or parameter given twice), the condition holds
    when any one of them satisfies it; ``present: false`` holds when there is none.
    """

    exact: (
        Annotated[str, BeforeValidator(_text("text"), json_schema_input_type=str | int)] | None
    ) = None
    present: bool | None = None
    regex: Regex | None = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # the shorthand: a plain value is {exact: value}
        schema = handler.resolve_ref_schema(handler(core_schema))
        return {"anyOf": [{"type": ["string", "integer"]}, schema]}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str | int) and not isinstance(data, bool):
            return {"exact": data}
        if isinstance(data, bool | float):
            raise ValueError(
                f"{show(data)} is not a value to match: write it in quotes, or use "
                "{present: true}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [key for key in ("exact", "present", "regex") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "write one of exact, present or regex"
                + (f", not {' and '.join(given)} together" if given else "")
            )
        return self


_HeaderConditions = Annotated[
    dict[HeaderName, ValueMatch],
    _EMPTY_SECTION,
    AfterValidator(_unique_keys("header")),
]


class MatchConfig(_Model):
    """Conditions a request must all meet to take a route; none at all matches every request.

    Paths are matched as sent (percent-encoded, not normalised), without the query.
    """

    host: (
        Annotated[
            tuple[HostPattern, ...],
            BeforeValidator(_one_or_many, json_schema_input_type=str | list[HostPattern]),
            AfterValidator(_no_duplicates("host")),
        ]
        | None
    ) = None  # Host without the port, any case; *.a.com = one or more labels + .a.com
    path: Path | None = None  # short for path_prefix
    path_prefix: Path | None = None  # byte prefix: /video matches /videos too; /video/ does not
    path_exact: Path | None = None
    path_regex: Regex | None = None
    method: (
        Annotated[
            tuple[Method, ...],
            BeforeValidator(_one_or_many, json_schema_input_type=str | list[Method]),
            AfterValidator(_no_duplicates("method")),
        ]
        | None
    ) = None
    headers: _HeaderConditions = Field(default_factory=dict)
    cookies: Annotated[
        dict[Annotated[str, AfterValidator(_check_cookie_name)], ValueMatch], _EMPTY_SECTION
    ] = Field(default_factory=dict)
    query: Annotated[
        dict[Annotated[str, AfterValidator(_check_query_name)], ValueMatch], _EMPTY_SECTION
    ] = Field(default_factory=dict)  # names and values compared percent-decoded, "+" as space

    @model_validator(mode="after")
    def _one_prefix(self) -> Self:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError('"path" is short for "path_prefix": write only one of them')
        prefix, exact = self.prefix, self.path_exact
        if prefix is not None and exact is not None and not exact.startswith(prefix):
            raise ValueError(
                f"path_exact {show(exact)} does not start with the path prefix {show(prefix)}: "
                "the route could never match"
            )
        return self

    @property
    def prefix(self) -> str | None:
        """The path prefix, written as `path` or as `path_prefix`."""
        return self.path_prefix if self.path_prefix is not None else self.path


# ---------------------------------------------------------------------------------------------
# Actions

FRAMING_HEADERS: Final = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
"""Headers that say how the message is framed or how this one connection behaves: Portico sets
them itself, so a route may not set, add or remove them."""


def _not_framing(value: str) -> str:
    if value.lower() in FRAMING_HEADERS:
        raise ValueError(
            f"{show(value)} is set by Portico (message framing, hop-by-hop): a route cannot "
            "set, add or remove it"
        )
    return value


_EditName = Annotated[HeaderName, AfterValidator(_not_framing)]
_EditMap = Annotated[
    dict[_EditName, HeaderValue], _EMPTY_SECTION, AfterValidator(_unique_keys("header"))
]


class HeaderEditsConfig(_Model):
    """Changes to a message's headers, applied in this order: remove, set, add.

    `set` replaces every field of that name with one; `add` appends a field; `remove` drops
    every field of that name. Names are case-insensitive.
    """

    set: _EditMap = Field(default_factory=dict)
    add: _EditMap = Field(default_factory=dict)
    remove: Annotated[tuple[_EditName, ...], _EMPTY_LIST] = ()

    @model_validator(mode="after")
    def _no_contradiction(self) -> Self:
        removed = {name.lower() for name in self.remove}
        for name in (*self.set, *self.add):
            if name.lower() in removed:
                raise ValueError(f"{show(name)} is both removed and given a value: keep one")
        return self

    def names(self) -> Iterable[str]:
        """Every header name this edit touches, lower-cased."""
        return (name.lower() for name in (*self.set, *self.add, *self.remove))


REDIRECT_FIELDS: Final = ("host", "path", "query", "scheme")
"""Fields a redirect template may use: the Host name without its port, the path (after
strip_prefix/replace_prefix), the query with its "?" (empty when there is none), and
http or https."""

_FORMATTER = string.Formatter()


def _check_template(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    try:
        parts = list(_FORMATTER.parse(value))
    except ValueError as exc:
        raise ValueError(
            f'{show(value)} is not a redirect template: {exc} (write "{{{{" for a literal "{{")'
        ) from None
    known = ", ".join("{" + name + "}" for name in REDIRECT_FIELDS)
    for literal, field, spec, conversion in parts:
        if any(c <= " " or c == "\x7f" for c in literal):
            raise ValueError(
                f"{show(value)} is not a redirect target: no spaces or control characters "
                "(percent-encode them)"
            )
        if field is None:
            continue
        if field not in REDIRECT_FIELDS:
            raise ValueError(f"{show(value)}: unknown field {{{field}}} (use {known})")
        if spec or conversion:
            raise ValueError(f"{show(value)}: write {{{field}}} without a format or conversion")
    return value


class RedirectConfig(_Model):
    """Answer with a redirect instead of forwarding: `to` is a template of the Location."""

    status: Literal[301, 302, 303, 307, 308] = 302
    to: Annotated[str, AfterValidator(_check_template)]  # "https://{host}{path}{query}"


def _check_respond_status(value: int) -> int:
    if not 200 <= value <= 599:
        raise ValueError(f"must be a final status from 200 to 599, not {value}")
    return value


def _reject_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {show(value)}")
    return value


class RespondConfig(_Model):
    """Answer with a fixed response instead of forwarding (maintenance page, health, 404...)."""

    status: Annotated[int, BeforeValidator(_reject_bool), AfterValidator(_check_respond_status)]
    body: str = ""
    content_type: HeaderValue = "text/plain; charset=utf-8"

    @model_validator(mode="after")
    def _bodiless_status(self) -> Self:
        if self.status in (204, 304) and self.body:
            raise ValueError(f"a {self.status} response has no body: leave out body")
        return self


class RouteTimeouts(_Model):
    """Per-route overrides of the pool's timeouts, in seconds; a missing one keeps the pool's."""

    connect: Duration | None = None
    read: Duration | None = None
    write: Duration | None = None

    def is_empty(self) -> bool:
        """True when nothing is overridden."""
        return self.connect is None and self.read is None and self.write is None


class RouteConfig(_Model):
    """One rule of a listener: requests meeting `match` go to `pool`, get a redirect, or get a
    fixed response (exactly one of the three), with optional path and header changes."""

    name: Name | None = None  # for logs and metrics; default "routes[i]"
    match: Annotated[MatchConfig, _EMPTY_SECTION] = Field(default_factory=MatchConfig)
    pool: Name | None = None
    strip_prefix: Path | None = None  # removed from the start of the path
    replace_prefix: Path | None = None  # put where strip_prefix was
    request_headers: HeaderEditsConfig | None = None
    response_headers: HeaderEditsConfig | None = None
    redirect: RedirectConfig | None = None
    respond: RespondConfig | None = None
    timeouts: RouteTimeouts | None = None  # only with pool
    filters: Annotated[tuple[FilterUse, ...], _EMPTY_LIST] = ()  # plugins (only with pool)
    cache: RouteCacheConfig | None = None  # HTTP cache (only with pool)
    static: StaticConfig | None = None  # answer from files (with pool: try_files fallback)
    compression: Annotated[  # over the listener's; off unless set (here or there)
        CompressionConfig | None,
        BeforeValidator(
            compression_shorthand, json_schema_input_type=bool | CompressionConfig | None
        ),
    ] = None
    access: AccessConfig | None = None  # IP allow/deny for this route: denied -> 403

    @model_validator(mode="after")
    def _one_outcome(self) -> Self:
        static = self.static
        if static is not None:
            self._check_static(static)
        outcomes = ("pool", "redirect", "respond", "static")
        given = [key for key in outcomes if getattr(self, key) is not None]
        if static is not None and self.pool is not None:
            given.remove("pool")  # the fallback's pool, checked above
        if not given:
            raise ValueError(
                'a route needs one of "pool" (forward), "redirect" or "respond" (answer here)'
                ', or "static" (files)'
            )
        if len(given) > 1:
            raise ValueError(
                f"{' and '.join(show(key) for key in given)} exclude each other: a route "
                "forwards to a pool, redirects, or responds"
                + (", or serves files" if static is not None else "")
            )
        answered = given[0]
        if self.pool is None:
            # Nothing is forwarded, so these would silently do nothing.
            useless = ["request_headers", "timeouts"]
            if self.respond is not None:
                useless.append("strip_prefix")
            if self.static is not None:
                useless.append("response_headers")
            for key in useless:
                if getattr(self, key) is not None:
                    raise ValueError(f'"{key}" does nothing on a route with "{answered}"')
            if self.filters:
                raise ValueError(f'"filters" do nothing on a route with "{answered}"')
            if self.cache is not None:
                raise ValueError(f'"cache" does nothing on a route with "{answered}"')
            if self.access is not None:
                # the route answers itself before its filters run (found by the request fuzzer)
                raise ValueError(
                    f'"access" works on routes with "pool" only: a route with "{answered}" '
                    "answers first; put the access list on a pool route or the listener"
                )
        edits = self.response_headers
        if self.redirect is not None and edits is not None and "location" in edits.names():
            raise ValueError('"response_headers" cannot change the Location of a redirect')
        self._check_prefixes()
        return self

    def _check_static(self, static: StaticConfig) -> None:
        if static.try_files == "fallback" and self.pool is None:
            raise ValueError('static "try_files: fallback" needs "pool": the pool it falls back to')
        if static.try_files is None and self.pool is not None:
            raise ValueError(
                '"pool" beside "static" is used only with "try_files: fallback" '
                "(missing files go to the pool): add it, or remove the pool"
            )

    def _check_prefixes(self) -> None:
        if self.replace_prefix is not None and self.strip_prefix is None:
            raise ValueError('"replace_prefix" needs "strip_prefix": the prefix it replaces')
        strip = self.strip_prefix
        if strip is None:
            return
        for key, value in (
            ("path_prefix", self.match.prefix),
            ("path_exact", self.match.path_exact),
        ):
            if value is not None and not value.startswith(strip):
                raise ValueError(
                    f"strip_prefix {show(strip)} is not a prefix of match.{key} {show(value)}: "
                    "it would never apply"
                )


def _unique_route_names(routes: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
    seen: dict[str, int] = {}
    for i, route in enumerate(routes):
        if route.name is None:
            continue
        first = seen.setdefault(route.name, i)
        if first != i:
            raise ValueError(
                f'route name "{route.name}" is used by routes[{first}] and routes[{i}]'
            )
    return routes


Routes = Annotated[tuple[RouteConfig, ...], _EMPTY_LIST, AfterValidator(_unique_route_names)]
"""A listener's ``routes:``: ordered, the first match wins; names unique. The type for
``ListenerConfig.routes``."""
