"""Portico's plugin API: what a plain-Python policy, filter or health probe subclasses.

This module is the whole contract between Portico and the code its users write, and the same
in both builds: nothing here is compiled, so a user's class never subclasses a compiled one.
A config names a plugin by a registered name (`round_robin`, or one a package declares under
the `portico.policies`, `portico.filters` or `portico.probes` entry points) or as
``module:Class``; `portico.config.plugins` finds, checks and builds it (docs/plugins.md).

Three kinds, each a base class with hooks that do nothing (override what you need):

- `Policy` chooses a server of a pool for each request (`pick`);
- `Filter` sees each request (`on_request`: let it go on, edit it, send it to another pool,
  or answer it locally with a `Response`), each response head from a server (`on_response`:
  edit its status and headers, attach a streaming `BodyTransform` to its body, or answer
  with a `Response` instead) and each request's end (`on_done`: its `Outcome`);
- `Probe` checks one server for the control plane's active health checks (`check`).

Each may declare `Options`, a pydantic model for what the config passes under `with:`;
`portico check` validates it and reports errors at their line. Portico builds one instance per
place the config names the class: ``cls(options)``, or ``cls()`` without `Options`.

Plugin code runs on the event loop: a hook must not block (it is timed, and one slower than
`plugins.block_budget` is logged with its name). One that raises fails only the request it
was serving, with a 500 and a log line (at most one a minute per plugin); never the worker.

`API_VERSION` grows by one on each change that could break a plugin written against an older
one; additions that break nothing keep it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Protocol, cast

from pydantic import AfterValidator, BaseModel, ValidationInfo

from portico.balancing.base import C, Candidate, Policy
from portico.http.headers import Header, RequestHead
from portico.http.local import BodySource, LocalResponse, local_response
from portico.pipeline import BodyTransform, ExchangeView, Outcome, ResponseEdit
from portico.pipeline.sources import ChunksBody, FileBody

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "API_VERSION",
    "CONFIG_DIR",
    "POOLS",
    "BodySource",
    "BodyTransform",
    "C",
    "Candidate",
    "ChunksBody",
    "ConfigPath",
    "FileBody",
    "Filter",
    "Outcome",
    "Policy",
    "PoolName",
    "Probe",
    "ProbeResult",
    "ProxiedRequest",
    "Request",
    "Response",
    "ResponseHeaders",
]

API_VERSION: Final = 1

POOLS: Final = "portico.pools"
"""Validation-context key: the config's pool names, which `PoolName` options are checked
against."""

CONFIG_DIR: Final = "portico.config_dir"
"""Validation-context key: the directory of the config file, which a relative `ConfigPath`
option is taken from."""


def _known_pool(value: str, info: ValidationInfo) -> str:
    pools = info.context.get(POOLS) if isinstance(info.context, dict) else None
    if pools is not None and value not in pools:
        raise ValueError(f'no pool named "{value}" (pools are: {", ".join(pools)})')
    return value


PoolName = Annotated[str, AfterValidator(_known_pool)]
"""An option naming a pool of the config: `portico check` refuses a name that is not one."""


def _from_config_dir(value: Path, info: ValidationInfo) -> Path:
    base = info.context.get(CONFIG_DIR) if isinstance(info.context, dict) else None
    return value if value.is_absolute() or not base else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_from_config_dir)]
"""An option naming a file: a relative path is taken from the config file's directory."""


