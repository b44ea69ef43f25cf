"""A server's failed connects in the log: one line per cause, then at most one per interval."""

from __future__ import annotations

import logging
import socket

import pytest

from portico.upstreams.backend import (
    CONNECT_REPORT_INTERVAL,
    BackendState,
    connect_error,
    report_connect_failure,
    report_connected,
)


def backend(host: str = "backend.invalid") -> BackendState:
    return BackendState("s1", host, 80, 1, max_idle=0, clock=lambda: 0.0)


def test_the_first_failure_is_reported_then_held_back_for_the_interval() -> None:
    b = backend()
    assert b.connect_failed("refused", 100.0) == 1
    assert [b.connect_failed("refused", 100.0 + t) for t in (1, 10, 29)] == [0, 0, 0]
    # the next line after the interval counts the failures held back
    assert b.connect_failed("refused", 100.0 + CONNECT_REPORT_INTERVAL) == 4
    assert b.connect_failed("refused", 131.0) == 0


def test_a_new_cause_is_reported_at_once() -> None:
    b = backend()
    assert b.connect_failed("refused", 0.0) == 1
    assert b.connect_failed("cannot resolve", 1.0) == 1
    assert b.connect_failed("refused", 2.0) == 1


def test_a_success_ends_the_failure_and_the_next_one_is_reported() -> None:
    b = backend()
    assert b.connect_succeeded() is False  # nothing had been reported
    b.connect_failed("refused", 0.0)
    assert b.connect_succeeded() is True
    assert b.connect_cause is None
    assert b.connect_failed("refused", 1.0) == 1


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve backend.invalid: Name"),
        (TimeoutError(), "no connection within 3 s"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (OSError(113, "No route to host"), "No route to host"),
    ],
)
def test_causes_in_words(exc: BaseException, words: str) -> None:
    assert connect_error(exc, "backend.invalid", 3.0).startswith(words)


def test_the_log_names_the_server_pool_address_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = backend()
    gaierror = socket.gaierror(-2, "Name or service not known")
    with caplog.at_level(logging.WARNING, logger="portico.upstream"):
        for t in range(5):
            report_connect_failure("app", b, gaierror, 3.0, float(t))
        report_connect_failure("app", b, gaierror, 3.0, 40.0)
        report_connected("app", b)
        report_connected("app", b)  # said once
    assert [r.getMessage() for r in caplog.records] == [
        "server s1 of pool app (backend.invalid:80): cannot connect: cannot resolve "
        "backend.invalid: Name or service not known",
        "server s1 of pool app (backend.invalid:80): cannot connect: cannot resolve "
        "backend.invalid: Name or service not known (4 more since the last report)",
        "server s1 of pool app (backend.invalid:80): connected again",
    ]
