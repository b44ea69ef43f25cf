"""Which admin requests are meant for the whole fleet, and how stream ids order."""

from __future__ import annotations

from portico.admin.api import AdminRequest, _fleet_wide
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
