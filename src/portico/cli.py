"""The `portico` command: run, check, reload, health, demo, explain, simulate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from portico import __version__

if TYPE_CHECKING:
    from portico.config.schema import Config

# Everything else is imported inside the commands: `main` checks the compiled build before
# anything that may be compiled (or import something compiled) is imported.


def _read(path: str) -> tuple[str, str] | None:
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except OSError as exc:
        print(f"portico: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None


def _load(path: str) -> tuple[Config, str, str] | int:
    """The validated config, its text and file name; or the exit code after saying why not."""
    from portico.config.load import ConfigError, parse_config

    loaded = _read(path)
    if loaded is None:
        return 2
    text, filename = loaded
    try:
        return parse_config(text, filename), text, filename
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, _, filename = loaded
    from portico.upstreams.resolve import unresolved_servers

    for warning in unresolved_servers(config):  # warnings only: DNS may differ where it runs
        print(f"{filename} {warning}", file=sys.stderr)
    pools = ", ".join(
        f"{name} ({len(p.servers)} servers{f', {len(p.discover)} from DNS' if p.discover else ''})"
        for name, p in config.pools.items()
    )
    print(f"{filename}: OK: {len(config.listeners)} listener(s); pools: {pools}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from portico.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


# parsed once before the fork server starts: what the first parse builds lazily (~2 MiB) is
# then built once and shared, not once per process. Built-ins only: no plug-in is imported.
_WARM_UP_CONFIG = """\
listeners:
  - {name: web, bind: "127.0.0.1:0", protocol: http, default_pool: app}
pools:
  app: {servers: [{address: "127.0.0.1:1"}]}
"""


def _warm_up() -> None:
    from portico.config.load import parse_config

    parse_config(_WARM_UP_CONFIG, "<warm-up>")


def _preload_worker() -> None:
    import portico.worker  # noqa: F401  (the fork server holds the worker's code, shared)


def _run_worker(argv: list[str]) -> int:
    from portico import worker

    return worker.main(argv)


def cmd_run(args: argparse.Namespace) -> int:
    from portico import forkserver, supervisor  # the config models too: shared with workers

    # before the config is parsed (plug-ins are imported by each worker, after the fork) and
    # before any event loop or thread exists
    if forkserver.available():
        _warm_up()
    fork_server = forkserver.start(_preload_worker, _run_worker)
    loaded = _load(args.config)
    if isinstance(loaded, int):
        if fork_server is not None:
            fork_server.close()
        return loaded
    config, text, filename = loaded
    return supervisor.run(config, text, filename, fork_server)


RELOAD_TIMEOUT = 120.0  # new workers start, then the old ones stop accepting (10 s at most)


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the file first (a bad one is refused here, before the running Portico is
    disturbed), then ask the supervisor, found by --pid or the config's pid_file, to reload
    it, and wait for the outcome. Only the file Portico runs can be reloaded: a different
    one is refused, since SIGHUP, the admin API and every later reload read the file the
    supervisor was started with. A pid that is not a running Portico supervisor (a stale pid
    file) is never signalled."""
    from portico import control

    loaded = _load(args.config)
    if isinstance(loaded, int):
        if loaded == 1:
            print("portico: reload refused; the running config stays", file=sys.stderr)
        return loaded
    config, _, filename = loaded
    pid = args.pid
    if pid is None:
        if not config.pid_file:
            print("portico: no --pid given and the config sets no pid_file", file=sys.stderr)
            return 2
        pid = _read_pid_file(config.pid_file)
        if pid is None:
            return 2
    try:
        reply = control.ask(
            pid, "reload", timeout=RELOAD_TIMEOUT, config=str(Path(filename).absolute())
        )
    except control.NotRunning:
        where = f"pid_file {config.pid_file} names" if args.pid is None else "--pid names"
        print(
            f"portico: {where} process {pid}, which is not a running Portico supervisor "
            "(a stale pid file?); nothing was signalled",
            file=sys.stderr,
        )
        return 2
    except PermissionError as exc:
        print(f"portico: cannot ask process {pid}: {exc} (run as its user)", file=sys.stderr)
        return 2
    except TimeoutError:
        print(
            f"portico: process {pid} did not answer within {RELOAD_TIMEOUT:.0f}s; "
            "the reload may still complete (see its log)",
            file=sys.stderr,
        )
        return 2
    if reply.get("error") == "other-config":
        print(
            f"portico: process {pid} runs {reply.get('config')}, not {filename}: reload "
            "refused (a running Portico reloads the file it was started with: edit that "
            "one, or restart Portico with this one)",
            file=sys.stderr,
        )
        return 2
    if not reply.get("ok"):
        print(f"portico: reload refused: {reply.get('detail')}", file=sys.stderr)
        return 1
    print(f"portico: process {pid} reloaded {filename}: generation {reply.get('generation')}")
    return 0


