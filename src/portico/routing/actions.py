"""What a route does to a request besides choosing a pool: path rewrite, header edits, and the
answers Portico gives itself (redirects, fixed responses). *pure*

This module owns `RouteActions`, compiled once per route from its config with everything that
can be precomputed already built (a fixed response is one `LocalResponse`), and the functions
the proxy applies per request. It never decides which route a request takes (`router.py`),
never writes to a socket, never serialises an answer (the protocol edge does) and never looks
at a pool.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

from portico.config.routes import HeaderEditsConfig, RouteConfig
from portico.http.headers import Header
from portico.http.local import LocalResponse, local_response
from portico.routing.matchers import host_name

__all__ = [
    "HeaderEdits",
    "Redirect",
    "RouteActions",
    "apply_request_headers",
    "apply_response_headers",
    "fixed_response",
    "redirect_response",
    "rewrite_path",
]

# A permanent redirect is cached by browsers with no end unless told otherwise; an hour keeps
# most of the benefit while a wrong redirect in a config heals by itself.
PERMANENT_REDIRECT_MAX_AGE: Final = 3600


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """A `HeaderEditsConfig` as bytes: drop every field named in `remove` (lower-case: the
    removed and the set names), then append `append` (the set fields, then the added ones)."""

    remove: frozenset[bytes]
    append: tuple[Header, ...]

    @classmethod
    def from_config(cls, config: HeaderEditsConfig) -> HeaderEdits | None:
        """The edits, or None when the config changes nothing."""
        remove = frozenset(name.lower().encode("ascii") for name in (*config.remove, *config.set))
        append = tuple(
            (name.encode("ascii"), value.encode("utf-8"))
            for fields in (config.set, config.add)
            for name, value in fields.items()
        )
        if not remove and not append:
            return None
        return cls(remove, append)

    def apply(self, headers: list[Header]) -> list[Header]:
        """A new list with the edits made; `headers` itself is left as it was.

        Set fields go to the end rather than where the old field was: field order matters only
        among fields of one name (RFC 9110 §5.3), and those are all replaced together.
        """
        remove = self.remove
        out = [h for h in headers if h[0].lower() not in remove] if remove else headers.copy()
        out.extend(self.append)
        return out


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect answer, prebuilt around its one variable part, the Location.

    `parts` is the template: literal bytes, and field numbers (an index into REDIRECT_FIELDS'
    order: host, path, query, scheme) filled per request.
    """

    status: int
    parts: tuple[bytes | int, ...]
    fields: tuple[Header, ...]  # what follows Location (Content-Length: 0, the route's edits)


_FIELD_NUMBERS: Final = {"host": 0, "path": 1, "query": 2, "scheme": 3}


def _template_parts(template: str) -> tuple[bytes | int, ...]:
    parts: list[bytes | int] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        if literal:
            parts.append(_escape(literal.encode("utf-8"), _SAFE_URI))
        if field is not None:
            parts.append(_FIELD_NUMBERS[field])  # the config allows only these names
    return tuple(parts)


def _build_redirect(route: RouteConfig) -> Redirect:
    config = route.redirect
    assert config is not None
    status = config.status
    fields: list[Header] = [(b"Content-Length", b"0")]
    if status in (301, 308):
        fields.append((b"Cache-Control", b"max-age=%d" % PERMANENT_REDIRECT_MAX_AGE))
    edits = HeaderEdits.from_config(route.response_headers) if route.response_headers else None
    if edits is not None:
        fields = edits.apply(fields)
    return Redirect(status=status, parts=_template_parts(config.to), fields=tuple(fields))


def _build_fixed(route: RouteConfig) -> LocalResponse:
    config = route.respond
    assert config is not None
    body = config.body.encode("utf-8")
    fields: list[Header] = []
    if config.status not in (204, 304):  # neither has a body (RFC 9110 §15.3.5, §15.4.5)
        fields.append((b"Content-Type", config.content_type.encode("utf-8")))
        fields.append((b"Content-Length", b"%d" % len(body)))
    edits = HeaderEdits.from_config(route.response_headers) if route.response_headers else None
    if edits is not None:
        fields = edits.apply(fields)
    return local_response(config.status, fields, body)


