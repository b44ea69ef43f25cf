"""What a test session must refuse, as pytest hooks (tests/conftest.py registers them).

- A build other than the one under test: Python imports a compiled module (.so) in preference
  to the .py beside it, so a stale, leftover or missing compiled module would test the wrong
  code. The session stops when `portico.buildinfo.problems()` finds one, and, when
  PORTICO_EXPECT_BUILD says `compiled` or `pure` (scripts/test sets it for each leg), when the
  modules actually imported are not that build: a compile that silently fell back to pure
  Python fails its leg.
- Under CI (CI=true), a skip that is not on `ALLOWED_SKIPS`: a test that cannot run (no
  redis-server, no chromium, no curl) must not pass silently. It is reported as a failure
  naming the reason; only the skips listed there, which no install can fix, stay skips.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Generator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Reasons (substrings of the skip message) that no install on a CI machine can change.
ALLOWED_SKIPS = (
    "this OpenSSL cannot offer",  # a cipher (3DES) this OpenSSL build no longer has
    "root reads every file",  # an unreadable-file test, when running as root
    "the native engine is not built",  # the pure-Python leg has no C relay engine to test
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def compiled_module_names() -> list[str]:
    """setup.py's COMPILED (mypyc) and NATIVE (hand-written C), as module names."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    lists: dict[str, list[str]] = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("COMPILED", "NATIVE")
    }
    if "COMPILED" not in lists:
        raise AssertionError("setup.py has no COMPILED list")
    native = lists.get("NATIVE", []) if sys.platform.startswith("linux") else []  # as setup.py
    paths = [*lists["COMPILED"], *native]
    return [".".join(Path(p).relative_to("src").with_suffix("").parts) for p in paths]


def is_extension(path: str | None) -> bool:
    return path is not None and any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def runs_compiled(name: str) -> bool:
    """Whether module `name` is imported from an extension; a native module (C, no Python
    source) that was not built cannot be imported at all: not compiled either."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return is_extension(module.__file__)


def build_problems(expect: str) -> list[str]:
    """Why the portico this session imports is not the build to test; empty if it is."""
    import portico
    from portico import buildinfo

    package = Path(portico.__file__).parent
    problems = buildinfo.problems(package)
    if problems:
        return problems
    if expect == "compiled":
        names = compiled_module_names()
        pure = [n for n in names if not runs_compiled(n)]
        if pure:
            return [
                f"PORTICO_EXPECT_BUILD=compiled, but these run as pure Python: {', '.join(pure)}"
            ]
    elif expect == "pure":
        if compiled := buildinfo.compiled_files(package):
            return [f"PORTICO_EXPECT_BUILD=pure, but compiled: {', '.join(sorted(compiled))}"]
    elif expect:
        return [f"PORTICO_EXPECT_BUILD must be 'compiled' or 'pure', not {expect!r}"]
    elif in_ci():
        return [
            "under CI, PORTICO_EXPECT_BUILD must say which build to test (scripts/test sets it)"
        ]
    return []


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = build_problems(os.environ.get("PORTICO_EXPECT_BUILD", "").strip())
    if problems:
        pytest.exit(
            "not the build to test:\n  "
            + "\n  ".join(problems)
            + "\n(scripts/setup rebuilds the compiled modules; "
            "PORTICO_NO_COMPILE=1 scripts/setup makes a pure-Python install)",
            returncode=4,
        )


def pytest_report_header() -> str:
    import portico
    from portico import buildinfo

    expect = os.environ.get("PORTICO_EXPECT_BUILD") or "not set"
    return f"portico: {buildinfo.describe(Path(portico.__file__).parent)}; expected: {expect}"


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return report
    reason = skip_reason(report)
    if any(allowed in reason for allowed in ALLOWED_SKIPS):
        return report
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI, which counts as a failure: {reason}\n"
        "(a test that cannot run must not pass silently; install what it needs, or add a "
        "reason no install can change to ALLOWED_SKIPS in tests/ci_policy.py)"
    )
    return report
