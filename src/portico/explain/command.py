"""`portico explain CONFIG 'GET https://host/path' -H 'Name: value'`: the command's arguments,
the offline server state it may be given (`--state`), and the question put to a running
Portico's admin API (`--live`). The explanation itself is `decide.explain`'s."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from portico.config.schema import Config
from portico.config.units import parse_duration
from portico.explain.decide import LiveState, ServerLive, explain
from portico.explain.model import ExplainRequest, Explanation
from portico.explain.request import parse_request
from portico.explain.text import render_text

__all__ = ["add_arguments", "parse_states", "run"]

LIVE_TIMEOUT = 10.0  # seconds to wait for the admin API


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to portico.yaml")
    parser.add_argument("request", help="METHOD URL, e.g. 'GET https://shop.example.com/cart?x=1'")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeat for more); a Host header wins over the URL's host",
    )
    parser.add_argument("--client-ip", default="127.0.0.1", help="the client's address")
    parser.add_argument("--listener", help="the listener (default: chosen by the URL)")
    parser.add_argument("--json", action="store_true", help="print JSON for tools")
    parser.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="[POOL/]SERVER=STATE",
        help="offline: assume a server state: down, drain, maint, ejected, busy:N (N requests "
        "in flight), back:30s (came back up 30s ago: slow start); comma-separate several",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="ask the running Portico (the config's admin section) with its live server state",
    )
    parser.add_argument(
        "--admin",
        metavar="URL",
        help="the admin API to ask (implies --live), e.g. http://127.0.0.1:9090",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        sample = parse_request(args.request, args.header, args.client_ip)
        if args.live or args.admin:
            if args.state:
                raise ValueError("--state is for offline explanations; --live uses the real state")
            result = _ask(config, args)
        else:
            states = parse_states(config, args.state)
            result = explain(config, sample, listener=args.listener, state=states)
    except ValueError as exc:
        print(f"portico: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"portico: cannot ask the running Portico: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(render_text(result), end="")
    return 0


def parse_states(config: Config, specs: Sequence[str]) -> LiveState:
    """`--state` values as the server state `explain` takes. Raises ValueError naming a
    server or state that does not exist."""
    states: dict[tuple[str, str], ServerLive] = {}
    for spec in specs:
        who, eq, what = spec.partition("=")
        if not eq or not who or not what:
            raise ValueError(f"--state {spec!r}: write SERVER=STATE or POOL/SERVER=STATE")
        pool_name, slash, server = who.rpartition("/")
        keys = [
            (name, s.name)
            for name, pool in config.pools.items()
            if not slash or name == pool_name
            for s in pool.servers
            if s.name == server
        ]
        if not keys:
            raise ValueError(
                f"--state {spec!r}: no server {server!r}"
                + (f" in pool {pool_name!r}" if slash else " in any pool")
            )
        fields: dict[str, object] = {}
        for word in what.split(","):
            kind, _, value = word.strip().partition(":")
            if kind == "down":
                fields["up"] = False
                fields["detail"] = "assumed down (--state)"
            elif kind in ("drain", "maint"):
                fields["state"] = kind
            elif kind == "ejected":
                fields["ejected_by"] = 1
            elif kind == "busy" and value.isdigit():
                fields["in_flight"] = int(value)
            elif kind == "back" and value:
                fields["back_for"] = parse_duration(value)
            else:
                raise ValueError(
                    f"--state {spec!r}: {word!r} is not a state: use down, drain, maint, "
                    "ejected, busy:N or back:30s"
                )
        for key in keys:
            states[key] = ServerLive(**fields)  # type: ignore[arg-type]
    return states


def _ask(config: Config, args: argparse.Namespace) -> Explanation:
    """POST /api/explain on the running Portico's admin listener."""
    url = args.admin
    token: str | None = None
    admin = config.admin
    if admin is not None:
        token = admin.token or (os.environ.get(admin.token_env) if admin.token_env else None)
    if url is None:
        if admin is None:
            raise ValueError("the config has no admin section: --live needs the admin API")
        host, port = admin.bind.host, admin.bind.port
        if not port:
            raise ValueError("the admin listener binds port 0: give its address with --admin")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    body = ExplainRequest(
        request=args.request, headers=args.header, client_ip=args.client_ip, listener=args.listener
    )
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http = urllib.request.Request(
        url.rstrip("/") + "/api/explain",
        data=body.model_dump_json().encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(http, timeout=LIVE_TIMEOUT) as response:
            return Explanation.model_validate_json(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            detail = f"{error['error']}: {error['detail']}"
        except (ValueError, KeyError, TypeError):
            detail = str(exc)
        if exc.code == 422:
            raise ValueError(detail) from None
        raise OSError(f"{url} answered {exc.code}: {detail}") from None
