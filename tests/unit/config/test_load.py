"""Loading YAML: a valid Config, or every problem with its file, line and key path."""

from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from portico.config import (
    Config,
    ConfigError,
    ConfigProblem,
    HostPort,
    load_config,
    parse_config,
)

FULL = """\
workers: 4
shutdown_grace: 15s
listeners:
  - name: web
    bind: 127.0.0.1:8080
    protocol: http
    default_pool: app
    backlog: 512
    limits:
      max_request_line: 4KiB
      max_header_size: 16KiB
      max_headers: 50
      max_body_size: 10MiB
    timeouts:
      header: 5s
      keepalive: 1m
      body: 30s
      send: 500ms
    forwarded:
      x_forwarded: false
      forwarded: true
  - name: api.v6
    bind: "[::1]:8443"
    default_pool: video
pools:
  app:
    policy: weighted_round_robin
    servers:
      - address: 127.0.0.1:9001
        weight: 3
        name: alpha
      - address: 127.0.0.1:9002
    timeouts:
      connect: 1s
      read: 10s
      write: 5s
    keepalive:
      max_idle: 8
      idle_timeout: 30s
      max_requests: 1000
    retries: 2
    hide_headers: [Server, X-Powered-By]
  video:
    policy: consistent_hash
    hash_key: header:X-User
    servers:
      - address: video.internal:80
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), "portico.yaml")
    return [str(problem) for problem in info.value.problems]


def test_full_config_loads_every_field() -> None:
    config = parse_config(FULL, "portico.yaml")
    assert config.workers == 4
    assert config.worker_count() == 4
    assert config.shutdown_grace == 15.0
    web, api = config.listeners
    assert web.bind == HostPort("127.0.0.1", 8080)
    assert web.backlog == 512
    assert web.limits.max_request_line == 4096
    assert web.limits.max_header_size == 16384
    assert web.limits.max_headers == 50
    assert web.limits.max_body_size == 10 * 1024 * 1024
    assert (web.timeouts.header, web.timeouts.keepalive) == (5.0, 60.0)
    assert (web.timeouts.body, web.timeouts.send) == (30.0, 0.5)
    assert web.forwarded.x_forwarded is False
    assert api.name == "api.v6"
    assert str(api.bind) == "[::1]:8443"
    app = config.pools["app"]
    assert app.policy == "weighted_round_robin"
    assert [(s.name, s.weight) for s in app.servers] == [("alpha", 3), ("127.0.0.1:9002", 1)]
    assert (app.timeouts.connect, app.timeouts.read, app.timeouts.write) == (1.0, 10.0, 5.0)
    assert (app.keepalive.max_idle, app.keepalive.max_requests) == (8, 1000)
    assert app.keepalive.idle_timeout == 30.0
    assert app.retries == 2
    assert app.hide_headers == ("Server", "X-Powered-By")
    assert config.pools["video"].hash_key == "header:X-User"
    assert list(config.pools) == ["app", "video"]


def test_full_config_round_trips_through_yaml() -> None:
    config = parse_config(FULL, "portico.yaml")
    dumped = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    assert parse_config(dumped, "again.yaml") == config


def test_minimal_config_uses_defaults() -> None:
    config = parse_config(
        dedent("""\
            listeners:
              - {name: web, bind: ":8080", default_pool: app}
            pools:
              app:
                servers: [{address: "localhost:9001"}]
        """),
        "portico.yaml",
    )
    assert config == Config.model_validate(
        {
            "listeners": [{"name": "web", "bind": "0.0.0.0:8080", "default_pool": "app"}],
            "pools": {"app": {"servers": [{"address": "localhost:9001"}]}},
        }
    )


def test_port_out_of_range_names_file_line_and_path() -> None:
    text = """\
        # Portico
        workers: 2
        listeners:
          - name: web
            bind: 127.0.0.1:8080
            default_pool: app
        pools:
          app:
            policy: round_robin
            servers:
              - address: 127.0.0.1:9001
                weight: 2
              - name: second
                address: 127.0.0.1:99999
    """
    assert problems(text) == [
        "portico.yaml:14 pools.app.servers[1].address: port 99999 is out of range"
    ]


def test_problem_and_error_formatting() -> None:
    first = ConfigProblem("portico.yaml", 3, "workers", "must be 1")
    whole = ConfigProblem("portico.yaml", None, "", "the file is empty")
    assert str(first) == "portico.yaml:3 workers: must be 1"
    assert str(whole) == "portico.yaml: the file is empty"
    error = ConfigError([first, whole])
    assert error.problems == [first, whole]
    assert str(error) == "portico.yaml:3 workers: must be 1\nportico.yaml: the file is empty"


BASE = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
"""


