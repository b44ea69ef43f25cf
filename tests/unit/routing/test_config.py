"""The routes config model: shorthands, normalisation, and errors that say what is wrong."""

from typing import Any

import pytest
from pydantic import ValidationError

from portico.config.routes import MatchConfig, RouteConfig, ValueMatch
from tests.unit.routing.routes import routes


def one(**data: Any) -> RouteConfig:
    return RouteConfig.model_validate(data)


def error(data: Any) -> tuple[tuple[str | int, ...], str]:
    """The one error that `data` (a route, or a list of routes) gives: key path and message."""

    def validate() -> object:
        return routes(*data) if isinstance(data, list) else RouteConfig.model_validate(data)

    with pytest.raises(ValidationError) as info:
        validate()
    errors = info.value.errors(include_url=False)
    assert len(errors) == 1, errors
    found = errors[0]
    return tuple(found["loc"]), str(found["msg"]).removeprefix("Value error, ")


def test_the_full_example_loads() -> None:
    route = one(
        name="video",
        match={
            "host": "Video.Example.com",
            "path": "/video/",
            "path_regex": "^/video/[a-z]+",
            "method": ["get", "HEAD"],
            "headers": {
                "X-Env": "canary",
                "X-Debug": {"present": True},
                "X-Ua": {"regex": "curl/.*"},
            },
            "cookies": {"beta": 1},
            "query": {"debug": "1"},
        },
        pool="video",
        strip_prefix="/video",
        replace_prefix="/v2",
        request_headers={"set": {"X-A": "1"}, "add": {"X-B": "2"}, "remove": ["X-C"]},
        response_headers={"set": {"X-D": "1"}, "remove": ["Server"]},
        timeouts={"connect": "1s", "read": "5s", "write": "5s"},
    )
    assert route.match.host == ("video.example.com",)
    assert route.match.prefix == "/video/"
    assert route.match.method == ("GET", "HEAD")
    assert route.match.headers["X-Env"] == ValueMatch(exact="canary")
    assert route.match.cookies["beta"] == ValueMatch(exact="1")
    assert route.timeouts is not None
    assert route.timeouts.read == 5.0


def test_missing_or_null_match_matches_all() -> None:
    assert one(pool="a").match == MatchConfig()
    assert one(pool="a", match=None).match == MatchConfig()
    assert routes() == ()