# ---------------------------------------------------------------------------------------------
# Header rules shared by the views and `Response`

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# framing and connection management are Portico's: a plugin setting them would corrupt the
# exchange (RFC 9112 §6, RFC 9110 §7.6.1)
_RESERVED: Final = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def _field(name: str, value: str) -> Header:
    """A header a plugin gives, as bytes; ValueError for what HTTP or Portico cannot send."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name")
    if name.lower() in _RESERVED:
        raise ValueError(f"{name} is set by Portico, not by a plugin")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"the value of {name} holds a line break or NUL")
    return name.encode("ascii"), value.encode("latin-1")


def _without(headers: Iterable[Header], name: bytes) -> list[Header]:
    return [h for h in headers if h[0].lower() != name]


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Response:
    """An answer a filter makes itself, instead of the server's: `status` (200-599),
    `body` (str is sent as UTF-8, text/plain unless `headers` name a Content-Type; or a
    `BodySource` such as `FileBody`, streamed as the client takes it) and `headers` as
    (name, value) pairs. Content-Length and connection handling are Portico's."""

    status: int
    body: bytes | str | BodySource = b""
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"a response status must be from 200 to 599, not {self.status}")
        for name, value in self.headers:
            _field(name, value)
        streamed = not isinstance(self.body, (bytes, str))
        if (streamed or self.body) and self.status in (204, 304):
            raise ValueError(f"a {self.status} response has no body")

    def to_local(self) -> LocalResponse:
        """The response as one of Portico's own answers (`portico.http.local`), which the
        client's protocol frames when it is sent (an answer to HEAD without its body)."""
        body: bytes | BodySource = self.body.encode() if isinstance(self.body, str) else self.body
        fields = [_field(name, value) for name, value in self.headers]
        if isinstance(self.body, str) and not any(n.lower() == b"content-type" for n, _ in fields):
            fields.append((b"Content-Type", b"text/plain; charset=utf-8"))
        return local_response(self.status, fields, body)  # Content-Length: local_response's


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A probe's verdict; `detail` says why in a few words, for logs and the admin API."""

    ok: bool
    detail: str


# ---------------------------------------------------------------------------------------------
# Views: what a filter sees of a request and of a response head


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Client(Protocol):
    @property
    def client_ip(self) -> str: ...


class ProxiedRequest(Protocol):
    """What the proxy exposes of one request to filters (`portico.proxy.l7.Exchange`
    satisfies it); users' filters see it through `Request`."""

    headers: list[Header]  # as received (a filter may replace them)

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def head(self) -> RequestHead: ...
    @property
    def route(self) -> _Named | None: ...
    @property
    def client(self) -> _Client: ...
    @property
    def pool_name(self) -> str: ...
    def use_pool(self, name: str) -> None: ...


