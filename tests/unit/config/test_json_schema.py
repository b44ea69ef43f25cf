"""`portico schema`: the config's JSON Schema, generated from the models, accepts what they
accept (text forms included) and refuses what an editor can tell is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from portico.cli import main
from portico.config.load import ConfigError, parse_config
from portico.config.schema import json_schema

README = Path(__file__).parents[3] / "README.md"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def reference_config() -> str:
    """The README's "complete file with every key at its default"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("A complete file with every key at its default") :]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found
    return found.group(1)


TEXT_FORMS = """
workers: 2
shutdown_grace: 1m30s
listeners:
  - name: web
    bind: :8080
    default_pool: app
    redirect_https: 8443
    http2: true
    limits: {max_header_size: 64KiB, max_body_size: 10MB}
    timeouts: {header: 500ms, keepalive: 2.5}
    rate_limit: {rate: 100/s, burst: 20, key: "header:X-Api-Key"}
    routes:
      - name: api
        match:
          host: api.example.com
          method: GET
          headers: {X-Env: canary, X-Version: 2, X-Debug: {present: true}}
        pool: app
      - match: {path_prefix: /old}
        redirect: {status: 308, to: "https://{host}/new"}
pools:
  app:
    policy: least_conn
    servers:
      - address: 10.0.0.1:80
        weight: 5
      - {address: "[::1]:81", name: "b-2"}
    health:
      active: {type: http, interval: 2s, timeout: 1s, http: {expect_status: 200-299}}
"""


def test_the_readme_reference_config_fits_the_schema_and_the_models(
    validator: jsonschema.Draft202012Validator,
) -> None:
    text = reference_config()
    parse_config(text, "README.md")
    validator.validate(yaml.safe_load(text))


def test_text_forms_fit_the_schema_and_the_models(
    validator: jsonschema.Draft202012Validator,
) -> None:
    parse_config(TEXT_FORMS, "portico.yaml")
    validator.validate(yaml.safe_load(TEXT_FORMS))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # not a policy name (an unknown name may come from an entry point: only `check` knows)
        (("pools", "app", "policy"), 7),
        (("pools", "app", "servers", 0, "weight"), 0),  # out of range
        (("pools", "app", "servers", 0, "name"), "a/b"),  # not a name
        (("pools", "app", "colour"), "red"),  # unknown key
        (("listeners", 0, "timeouts", "header"), True),  # not a duration
        (("listeners", 0, "protocol"), "ftp"),
    ],
)
def test_what_an_editor_can_tell_is_wrong_is_refused_by_both(
    validator: jsonschema.Draft202012Validator, path: tuple[Any, ...], value: object
) -> None:
    data = yaml.safe_load(TEXT_FORMS)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert not validator.is_valid(data)
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(data), "portico.yaml")


def test_portico_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json_schema()
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed["title"] == "Portico configuration"
