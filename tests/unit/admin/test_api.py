"""The admin API without a socket: the OpenAPI document against what is served, the body
rules against the config file's, the token from the environment."""

from __future__ import annotations

import asyncio
import json
from typing import Any, get_args

import jsonschema
import pytest
from pydantic import ValidationError

from portico.admin.api import (
    ENDPOINTS,
    OPENAPI,
    SCHEMAS,
    AdminApi,
    AdminRequest,
    CodeClass,
    ListenerView,
    WeightChange,
)
from portico.admin.server import resolve_token
from portico.config.schema import ServerConfig
from portico.observe.stats import CODE_CLASSES
from tests.unit.admin.running import TOKEN, FakeSupervisor

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def handle(api: AdminApi, method: str, path: str, body: Any = None, token: str = TOKEN) -> Any:
    headers = {"authorization": f"Bearer {token}", "host": "127.0.0.1:9090"}
    data = json.dumps(body).encode() if body is not None else b""
    request = AdminRequest(method, path, headers, data, "127.0.0.1:5555")
    return asyncio.run(api.handle(request))


# ---------------------------------------------------------------------------------------------
# the OpenAPI document


def test_openapi_document_is_valid_openapi_3_1() -> None:
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - the check below still runs
        validate = None
    if validate is not None:
        validate(OPENAPI)
    assert OPENAPI["openapi"].startswith("3.1")
    assert OPENAPI["info"]["title"]
    for path, item in OPENAPI["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            if method in METHODS:
                assert operation["responses"], (path, method)
                assert operation["operationId"], (path, method)


def test_openapi_describes_exactly_the_endpoints_served() -> None:
    described = {
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in METHODS
    }
    served = {(e.method, e.template) for e in ENDPOINTS}
    assert described == served


def test_openapi_marks_exactly_the_public_endpoints_as_needing_no_token() -> None:
    for endpoint in ENDPOINTS:
        operation = OPENAPI["paths"][endpoint.template][endpoint.method.lower()]
        assert (operation.get("security") == []) == endpoint.public, endpoint


def schema_validator(name: str) -> Any:
    # the component, with the document's components beside it so that its $refs resolve
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_what_the_api_answers_fits_the_documented_schemas() -> None:
    view = FakeSupervisor()
    api = AdminApi(view, TOKEN, None)
    for pool in json.loads(handle(api, "GET", "/api/pools").body):
        schema_validator("Pool").validate(pool)
    for listener in json.loads(handle(api, "GET", "/api/listeners").body):
        schema_validator("Listener").validate(listener)
    added = handle(api, "POST", "/api/pools/app/servers", {"address": "127.0.0.1:9"})
    assert added.status == 201
    schema_validator("Server").validate(json.loads(added.body))
    schema_validator("ReloadResult").validate(json.loads(handle(api, "POST", "/api/reload").body))
    removed = handle(api, "DELETE", "/api/pools/app/servers/s1")
    schema_validator("Removed").validate(json.loads(removed.body))
    error = handle(api, "GET", "/api/pools/nope")
    schema_validator("Error").validate(json.loads(error.body))


def test_documented_request_bodies_match_what_is_accepted() -> None:
    weight = schema_validator("WeightChange")
    state = schema_validator("StateChange")
    new = schema_validator("NewServer")
    for body in ({"weight": 1}, {"weight": 256}):
        weight.validate(body)
        WeightChange.model_validate(body)
    for body in ({"weight": 0}, {"weight": 257}, {"weight": "5"}, {"weight": 1, "x": 1}, {}):
        assert not weight.is_valid(body)
        with pytest.raises(ValidationError):
            WeightChange.model_validate(body)
    assert state.is_valid({"state": "maint"})
    assert not state.is_valid({"state": "off"})
    assert new.is_valid({"address": "127.0.0.1:9004", "weight": 1, "name": "s4"})
    assert not new.is_valid({"name": "s4"})


# ---------------------------------------------------------------------------------------------
# request bodies follow the config file's rules


@pytest.mark.parametrize("weight", [-1, 0, 1, 2, 255, 256, 257, 10_000])
def test_weight_bounds_are_the_config_files(weight: int) -> None:
    def accepted(model: Any, **fields: Any) -> bool:
        try:
            model.model_validate(fields)
        except ValidationError:
            return False
        return True

    in_config = accepted(ServerConfig, address="127.0.0.1:1", weight=weight)
    assert accepted(WeightChange, weight=weight) == in_config


# ---------------------------------------------------------------------------------------------
# without a socket


def test_the_api_answers_without_a_socket() -> None:
    api = AdminApi(FakeSupervisor(), TOKEN, None)
    response = handle(api, "GET", "/api/pools/app")
    assert response.status == 200
    assert json.loads(response.body)["name"] == "app"
    assert handle(api, "GET", "/api/pools/app", token="nope").status == 403


def test_a_path_not_starting_with_a_slash_is_400() -> None:
    api = AdminApi(FakeSupervisor(), TOKEN, None)
    assert handle(api, "GET", "").status == 400
    assert handle(api, "GET", "*").status == 400


# ---------------------------------------------------------------------------------------------
# the token


def test_token_from_the_config_comes_first() -> None:
    assert resolve_token("abc", "PORTICO_ADMIN_TOKEN", {"PORTICO_ADMIN_TOKEN": "env"}) == "abc"


def test_token_from_the_environment() -> None:
    assert resolve_token(None, "PORTICO_ADMIN_TOKEN", {"PORTICO_ADMIN_TOKEN": "env"}) == "env"


@pytest.mark.parametrize("environ", [{}, {"PORTICO_ADMIN_TOKEN": ""}])
def test_a_token_variable_that_is_unset_is_an_error_not_an_open_api(
    environ: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match=r"\$PORTICO_ADMIN_TOKEN, which is not set"):
        resolve_token(None, "PORTICO_ADMIN_TOKEN", environ)


def test_no_token_configured() -> None:
    assert resolve_token(None, None, {}) is None
    assert resolve_token("", None, {}) is None


# ---------------------------------------------------------------------------------------------
# the schemas come from the models


def test_status_classes_are_the_stats_ones() -> None:
    assert get_args(CodeClass) == CODE_CLASSES


def test_new_server_schema_is_the_config_files_server_model() -> None:
    new = schema_validator("NewServer")
    for name in ("a/b", "../../x", "x\x00y", ".."):
        assert not new.is_valid({"address": "127.0.0.1:1", "name": name}), name
    for name in ("s4", "[::1]:9004", "10.0.0.1:80"):
        assert new.is_valid({"address": "127.0.0.1:1", "name": name}), name
    assert not new.is_valid({"address": "127.0.0.1:1", "weight": 257})
    server = jsonschema.Draft202012Validator(
        OPENAPI["components"]["parameters"]["server"]["schema"]
    )
    assert not server.is_valid("a/b")
    assert server.is_valid("127.0.0.1:9101")


def test_every_schema_is_generated_from_a_type_the_api_uses() -> None:
    schemas = OPENAPI["components"]["schemas"]
    assert set(SCHEMAS) <= set(schemas)
    for nested in set(schemas) - set(SCHEMAS):  # a model inside one of them (explain's parts)
        assert f'"#/components/schemas/{nested}"' in json.dumps(schemas), nested
    listener = OPENAPI["components"]["schemas"]["Listener"]
    assert listener["required"] == list(ListenerView.__annotations__)
    responses = listener["properties"]["responses"]
    assert responses["propertyNames"] == {"enum": list(CODE_CLASSES)}