def test_unknown_key_suggests_the_close_one() -> None:
    assert problems(BASE + "        wieght: 2\n") == [
        'portico.yaml:9 pools.app.servers[0].wieght: unknown key "wieght": did you mean "weight"?'
    ]


def test_unknown_key_far_from_any_lists_the_valid_ones() -> None:
    assert problems(BASE + "colour: blue\n") == [
        'portico.yaml:9 colour: unknown key "colour" '
        "(valid keys here: workers, shutdown_grace, pid_file, user, group, state, listeners, "
        "pools, admin, resolver, plugins, cache)"
    ]


def test_every_problem_is_reported_in_line_order() -> None:
    text = """\
        workers: 0
        listeners:
          - name: web
            bind: 127.0.0.1
            default_pool: app
            limits:
              max_body_size: 10 parsecs
              max_hedaers: 5
            timeouts:
              header: 0s
        pools:
          app:
            policy: roundrobin
            servers:
              - address: 127.0.0.1:9001
                weight: 300
              - weight: 2
          video:
            servers: []
            retries: yes
            hide_headers: Server
    """
    assert problems(text) == [
        'portico.yaml:1 workers: must be "auto" or a whole number from 1 to 64, not 0',
        'portico.yaml:4 listeners[0].bind: "127.0.0.1" has no port: write host:port',
        'portico.yaml:7 listeners[0].limits.max_body_size: "10 parsecs" is not a size: '
        "use a number of bytes, or a number with B, kB, MB, GB, KiB, MiB or GiB",
        'portico.yaml:8 listeners[0].limits.max_hedaers: unknown key "max_hedaers": '
        'did you mean "max_headers"?',
        'portico.yaml:10 listeners[0].timeouts.header: must be more than 0, not "0s" '
        "(for example 500ms or 2s)",
        "portico.yaml:13 pools.app.policy: must be one of: round_robin, "
        "weighted_round_robin, least_conn, random, p2c_ewma, ip_hash, consistent_hash, "
        'not "roundrobin" (did you mean "round_robin"?)',
        "portico.yaml:16 pools.app.servers[0].weight: must be from 1 to 256, not 300",
        'portico.yaml:17 pools.app.servers[1]: missing required key "address"',
        "portico.yaml:19 pools.video.servers: must have at least one entry",
        "portico.yaml:20 pools.video.retries: must be a whole number, not true",
        'portico.yaml:21 pools.video.hide_headers: must be a list ("- item" lines, or [a, b]),'
        ' not "Server"',
    ]


def test_missing_required_keys_point_at_their_parent() -> None:
    text = """\
        listeners:
          - name: web
            default_pool: app
        pools:
          app:
            policy: random
    """
    assert problems(text) == [
        'portico.yaml:2 listeners[0]: missing required key "bind"',
        'portico.yaml:5 pools.app: missing required key "servers"',
    ]
    assert problems("workers: 2\n") == [
        'portico.yaml:1: missing required key "listeners"',
        'portico.yaml:1: missing required key "pools"',
    ]


