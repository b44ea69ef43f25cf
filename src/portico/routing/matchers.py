"""The pieces a router is built from: one request seen lazily, compiled conditions, and the
path index. *pure*

This module owns how one route's `MatchConfig` is split into what an index can guarantee (host,
one path condition) and the checks left to run per candidate (`CompiledMatch`), the checks
themselves, the per-host `PathIndex` (exact paths in a dict, prefixes in a trie of path
segments), and `RequestView`, which parses headers, cookies and the query only when a check
first asks, and then once. It never decides between routes (first match wins is `router.py`'s)
and never changes a request (`actions.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from portico.config.routes import MatchConfig, ValueMatch, compile_regex
from portico.http.headers import Header

__all__ = [
    "CompiledMatch",
    "Condition",
    "PathIndex",
    "RequestView",
    "WantedHeaders",
    "host_name",
]

_EMPTY: Final[tuple[bytes, ...]] = ()


def host_name(host: bytes) -> bytes:
    """The name part of a Host value, as routes compare it: lower-case, without the port and
    without a trailing dot (``Video.Example.com.:8080`` -> ``video.example.com``; an IPv6
    literal keeps its brackets: ``[::1]:80`` -> ``[::1]``)."""
    name = host.lower()
    colon = name.rfind(b":")
    if colon >= 0 and name.find(b"]") < colon:  # the colon of a port, not inside [v6]
        name = name[:colon]
    if name.endswith(b"."):
        name = name[:-1]
    return name


@dataclass(frozen=True, slots=True)
class WantedHeaders:
    """The header names some check of a router reads (lower-case), and their lengths: a
    request's map of fields keeps only these, and the length test skips lower-casing most
    names that cannot be one of them."""

    names: frozenset[bytes]
    lengths: frozenset[int]

    @classmethod
    def of(cls, names: Iterable[bytes]) -> WantedHeaders:
        found = frozenset(names)
        return cls(found, frozenset(len(name) for name in found))


class RequestView:
    """One request as the checks see it. The header, cookie and query maps are built on the
    first check that needs each, so a request whose candidates look only at the method and the
    path never pays for parsing them."""

    __slots__ = (
        "_cookies",
        "_fields",
        "_headers",
        "_params",
        "_wanted",
        "method",
        "path",
        "query",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes | None,
        headers: Sequence[Header],
        wanted: WantedHeaders,
    ) -> None:
        self.method = method
        self.path = path  # without the query
        self.query = query  # after "?", None when the target has no "?"
        self._headers = headers
        self._wanted = wanted
        # parsed on first use
        self._fields: dict[bytes, list[bytes]] | None = None
        self._cookies: dict[bytes, list[bytes]] | None = None
        self._params: dict[bytes, list[bytes]] | None = None

    def header_values(self, name: bytes) -> Sequence[bytes]:
        """Values of every field named `name` (lower-case, one of the wanted names), in
        order."""
        fields = self._fields
        if fields is None:
            fields = self._fields = {}
            names, lengths = self._wanted.names, self._wanted.lengths
            for key, value in self._headers:
                if len(key) in lengths:
                    key = key.lower()
                    if key in names:
                        found = fields.get(key)
                        if found is None:
                            fields[key] = [value]
                        else:
                            found.append(value)
        return fields.get(name, _EMPTY)

    def cookie_values(self, name: bytes) -> Sequence[bytes]:
        """Values of every cookie named `name` (names are case-sensitive) in the Cookie
        fields, as sent (RFC 6265 §5.4: ``a=1; b=2``)."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = {}
            for field in self.header_values(b"cookie"):
                for pair in field.split(b";"):
                    key, _, value = pair.strip(b" \t").partition(b"=")
                    if key:
                        cookies.setdefault(key, []).append(value)
        return cookies.get(name, _EMPTY)

    def param_values(self, name: bytes) -> Sequence[bytes]:
        """Values of every query parameter named `name`, names and values percent-decoded
        with "+" as a space (as HTML forms encode them); ``?flag`` has the value b""."""
        params = self._params
        if params is None:
            params = self._params = {}
            if self.query:
                for pair in self.query.split(b"&"):
                    if not pair:
                        continue
                    key, _, value = pair.partition(b"=")
                    params.setdefault(_form_decode(key), []).append(_form_decode(value))
        return params.get(name, _EMPTY)


def _form_decode(text: bytes) -> bytes:
    if b"%" not in text and b"+" not in text:
        return text
    return unquote_to_bytes(text.replace(b"+", b" "))


Condition = Callable[[RequestView], bool]
"""One check on a request; a route matches when all of its checks hold."""


def _value_test(rule: ValueMatch) -> Callable[[Sequence[bytes]], bool]:
    """A test over all the values of one header, cookie or parameter."""
    if rule.present is not None:
        wanted = rule.present
        return lambda values: bool(values) is wanted
    if rule.regex is not None:
        search = compile_regex(rule.regex).search
        return lambda values: any(search(value) is not None for value in values)
    assert rule.exact is not None  # ValueMatch holds exactly one of the three
    expected = rule.exact.encode("utf-8")
    return lambda values: expected in values