def test_null_routes_is_no_routes() -> None:
    from pydantic import TypeAdapter

    from portico.config.routes import Routes

    assert TypeAdapter(Routes).validate_python(None) == ()


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        (
            {"match": {"path_regex": "^/v[0-9+/"}, "pool": "a"},
            ("match", "path_regex"),
            '"^/v[0-9+/" is not a valid regex: unterminated character set at position 3',
        ),
        (
            {"match": {"headers": {"X-Ua": {"regex": "(curl"}}}, "pool": "a"},
            ("match", "headers", "X-Ua", "regex"),
            '"(curl" is not a valid regex: missing ), unterminated subpattern at position 0',
        ),
        (
            {"match": {"path_regex": "/caf\u00e9"}, "pool": "a"},
            ("match", "path_regex"),
            '"/caf\u00e9": a regex must be ASCII '
            "(paths arrive percent-encoded: match \u00e9 as %C3%A9)",
        ),
        (
            {"pool": "a", "respond": {"status": 503}},
            (),
            '"pool" and "respond" exclude each other: a route forwards to a pool, redirects, '
            "or responds",
        ),
        (
            {"pool": "a", "redirect": {"to": "/x"}, "respond": {"status": 503}},
            (),
            '"pool" and "redirect" and "respond" exclude each other: a route forwards to a pool, '
            "redirects, or responds",
        ),
        (
            {"match": {"path": "/a/"}},
            (),
            'a route needs one of "pool" (forward), "redirect" or "respond" (answer here), '
            'or "static" (files)',
        ),
        (
            {"match": {"host": []}, "pool": "a"},
            ("match", "host"),
            "must have at least one host (leave the key out to match any)",
        ),
        (
            {"match": {"host": "a.com:8080"}, "pool": "a"},
            ("match", "host", 0),
            '"a.com:8080" has a port: a route matches the host name whatever the port, so leave '
            "the port out",
        ),
        (
            {"match": {"host": "a.*.com"}, "pool": "a"},
            ("match", "host", 0),
            '"a.*.com" is not a host name or *.pattern: write a.example.com, *.example.com '
            "or an IP address",
        ),
        (
            {"match": {"host": "*"}, "pool": "a"},
            ("match", "host", 0),
            '"*" is every host: leave "host" out to match every host',
        ),
        (
            {"match": {"host": ["a.com", "A.com"]}, "pool": "a"},
            ("match", "host"),
            'host "a.com" is listed twice',
        ),
        (
            {"match": {"host": "[zz]"}, "pool": "a"},
            ("match", "host", 0),
            '"[zz]" is not an IPv6 address',
        ),
        (
            {"match": {"method": "GE T"}, "pool": "a"},
            ("match", "method", 0),
            '"GE T" is not an HTTP method',
        ),
        (
            {"match": {"headers": {"X Env": "1"}}, "pool": "a"},
            ("match", "headers", "X Env", "[key]"),
            '"X Env" is not a valid header name',
        ),
        (
            {"match": {"headers": {"X-Env": "1", "x-env": "2"}}, "pool": "a"},
            ("match", "headers"),
            'header "x-env" is the same as "X-Env"',
        ),
        (
            {"match": {"headers": {"X-Env": True}}, "pool": "a"},
            ("match", "headers", "X-Env"),
            "true is not a value to match: write it in quotes, or use {present: true}",
        ),
        (
            {"match": {"cookies": {"b": {"exact": "1", "present": True}}}, "pool": "a"},
            ("match", "cookies", "b"),
            "write one of exact, present or regex, not exact and present together",
        ),
        (
            {"match": {"cookies": {"b": {}}}, "pool": "a"},
            ("match", "cookies", "b"),
            "write one of exact, present or regex",
        ),
        (
            {"match": {"path": "/a", "path_prefix": "/b"}, "pool": "a"},
            ("match",),
            '"path" is short for "path_prefix": write only one of them',
        ),
        (
            {"match": {"path": "video/"}, "pool": "a"},
            ("match", "path"),
            '"video/" is not a request path: start it with "/", no spaces or controls',
        ),
        (
            {"match": {"path": "/caf\u00e9/"}, "pool": "a"},
            ("match", "path"),
            '"/caf\u00e9/" is not a request path as sent: percent-encode non-ASCII characters '
            "(/caf%C3%A9 for /caf\u00e9)",
        ),
        (
            {"match": {"path_exact": "/a?b=1"}, "pool": "a"},
            ("match", "path_exact"),
            '"/a?b=1" is not a request path: paths are matched without the query, so leave out '
            '"?" (match query parameters with "query:")',
        ),
        (
            {"match": {"path": "/video/"}, "strip_prefix": "/vid/", "pool": "a"},
            (),
            'strip_prefix "/vid/" is not a prefix of match.path_prefix "/video/": '
            "it would never apply",
        ),
        (
            {"replace_prefix": "/v2", "pool": "a"},
            (),
            '"replace_prefix" needs "strip_prefix": the prefix it replaces',
        ),
        (
            {"respond": {"status": 503}, "strip_prefix": "/a"},
            (),
            '"strip_prefix" does nothing on a route with "respond"',
        ),
        (
            {"redirect": {"to": "/"}, "request_headers": {"add": {"X-A": "1"}}},
            (),
            '"request_headers" does nothing on a route with "redirect"',
        ),
        (
            {"redirect": {"to": "/"}, "timeouts": {"read": "1s"}},
            (),
            '"timeouts" does nothing on a route with "redirect"',
        ),
        (
            {"redirect": {"to": "/"}, "response_headers": {"set": {"location": "/x"}}},
            (),
            '"response_headers" cannot change the Location of a redirect',
        ),
        (
            {"redirect": {"status": 300, "to": "/"}},
            ("redirect", "status"),
            "Input should be 301, 302, 303, 307 or 308",
        ),
        (
            {"redirect": {"to": "https://{hots}{path}"}},
            ("redirect", "to"),
            '"https://{hots}{path}": unknown field {hots} (use {host}, {path}, {query}, {scheme})',
        ),
        (
            {"redirect": {"to": "https://{host}/\r\nSet-Cookie: a"}},
            ("redirect", "to"),
            '"https://{host}/\\r\\nSet-Cookie: a" is not a redirect target: no spaces or control '
            "characters (percent-encode them)",
        ),
        (
            {"redirect": {"to": "{path!r}"}},
            ("redirect", "to"),
            '"{path!r}": write {path} without a format or conversion',
        ),
        (
            {"respond": {"status": 99}},
            ("respond", "status"),
            "must be a final status from 200 to 599, not 99",
        ),
        (
            {"respond": {"status": 600}},
            ("respond", "status"),
            "must be a final status from 200 to 599, not 600",
        ),
        ({"respond": {"status": True}}, ("respond", "status"), "must be a whole number, not true"),
        (
            {"respond": {"status": 204, "body": "x"}},
            ("respond",),
            "a 204 response has no body: leave out body",
        ),
        (
            {"pool": "a", "request_headers": {"set": {"Content-Length": "1"}}},
            ("request_headers", "set", "Content-Length", "[key]"),
            '"Content-Length" is set by Portico (message framing, hop-by-hop): a route cannot set, '
            "add or remove it",
        ),
        (
            {"pool": "a", "response_headers": {"remove": ["Connection"]}},
            ("response_headers", "remove", 0),
            '"Connection" is set by Portico (message framing, hop-by-hop): a route cannot set, '
            "add or remove it",
        ),
        (
            {"pool": "a", "request_headers": {"add": {"X-A": "a\r\nX-B: b"}}},
            ("request_headers", "add", "X-A"),
            '"a\\r\\nX-B: b" is not a header value: no control characters',
        ),
        (
            {"pool": "a", "request_headers": {"set": {"X-A": "1"}, "remove": ["x-a"]}},
            ("request_headers",),
            '"X-A" is both removed and given a value: keep one',
        ),
        (
            {"pool": "a b"},
            ("pool",),
            '"a b" is not a valid name: use only letters, digits, "_", "." and "-"',
        ),
        ({"pool": "a", "colour": "red"}, ("colour",), "Extra inputs are not permitted"),
        (
            {"pool": "a", "match": {"paths": "/"}},
            ("match", "paths"),
            "Extra inputs are not permitted",
        ),
    ],
)
def test_route_errors(data: dict[str, Any], loc: tuple[str | int, ...], message: str) -> None:
    assert error(data) == (loc, message)