def test_wrong_shapes_say_what_was_expected() -> None:
    text = """\
        listeners:
        pools:
          app:
            servers:
              address: a:1
            timeouts: [1s]
    """
    assert problems(text) == [
        'portico.yaml:1 listeners: must be a list ("- item" lines, or [a, b]), but it is empty',
        'portico.yaml:4 pools.app.servers: must be a list ("- item" lines, or [a, b]),'
        " not a mapping",
        "portico.yaml:6 pools.app.timeouts: must be a mapping (key: value lines), not a list",
    ]


def test_bad_pool_names_are_reported_at_the_key() -> None:
    text = BASE + '  "my pool":\n    servers: [{address: "a:1"}]\n'
    assert problems(text) == [
        'portico.yaml:9 pools["my pool"]: "my pool" is not a valid name: '
        'use only letters, digits, "_", "." and "-"'
    ]


def test_cross_reference_errors_have_paths_and_lines() -> None:
    text = """\
        listeners:
          - name: web
            bind: 127.0.0.1:8080
            default_pool: ap
          - name: web
            bind: 127.0.0.1:8080
            default_pool: app
        pools:
          app:
            servers:
              - address: 127.0.0.1:9001
                name: one
              - address: 127.0.0.1:9002
                name: one
          video:
            servers:
              - address: 127.0.0.1:9003
    """
    assert problems(text) == [
        'portico.yaml:4 listeners[0].default_pool: no pool named "ap" (pools are: app, video)',
        'portico.yaml:5 listeners[1].name: listener name "web" is already used by listeners[0]',
        'portico.yaml:6 listeners[1].bind: 127.0.0.1:8080 is already bound by listener "web"'
        " (listeners[0])",
        'portico.yaml:14 pools.app.servers[1].name: server name "one" is already used by'
        " servers[0]",
    ]


def test_cross_references_wait_for_a_valid_structure() -> None:
    text = BASE.replace("default_pool: app", "default_pool: nope") + "workers: many\n"
    assert problems(text) == [
        'portico.yaml:9 workers: must be "auto" or a whole number from 1 to 64, not "many"'
    ]


def test_duplicate_yaml_keys_are_errors() -> None:
    text = """\
        listeners:
          - name: web
            bind: 127.0.0.1:8080
            default_pool: app
            name: api
        pools:
          app:
            servers: [{address: "a:1", weight: 1, weight: 2}]
        pools:
          app:
            servers: [{address: "a:1"}]
    """
    assert problems(text) == [
        'portico.yaml:5 listeners[0].name: duplicate key "name": it is already set on line 2',
        'portico.yaml:8 pools.app.servers[0].weight: duplicate key "weight": '
        "it is already set on line 8",
        'portico.yaml:9 pools: duplicate key "pools": it is already set on line 6',
    ]


def test_duplicate_keys_are_reported_with_other_problems() -> None:
    text = BASE.replace("    default_pool: app\n", "    default_pool: app\n    backlog: 1\n")
    text += "        weight: 1\n        weight: 0\n"
    assert problems(text) == [
        'portico.yaml:11 pools.app.servers[0].weight: duplicate key "weight": '
        "it is already set on line 10",
        "portico.yaml:11 pools.app.servers[0].weight: must be from 1 to 256, not 0",
    ]


def test_merge_keys_are_not_duplicates_and_keep_lines() -> None:
    text = """\
        listeners:
          - &web
            name: web
            bind: 127.0.0.1:8080
            default_pool: app
          - <<: *web
            name: web2
            bind: 127.0.0.1:8081
        pools:
          app:
            servers:
              - &server {address: "a:1", weight: 0}
              - <<: *server
                address: "b:1"
    """
    assert problems(text) == [
        "portico.yaml:12 pools.app.servers[0].weight: must be from 1 to 256, not 0",
        "portico.yaml:12 pools.app.servers[1].weight: must be from 1 to 256, not 0",
    ]
    config = parse_config(dedent(text).replace("weight: 0", "weight: 2"), "portico.yaml")
    assert [listener.default_pool for listener in config.listeners] == ["app", "app"]
    assert [server.weight for server in config.pools["app"].servers] == [2, 2]


