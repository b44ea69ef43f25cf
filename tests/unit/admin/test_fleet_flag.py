"""Which admin requests are meant for the whole fleet, who asked, and how stream ids order."""

from __future__ import annotations

import pytest

from portico.admin.api import AdminApi, AdminRequest, Forbidden, _fleet_wide
from portico.fleet import _order


def test_the_query_flag_or_the_body_field_asks_for_the_fleet() -> None:
    def asks(query: str, body: bool = False) -> bool:
        return _fleet_wide(AdminRequest("PUT", "/api/x", query=query), body)

    assert asks("fleet=true")
    assert asks("fleet")
    assert asks("a=1&fleet=1")
    assert asks("", body=True)
    assert not asks("")
    assert not asks("fleet=false")
    assert not asks("fleets=true")


def test_stream_ids_order_by_time_then_sequence() -> None:
    assert _order("1733450000000-3") < _order("1733450000000-10")
    assert _order("1733450000000-10") < _order("1733450000001-0")
    assert _order("0-0") < _order("1-0")


def test_named_tokens_say_who_asked_and_a_wrong_one_is_refused() -> None:
    api = AdminApi(None, "root-token", None, {"alice": "alice-token"})  # type: ignore[arg-type]

    def user(token: str) -> str:
        return api._check_token(
            AdminRequest("GET", "/api/pools", {"authorization": f"Bearer {token}"})
        )

    assert user("root-token") == "admin"
    assert user("alice-token") == "alice"
    with pytest.raises(Forbidden):
        user("alice-tokem")
    assert not api.is_open
    assert AdminApi(None, None, None).is_open  # type: ignore[arg-type]
    request = AdminRequest("PUT", "/x", {"x-portico-user": "Alice S."}, user="alice")
    assert api._by(request) == {"client": "unknown", "user": "alice", "on_behalf_of": "Alice S."}