def test_path_exact_outside_the_prefix_could_never_match() -> None:
    assert error({"match": {"path": "/a/", "path_exact": "/b"}, "pool": "a"}) == (
        ("match",),
        'path_exact "/b" does not start with the path prefix "/a/": the route could never match',
    )


def test_duplicate_route_names() -> None:
    assert error([{"name": "a", "pool": "x"}, {"pool": "y"}, {"name": "a", "pool": "z"}]) == (
        (),
        'route name "a" is used by routes[0] and routes[2]',
    )


def test_strip_prefix_must_also_fit_path_exact() -> None:
    assert error({"match": {"path_exact": "/a/b"}, "strip_prefix": "/b", "pool": "a"})[1] == (
        'strip_prefix "/b" is not a prefix of match.path_exact "/a/b": it would never apply'
    )


def test_redirect_defaults_to_302_and_strip_prefix_is_allowed_with_it() -> None:
    route = one(match={"path": "/old/"}, strip_prefix="/old", redirect={"to": "{path}"})
    assert route.redirect is not None
    assert route.redirect.status == 302


def test_respond_defaults() -> None:
    route = one(respond={"status": 503})
    assert route.respond is not None
    assert (route.respond.body, route.respond.content_type) == ("", "text/plain; charset=utf-8")


def test_values_written_as_numbers_are_text() -> None:
    route = one(pool="a", request_headers={"set": {"X-A": 1}}, match={"query": {"v": 2}})
    assert route.request_headers is not None
    assert route.request_headers.set == {"X-A": "1"}
    assert route.match.query["v"] == ValueMatch(exact="2")
    assert error({"pool": "a", "request_headers": {"set": {"X-A": 1.10}}})[1] == (
        "1.1 is not a header value: write it in quotes"
    )