def test_yaml_syntax_error_gives_its_line() -> None:
    text = """\
        listeners:
          - name: web
            bind: "127.0.0.1:8080
        pools: {}
    """
    (problem,) = problems(text)
    assert problem.startswith("portico.yaml:5: invalid YAML: found unexpected end of stream")
    assert "line 3" in problem
    (problem,) = problems("workers: 2\nlisteners\npools: {}\n")
    assert problem.startswith("portico.yaml:3: invalid YAML: could not find expected ':'")


def test_unquoted_ipv6_address_gets_a_hint() -> None:
    (problem,) = problems("listeners:\n  - bind: [::1]:8080\n")
    assert problem.startswith("portico.yaml:2: invalid YAML:")
    assert problem.endswith('(write IPv6 addresses in quotes: "[::1]:8080")')


def test_unsafe_tags_are_refused() -> None:
    (problem,) = problems("workers: !!python/object:os.system {}\n")
    assert problem.startswith("portico.yaml:1: invalid YAML: could not determine a constructor")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n"])
def test_empty_file_is_one_clear_problem(text: str) -> None:
    assert problems(text) == [
        'portico.yaml: the file is empty: it needs at least "listeners:" and "pools:"'
    ]


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("hello\n", "a single value")]
)
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    assert problems(text) == [
        f'portico.yaml:1: the top level must be keys like "listeners:" and "pools:", not {kind}'
    ]


def test_several_documents_are_refused() -> None:
    (problem,) = problems(BASE + "---\nworkers: 2\n")
    assert problem.startswith("portico.yaml:9: invalid YAML: expected a single document")


def test_recursive_alias_does_not_hang() -> None:
    (problem,) = problems(BASE + "extra: &loop [*loop]\n")
    assert problem.startswith('portico.yaml:9 extra: unknown key "extra"')


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path) == parse_config(FULL, "portico.yaml")


def test_load_config_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(BASE + "        weight: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (
        f"{path}:9 pools.app.servers[0].weight: must be from 1 to 256, not 0"
    )


def test_load_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_reports_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"workers: 2\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: the file is not UTF-8 text"):
        load_config(path)


def test_a_dns_entry_in_servers_is_reported_where_the_file_has_it() -> None:
    text = """\
listeners:
  - {name: web, bind: 127.0.0.1:8080, default_pool: app}
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
      - dns: app.internal
      - {srv: _http._tcp.app.internal, weight: 2}
"""
    assert problems(text) == [
        'portico.yaml:7 pools.app.servers[1].dns: "app.internal" has no port: write host:port',
        "portico.yaml:8 pools.app.servers[2]: srv: the records give each server's weight: "
        "remove weight",
    ]


def test_response_buffer_is_a_size_between_16_kib_and_4_mib() -> None:
    text = """\
        listeners:
          - {name: web, bind: ":80", default_pool: app, limits: {response_buffer: 256KiB}}
          - {name: tiny, bind: ":81", default_pool: app, limits: {response_buffer: 8KiB}}
          - {name: huge, bind: ":82", default_pool: app, limits: {response_buffer: 5MiB}}
        pools:
          app:
            servers: [{address: "127.0.0.1:9001"}]
    """
    assert problems(text) == [
        "portico.yaml:3 listeners[1].limits.response_buffer: "
        "must be from 16KiB to 4MiB, not 8192 bytes",
        "portico.yaml:4 listeners[2].limits.response_buffer: "
        "must be from 16KiB to 4MiB, not 5242880 bytes",
    ]
    valid = dedent(text).replace("8KiB", "16KiB").replace("5MiB", "4MiB")
    buffers = [item.limits.response_buffer for item in parse_config(valid, "x.yaml").listeners]
    assert buffers == [256 * 1024, 16 * 1024, 4 * 1024 * 1024]