class Request:
    """One request, as a filter's hooks see it: read it, edit the headers the server gets,
    send it to another pool. Valid during the hook call only. Text is decoded as Latin-1
    (every byte maps to one character), so nothing a client sends is lost."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: ProxiedRequest) -> None:
        self._exchange = exchange

    @property
    def method(self) -> str:
        return self._exchange.method.decode("latin-1")

    @property
    def target(self) -> str:
        """The path and query, as the server will get them (a route may have rewritten it)."""
        return self._exchange.target.decode("latin-1")

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def host(self) -> str | None:
        host = self._exchange.head.host
        return host.decode("latin-1") if host is not None else None

    @property
    def client_ip(self) -> str:
        return self._exchange.client.client_ip

    @property
    def route(self) -> str | None:
        """The route's name; None in a listener's filters (they run before routing)."""
        route = self._exchange.route
        return route.name if route is not None else None

    @property
    def pool(self) -> str:
        """The pool the request goes to, as things stand."""
        return self._exchange.pool_name

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        low = name.lower().encode("latin-1")
        for field, value in self._exchange.headers:
            if field.lower() == low:
                return value.decode("latin-1")
        return None

    def headers(self) -> list[tuple[str, str]]:
        """Every header as received, in order."""
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._exchange.headers]

    def set_header(self, name: str, value: str) -> None:
        """Replace header `name` for the server (and for later filters and routing)."""
        field = _field(name, value)
        low = field[0].lower()
        exchange = self._exchange
        exchange.headers = [*_without(exchange.headers, low), field]
        exchange.head.headers = [*_without(exchange.head.headers, low), field]

    def remove_header(self, name: str) -> None:
        """Drop header `name`: the server does not get it."""
        low = name.lower().encode("latin-1")
        exchange = self._exchange
        exchange.headers = _without(exchange.headers, low)
        exchange.head.headers = _without(exchange.head.headers, low)

    def use_pool(self, name: str) -> None:
        """Send the request to pool `name`, whatever the route says (KeyError if there is no
        such pool: validate pool names in your `Options` with `PoolName`)."""
        self._exchange.use_pool(name)


class ResponseHeaders:
    """The head of a server's response, as a filter's `on_response` sees it: the status and
    the headers the client will get (framing excluded), which it may change; the body's
    length when known; and two ways to change the body: `transform` (streamed through a
    `BodyTransform`) or `replace` (another answer entirely). Valid during the hook call."""

    __slots__ = ("_edit",)

    def __init__(self, status: int, fields: list[Header]) -> None:
        self._edit = ResponseEdit(status, b"", fields, None, cast("ExchangeView", None))

    @classmethod
    def of(cls, edit: ResponseEdit) -> ResponseHeaders:
        """The view of `edit` a hook is given (Portico's)."""
        view = cls.__new__(cls)
        view._edit = edit
        return view

    @property
    def status(self) -> int:
        return self._edit.status

    @status.setter
    def status(self, value: int) -> None:
        """A new status (200-599; the reason phrase follows). The body stays the server's:
        to send another, use `replace`."""
        if not isinstance(value, int) or not 200 <= value <= 599:
            raise ValueError(f"a response status must be from 200 to 599, not {value!r}")
        self._edit.status = value

    @property
    def fields(self) -> list[Header]:
        """The headers as (bytes, bytes) pairs, as Portico sends them."""
        return self._edit.headers

    @property
    def length(self) -> int | None:
        """The body's length in bytes when the server said it (None: unknown, or none)."""
        return self._edit.length

    @property
    def local(self) -> bool:
        """True for Portico's own answers (seen by filters with `local_answers`)."""
        return self._edit.local

    @property
    def has_body(self) -> bool:
        """False for an answer to HEAD and for a 204 or 304: a transform sees nothing."""
        return self._edit.has_body

    def header(self, name: str) -> str | None:
        value = self._edit.header(name.encode("latin-1"))
        return value.decode("latin-1") if value is not None else None

    def set_header(self, name: str, value: str) -> None:
        field = _field(name, value)
        self._edit.set_header(*field)

    def add_header(self, name: str, value: str) -> None:
        """One more field, keeping those of the same name (Set-Cookie)."""
        self._edit.headers.append(_field(name, value))

    def remove_header(self, name: str) -> None:
        self._edit.remove_header(name.encode("latin-1"))

    def transform(self, transform: BodyTransform) -> None:
        """Stream the body through `transform` (after any attached before). Content-Length is
        then dropped: HTTP/1.1 clients get the body chunked, HTTP/2 ones as DATA frames.
        Ignored without a body (`has_body`)."""
        self._edit.transform(transform)

    def replace(self, response: Response) -> None:
        """Answer with `response` instead of the server's (whose body is not read); later
        filters' `on_response` hooks do not run."""
        if not isinstance(response, Response):
            raise TypeError(f"replace takes a Response, not {type(response).__name__}")
        self._edit.replace(response.to_local())


# ---------------------------------------------------------------------------------------------
# Base classes


class Filter:
    """A hook on each request of the listener or route whose `filters:` name it. Override
    `on_request`, `on_response`, `on_done` or any of them; one that is not overridden costs
    nothing.

    `on_request` may be ``async def`` when it must wait on I/O; it is then bounded by
    `plugins.timeout`. `on_response` and `on_done` are always plain functions."""

    Options: ClassVar[type[BaseModel] | None] = None
    local_answers: ClassVar[bool] = False
    """True: `on_response` also sees Portico's own answers (another filter's `Response`, a
    route's redirect or fixed page; not its error pages), e.g. to compress them."""

    def on_request(self, request: Request) -> Response | Awaitable[Response | None] | None:
        """None to let the request go on (maybe edited); a `Response` to answer it here."""
        return None

    def on_response(self, request: Request, response: ResponseHeaders) -> None:
        """A server's response head, before the client gets it: change its status or
        headers, attach a body transform, or replace it."""
        return None

    def on_done(self, request: Request, outcome: Outcome) -> None:
        """The request has ended (answered, cut or abandoned): how (`Outcome`). For logs,
        metrics, learning; nothing can be changed any more."""
        return None


class Probe:
    """An active health check of one server, run by the control plane every `interval`."""

    Options: ClassVar[type[BaseModel] | None] = None

    async def check(self, host: str, port: int, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        """Whether the server at `host:port` is healthy. Finish within `timeout` seconds (the
        checker cuts a probe off a little after it); raising counts as a failed check."""
        raise NotImplementedError


def options_of(cls: type[Any]) -> type[BaseModel] | None:
    """The `Options` model a plugin class declares, or None."""
    options = getattr(cls, "Options", None)
    return options if isinstance(options, type) and issubclass(options, BaseModel) else None
