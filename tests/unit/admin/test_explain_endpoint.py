"""POST /api/explain without a socket: the live state of the fake supervisor's servers reaches
the explanation, the answer fits its documented schema, mistakes are 422s."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema

from portico.admin.api import OPENAPI, AdminApi, AdminRequest, AdminResponse
from tests.unit.admin.running import TOKEN, FakeSupervisor


def post(api: AdminApi, body: Any) -> AdminResponse:
    headers = {"authorization": f"Bearer {TOKEN}", "host": "127.0.0.1:9090"}
    request = AdminRequest("POST", "/api/explain", headers, json.dumps(body).encode())
    return asyncio.run(api.handle(request))


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_explanation_uses_the_live_server_state() -> None:
    view = FakeSupervisor()  # s2 is down by its active checks
    view.states[("app", "s1")] = "drain"
    reply = post(AdminApi(view, TOKEN, None), {"request": "GET http://a.example/x"})
    assert reply.status == 200
    answer = json.loads(reply.body)
    validator("Explanation").validate(answer)
    assert answer["live"] is True
    servers = {s["name"]: s for s in answer["pools"][0]["servers"]}
    assert servers["s1"]["reasons"][0].startswith("draining")
    assert servers["s2"]["reasons"] == ["down by active health checks: refused"]
    assert answer["server"] is None
    assert answer["pools"][0]["outcome"] == "no server is fit for traffic: 503 with Retry-After"


def test_weights_changed_through_the_api_are_explained() -> None:
    view = FakeSupervisor()
    api = AdminApi(view, TOKEN, None)
    asyncio.run(
        api.handle(
            AdminRequest(
                "PUT",
                "/api/pools/app/servers/s1/weight",
                {"authorization": f"Bearer {TOKEN}", "host": "127.0.0.1:9090"},
                b'{"weight": 7}',
            )
        )
    )
    answer = json.loads(post(api, {"request": "GET http://a.example/"}).body)
    assert {s["name"]: s["weight"] for s in answer["pools"][0]["servers"]}["s1"] == 7


def test_the_request_body_is_documented_and_checked() -> None:
    body = {"request": "GET http://a.example/api/x", "headers": ["X-A: 1"], "client_ip": "::1"}
    validator("ExplainRequest").validate(body)
    answer = json.loads(post(AdminApi(FakeSupervisor(), TOKEN, None), body).body)
    assert answer["route"] == "api"
    bad = post(AdminApi(FakeSupervisor(), TOKEN, None), {"request": "GET ftp://x/"})
    assert bad.status == 422
    assert json.loads(bad.body)["error"] == "cannot explain"
    missing = post(AdminApi(FakeSupervisor(), TOKEN, None), {"headers": []})
    assert missing.status == 422
    assert 'missing field "request"' in json.loads(missing.body)["detail"]
