"""Admin hardening: failed token attempts limited per address, the admin bind rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from portico.admin.api import AuthFailures
from portico.config.schema import AdminConfig


def test_failures_past_the_limit_wait_until_the_oldest_is_a_window_old() -> None:
    now = [0.0]
    failures = AuthFailures(lambda: now[0])
    for _ in range(AuthFailures.LIMIT - 1):
        failures.failed("192.0.2.1")
    assert failures.wait("192.0.2.1") == 0.0
    failures.failed("192.0.2.1")
    assert failures.wait("192.0.2.1") == AuthFailures.WINDOW
    assert failures.wait("192.0.2.2") == 0.0  # per address
    now[0] = AuthFailures.WINDOW - 1
    assert failures.wait("192.0.2.1") == 1.0
    now[0] = AuthFailures.WINDOW
    assert failures.wait("192.0.2.1") == 0.0


@pytest.mark.parametrize("bind", ["0.0.0.0:9090", "192.0.2.1:9090", "[::]:9090"])
def test_admin_on_a_non_loopback_address_needs_a_token(bind: str) -> None:
    with pytest.raises(ValidationError, match="not loopback, without a token"):
        AdminConfig.model_validate({"bind": bind})
    AdminConfig.model_validate({"bind": bind, "token": "t0ken-t0ken"})
    AdminConfig.model_validate({"bind": bind, "token_env": "ADMIN_TOKEN"})


@pytest.mark.parametrize("bind", ["127.0.0.1:9090", "[::1]:9090", "localhost:9090"])
def test_admin_on_loopback_may_go_without(bind: str) -> None:
    AdminConfig.model_validate({"bind": bind})


def test_admin_client_auth_needs_a_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pem = tmp_path / "a.pem"
    pem.write_text("x")
    with pytest.raises(ValidationError, match="needs client_ca"):
        AdminConfig.model_validate(
            {"tls": {"cert": str(pem), "key": str(pem), "client_auth": "require"}}
        )
    # mTLS required stands in for the token on a public address
    AdminConfig.model_validate(
        {
            "bind": "0.0.0.0:9443",
            "tls": {
                "cert": str(pem),
                "key": str(pem),
                "client_auth": "require",
                "client_ca": str(pem),
            },
        }
    )
