"""The `portico` command: run, check, reload, demo, explain, simulate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
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
    pools = ", ".join(f"{name} ({len(p.servers)} servers)" for name, p in config.pools.items())
    print(f"{filename}: OK: {len(config.listeners)} listener(s); pools: {pools}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from portico.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, text, filename = loaded
    from portico import supervisor

    return supervisor.run(config, text, filename)


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the file first (a bad one is refused here, before the running Portico is
    disturbed), then signal the supervisor, found by --pid or the config's pid_file."""
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
        try:
            pid = int(Path(config.pid_file).read_text().strip())
        except (OSError, ValueError) as exc:
            print(f"portico: cannot read pid_file {config.pid_file}: {exc}", file=sys.stderr)
            return 2
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"portico: no process {pid}: is Portico running?", file=sys.stderr)
        return 2
    print(f"portico: asked process {pid} to reload {filename}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    refused = _refuse_stale_build()  # first: the commands below import compiled modules
    if refused:
        return refused
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
    from portico.explain import command as explain_command

    explain = sub.add_parser("explain", help="why a request goes to the route, pool and server")
    explain_command.add_arguments(explain)
    explain.set_defaults(func=cmd_explain)
    from portico.simulate import command as simulate_command

    simulate = sub.add_parser("simulate", help="replay a trace through the policies, compare")
    simulate_command.add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s portico %(levelname)s %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
