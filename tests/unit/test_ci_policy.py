"""tests/ci_policy.py: under CI a skip fails unless no install could fix it, and a session
refuses a build other than the one it is told to test. The skip rules run in an inner pytest
session (pytester) with only those hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

import ci_policy
from portico import buildinfo

pytest_plugins = ["pytester"]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(Path(ci_policy.__file__).parent)!r})
from ci_policy import pytest_runtest_makereport
"""

SKIPPING_TESTS = """
import pytest

def test_needs_redis():
    pytest.skip("redis-server is not installed")

@pytest.mark.skipif(True, reason="curl is not installed")
def test_needs_curl():
    pass

def test_old_cipher():
    pytest.skip("this OpenSSL cannot offer DES-CBC3-SHA")

def test_runs():
    pass
"""


def test_under_ci_a_skip_for_something_missing_is_a_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(SKIPPING_TESTS)
    result = pytester.runpytest("-rfEs")
    # the skipif fires in setup: it is reported as an error
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*skipped under CI, which counts as a failure: redis-server is not installed*",
            "*skipped under CI, which counts as a failure: curl is not installed*",
            "SKIPPED*this OpenSSL cannot offer DES-CBC3-SHA",
        ]
    )


def test_outside_ci_a_skip_stays_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(SKIPPING_TESTS)
    pytester.runpytest().assert_outcomes(passed=1, skipped=3)


def test_a_session_refuses_a_build_other_than_the_expected_one() -> None:
    compiled = bool(buildinfo.compiled_files())
    actual, other = ("compiled", "pure") if compiled else ("pure", "compiled")
    assert ci_policy.build_problems(actual) == []
    [problem] = ci_policy.build_problems(other)
    assert problem.startswith(f"PORTICO_EXPECT_BUILD={other}, but")


def test_under_ci_the_build_to_test_must_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert ci_policy.build_problems("") == [
        "under CI, PORTICO_EXPECT_BUILD must say which build to test (scripts/test sets it)"
    ]
    monkeypatch.setenv("CI", "false")
    assert ci_policy.build_problems("") == []