HEALTH_OK, HEALTH_NOT_OK, HEALTH_NO_ANSWER, HEALTH_USAGE = 0, 1, 2, 3


def _probe_url(url: str, ready: bool, timeout: float) -> tuple[int, str]:
    """GET /healthz or /readyz at the admin listener `url`: (exit code, what to print)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        return HEALTH_USAGE, f"--url must be http://host:port, not {url!r}"
    path = "/readyz" if ready else "/healthz"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read(64 * 1024).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return HEALTH_NO_ANSWER, f"no answer from {parts.netloc}{path}: {exc}"
    finally:
        conn.close()
    if response.status == 200:
        return HEALTH_OK, body
    return HEALTH_NOT_OK, f"{response.status} {body}"


def _probe_control(pid: int, ready: bool, timeout: float) -> tuple[int, str]:
    """Ask the supervisor `pid` on its control socket (a config without an admin listener)."""
    from portico import control

    try:
        reply = control.ask(pid, "health", timeout=timeout)
    except control.NotRunning:
        return HEALTH_NO_ANSWER, f"process {pid} is not a running Portico supervisor"
    except PermissionError as exc:
        return HEALTH_USAGE, f"cannot ask process {pid}: {exc} (run as its user)"
    except TimeoutError:
        return HEALTH_NO_ANSWER, f"process {pid} did not answer within {timeout:g}s"
    reply.pop("type", None)
    text = json.dumps(reply)
    if not ready or reply.get("ready"):
        return HEALTH_OK, text
    return HEALTH_NOT_OK, text


def cmd_health(args: argparse.Namespace) -> int:
    """For scripts (keepalived's vrrp_script, probes): 0 healthy (or ready, with --ready);
    1 Portico answered that it is not; 2 no answer (not running, refused, timed out); 3 a
    usage or config problem. --url is the light way (no config parsed)."""
    if args.url:
        code, text = _probe_url(args.url, args.ready, args.timeout)
    elif args.config:
        loaded = _load(args.config)
        if isinstance(loaded, int):
            return HEALTH_USAGE
        config = loaded[0]
        if config.admin is not None:
            host, port = config.admin.bind.host, config.admin.bind.port
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            shown = f"[{host}]" if ":" in host else host
            code, text = _probe_url(f"http://{shown}:{port}", args.ready, args.timeout)
        elif config.pid_file:
            pid = _read_pid_file(config.pid_file)
            if pid is None:
                return HEALTH_NO_ANSWER
            code, text = _probe_control(pid, args.ready, args.timeout)
        else:
            code, text = HEALTH_USAGE, "the config has neither admin nor pid_file: give --url"
    else:
        code, text = HEALTH_USAGE, "give a config file or --url"
    if not args.quiet or code:
        print(f"portico: {text}", file=sys.stdout if code == HEALTH_OK else sys.stderr)
    return code


def _read_pid_file(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except FileNotFoundError:
        print(
            f"portico: no pid_file {path}: is Portico running? (if this file names a new "
            "pid_file, give --pid)",
            file=sys.stderr,
        )
    except (OSError, ValueError) as exc:
        print(f"portico: cannot read pid_file {path}: {exc}", file=sys.stderr)
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from portico.demo import run_demo

    base = args.backend_port
    return run_demo(
        port=args.port,
        workers=args.workers,
        backend_ports=[base, base + 1, base + 2],
        admin_port=args.admin_port,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    from portico.explain import command

    return command.run(args, loaded[0])


def cmd_simulate(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    from portico.simulate import command

    return command.run(args, loaded[0])


def _refuse_stale_build() -> int:
    """Refuse to start on compiled modules that are not a build of the sources beside them
    (edited since, or left from a module no longer compiled): Python would run the old code
    without a word. Returns the exit code, or 0 when the build is sound (or pure Python)."""
    from portico import buildinfo

    problems = buildinfo.problems()
    if not problems:
        return 0
    print("portico: the compiled modules do not match this installation:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    print(f"portico: {buildinfo.FIX}", file=sys.stderr)
    return 2


def _add_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser(
        "health",
        help="is Portico alive (or --ready)? exit 0 yes, 1 no, 2 no answer, 3 usage",
    )
    health.add_argument("config", nargs="?", help="path to portico.yaml (finds admin.bind)")
    health.add_argument("--url", help="the admin listener, e.g. http://127.0.0.1:9090")
    health.add_argument(
        "--ready", action="store_true", help="ready for traffic (/readyz), not only alive"
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    health.add_argument("-q", "--quiet", action="store_true", help="say nothing when healthy")
    health.set_defaults(func=cmd_health)


def _health_only(argv: list[str]) -> int:
    """`portico health`, run every second or two by keepalived: parsed without importing the
    other commands (explain's and simulate's parsers pull in most of Portico)."""
    parser = argparse.ArgumentParser(prog="portico")
    _add_health(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def main(argv: list[str] | None = None) -> int:
    refused = _refuse_stale_build()  # first: the commands below import compiled modules
    if refused:
        return refused
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["health"]:
        return _health_only(given)
    parser = argparse.ArgumentParser(
        prog="portico", description="A load balancer and reverse proxy in Python."
    )
    parser.add_argument("--version", action="version", version=f"portico {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run from a config file")
    run.add_argument("config", help="path to portico.yaml")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("config", help="path to portico.yaml")
    check.set_defaults(func=cmd_check)
    schema = sub.add_parser("schema", help="print the config file's JSON Schema (for editors)")
    schema.set_defaults(func=cmd_schema)
    reload = sub.add_parser("reload", help="validate a config, then reload the running Portico")
    reload.add_argument("config", help="path to portico.yaml")
    reload.add_argument("--pid", type=int, help="the supervisor's pid (default: pid_file)")
    reload.set_defaults(func=cmd_reload)
    _add_health(sub)
    demo = sub.add_parser("demo", help="three demo backends behind Portico")
    demo.add_argument("--port", type=int, default=8080, help="Portico's port (default 8080)")
    demo.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1: strict rotation)"
    )
    demo.add_argument(
        "--backend-port", type=int, default=9001, help="first of three backend ports (9001)"
    )
    demo.add_argument(
        "--admin-port", type=int, default=9090, help="the dashboard's port (default 9090)"
    )
    demo.set_defaults(func=cmd_demo)
    # their arguments only when asked for: their modules (~2 MiB) stay out of `portico run`'s
    # processes
    explain = sub.add_parser("explain", help="why a request goes to the route, pool and server")
    if given[:1] == ["explain"]:
        from portico.explain import command as explain_command

        explain_command.add_arguments(explain)
    explain.set_defaults(func=cmd_explain)
    simulate = sub.add_parser("simulate", help="replay a trace through the policies, compare")
    if given[:1] == ["simulate"]:
        from portico.simulate import command as simulate_command

        simulate_command.add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s portico %(levelname)s %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