@dataclass(frozen=True, slots=True)
class RouteActions:
    """Everything a route does besides choosing a pool; None fields do nothing.

    On a redirect or respond route, `response_headers` is None: the edits are already part of
    the prebuilt answer.
    """

    strip_prefix: bytes | None = None
    replace_prefix: bytes = b""
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    redirect: Redirect | None = None
    respond: LocalResponse | None = None

    @classmethod
    def from_config(cls, route: RouteConfig) -> RouteActions | None:
        """Compile a route's actions, or None when it only chooses a pool."""
        actions = cls(
            strip_prefix=route.strip_prefix.encode("ascii") if route.strip_prefix else None,
            replace_prefix=route.replace_prefix.encode("ascii") if route.replace_prefix else b"",
            request_headers=(
                HeaderEdits.from_config(route.request_headers) if route.request_headers else None
            ),
            response_headers=(
                HeaderEdits.from_config(route.response_headers)
                if route.response_headers and route.pool is not None
                else None
            ),
            redirect=_build_redirect(route) if route.redirect is not None else None,
            respond=_build_fixed(route) if route.respond is not None else None,
        )
        return None if actions == _NOTHING else actions


_NOTHING: Final = RouteActions()


# ---------------------------------------------------------------------------------------------
# Per request


def rewrite_path(path: bytes, actions: RouteActions) -> bytes:
    """The request target to send upstream: `strip_prefix` replaced by `replace_prefix` (or
    removed), the query kept. What is left always starts with "/" (``/video`` stripped from
    ``/video?a`` gives ``/?a``). A target not starting with the prefix is returned as it was."""
    prefix = actions.strip_prefix
    if prefix is None or not path.startswith(prefix):
        return path
    out = actions.replace_prefix + path[len(prefix) :]
    return out if out[:1] == b"/" else b"/" + out


def apply_request_headers(headers: list[Header], actions: RouteActions) -> list[Header]:
    """The request headers after the route's edits: `headers` itself when there are none (do
    not mutate the result then), else a new list."""
    edits = actions.request_headers
    return headers if edits is None else edits.apply(headers)


def apply_response_headers(headers: list[Header], actions: RouteActions) -> list[Header]:
    """The response headers after the route's edits, as `apply_request_headers`."""
    edits = actions.response_headers
    return headers if edits is None else edits.apply(headers)


def redirect_response(
    actions: RouteActions, host: bytes | None, path: bytes, scheme: bytes
) -> LocalResponse:
    """The redirect answer (Location first, Content-Length: 0) for one request.

    `host` is the Host header as received (the port is left out of {host}), `path` the request
    target with its query (rewritten by strip_prefix/replace_prefix before filling {path}),
    `scheme` b"http" or b"https". Every value taken from the request is percent-encoded where
    it holds a byte a URI may not (controls, CR, LF, spaces, non-ASCII, quotes), so a request
    can never add a header or end the head early, whatever the parser let through.
    Precondition: `actions.redirect` is set.
    """
    redirect = actions.redirect
    if redirect is None:
        raise ValueError("this route does not redirect")
    target = rewrite_path(path, actions)
    mark = target.find(b"?")
    values = (
        _escape(host_name(host), _SAFE_HOST) if host is not None else b"",
        _escape(target if mark < 0 else target[:mark], _SAFE_URI),
        b"" if mark < 0 else _escape(target[mark:], _SAFE_URI),
        scheme if scheme in (b"http", b"https") else _escape(scheme, _SAFE_HOST),
    )
    location = b"".join(
        part if isinstance(part, bytes) else values[part] for part in redirect.parts
    )
    return local_response(redirect.status, ((b"Location", location), *redirect.fields))


def fixed_response(actions: RouteActions) -> LocalResponse:
    """The prebuilt `respond` answer (the edge leaves its body out for a HEAD request).
    Precondition: `actions.respond` is set."""
    respond = actions.respond
    if respond is None:
        raise ValueError("this route does not respond")
    return respond


# ---------------------------------------------------------------------------------------------
# Percent-encoding

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# RFC 3986: unreserved, sub-delims, ":" "@" "/" "?" and "%" (kept so that existing escapes
# stay as they are); everything else, CR and LF above all, is encoded.
_SAFE_URI: Final = _ALNUM + b"-._~!$&'()*+,;=:@/?%"
_SAFE_HOST: Final = _ALNUM + b"-._[]:"  # a reg-name or an IP literal, nothing more


def _escape(value: bytes, safe: bytes) -> bytes:
    """`value` with every byte outside `safe` percent-encoded; `value` itself when all are
    safe (the usual case, checked in C by deleting the safe bytes)."""
    if not value.translate(None, safe):
        return value
    return b"".join(bytes((c,)) if c in safe else b"%%%02X" % c for c in value)