def _header_check(name: str, rule: ValueMatch) -> Condition:
    key = name.lower().encode("ascii")
    test = _value_test(rule)
    return lambda request: test(request.header_values(key))


def _cookie_check(name: str, rule: ValueMatch) -> Condition:
    key = name.encode("ascii")
    test = _value_test(rule)
    return lambda request: test(request.cookie_values(key))


def _param_check(name: str, rule: ValueMatch) -> Condition:
    key = name.encode("utf-8")
    test = _value_test(rule)
    return lambda request: test(request.param_values(key))


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """One route's conditions, split between the indexes and the per-candidate checks.

    `hosts` (lower-case names and ``*.suffix`` patterns; None: any host) and the path slot
    (`exact`, else `segments` of a prefix, else anywhere) say where the router files the
    route; `checks` is what those places do not already guarantee, cheapest first, so that a
    regex runs only once the method and path have passed.
    """

    hosts: tuple[bytes, ...] | None
    exact: bytes | None  # filed under this exact path
    segments: tuple[bytes, ...] | None  # filed at this trie node (path segments of a prefix)
    checks: tuple[Condition, ...]
    header_names: frozenset[bytes]  # lower-case names the checks read (b"cookie" for cookies)

    @classmethod
    def compile(cls, match: MatchConfig) -> CompiledMatch:
        """Split a validated `MatchConfig`; regexes compile here (they cannot fail: the config
        compiled them once already)."""
        hosts = tuple(h.encode("ascii") for h in match.host) if match.host is not None else None
        prefix = match.prefix.encode("ascii") if match.prefix is not None else None
        exact = match.path_exact.encode("ascii") if match.path_exact is not None else None
        checks: list[Condition] = []
        if match.method is not None:
            methods = frozenset(m.encode("ascii") for m in match.method)
            checks.append(lambda request: request.method in methods)
        segments: tuple[bytes, ...] | None = None
        if exact is None and prefix is not None:
            # "/a/b/" files at node a -> b and the trie guarantees it; "/a/bc" files at node a
            # (every path starting with it passes there) and still needs its own check.
            *whole, last = prefix[1:].split(b"/")
            segments = tuple(whole)
            if last:
                checks.append(_prefix_check(prefix))
        elif prefix is not None:
            checks.append(_prefix_check(prefix))
        if match.path_regex is not None:
            search = compile_regex(match.path_regex).search
            checks.append(lambda request: search(request.path) is not None)
        checks.extend(_header_check(name, rule) for name, rule in match.headers.items())
        checks.extend(_cookie_check(name, rule) for name, rule in match.cookies.items())
        checks.extend(_param_check(name, rule) for name, rule in match.query.items())
        names = {name.lower().encode("ascii") for name in match.headers}
        if match.cookies:
            names.add(b"cookie")
        return cls(hosts, exact, segments, tuple(checks), frozenset(names))


def _prefix_check(prefix: bytes) -> Condition:
    return lambda request: request.path.startswith(prefix)


class _Node:
    """A trie node: the routes whose prefix ends with "/" exactly here, and deeper segments."""

    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.routes: tuple[int, ...] = ()


class PathIndex:
    """The routes of one host bucket, filed by their path condition, so that a request looks
    at only those whose path can match: one dict lookup for exact paths, and one per path
    segment for prefixes (a trie keyed by segment), plus the routes with no path condition.

    Route numbers are added in increasing order, so every list it hands out is sorted.
    """

    __slots__ = ("_anywhere", "_deep", "_exact", "_root")

    def __init__(self) -> None:
        self._exact: dict[bytes, tuple[int, ...]] = {}
        self._root = _Node()
        self._anywhere: tuple[int, ...] = ()
        self._deep = False

    def add(self, index: int, match: CompiledMatch) -> None:
        """File route number `index` (larger than any added before). Tuples, grown by
        copying: built once per config, read on every request."""
        if match.exact is not None:
            self._exact[match.exact] = (*self._exact.get(match.exact, ()), index)
        elif match.segments is not None:
            node = self._root
            for segment in match.segments:
                node = node.children.setdefault(segment, _Node())
            node.routes = (*node.routes, index)
            self._deep = self._deep or bool(match.segments)
        else:
            self._anywhere = (*self._anywhere, index)

    def collect(self, path: bytes, out: list[Sequence[int]]) -> None:
        """Append to `out` the sorted lists of route numbers whose path condition `path`
        (without the query) may meet. A path not starting with "/" (``*``) meets only routes
        with no path condition."""
        if path[:1] == b"/":
            found = self._exact.get(path)
            if found:
                out.append(found)
            node = self._root
            if node.routes:
                out.append(node.routes)
            if self._deep:
                start = 1
                while True:
                    end = path.find(b"/", start)
                    if end < 0:
                        break
                    child = node.children.get(path[start:end])
                    if child is None:
                        break
                    node = child
                    if node.routes:
                        out.append(node.routes)
                    start = end + 1
        if self._anywhere:
            out.append(self._anywhere)
