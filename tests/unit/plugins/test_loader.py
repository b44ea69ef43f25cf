"""The one plugin loader: built-in names, module:Class, entry points, and every way a
reference can be wrong, reported at its config line."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from portico.balancing import P2CEwma
from portico.balancing.round_robin import RoundRobin
from portico.config import ConfigError, parse_config, plugins
from portico.health.probes import HttpCheck, TcpCheck
from portico.plugins import Filter
from portico.plugins.guard import GuardedPolicy, PluginError
from portico.upstreams.pool import Pool

MODULE = """\
from pydantic import BaseModel

from portico.plugins import ConfigPath, Filter, Policy, PoolName


class Shout(Filter):
    class Options(BaseModel):
        word: str = "hey"
        pool: PoolName = "app"
        file: ConfigPath | None = None

    def __init__(self, options):
        self.options = options


class Bare(Filter):
    pass


class Broken(Policy):
    def pick(self, candidates, key):
        raise RuntimeError("nope")


class NotAFilter:
    pass


def function():
    pass
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path holding a plugin module named uniquely per test (so that each
    test imports it afresh)."""
    name = f"plugmod_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def mod(modules: Path) -> str:
    (found,) = [p.stem for p in modules.glob("plugmod_*.py")]
    return found


def config_text(filters: str = "", pool: str = "", tail: str = "") -> str:
    return (
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        f"{filters}"
        "pools:\n"
        "  app:\n"
        f"{pool}"
        "    servers:\n"
        "      - address: 127.0.0.1:9\n"
        f"{tail}"
    )


def problems(text: str, filename: str = "portico.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename)
    return [str(problem) for problem in caught.value.problems]


# -- built-in names ------------------------------------------------------------------------------


def test_built_in_names_resolve_to_their_classes() -> None:
    assert plugins.names("probes") == ["http", "tcp"]
    assert plugins.load("probes", "http") is HttpCheck
    assert plugins.load("probes", "tcp") is TcpCheck
    assert plugins.load("policies", "round_robin") is RoundRobin
    assert plugins.load("policies", "p2c_ewma") is P2CEwma
    assert plugins.builtin_names("policies")[:2] == ("round_robin", "weighted_round_robin")


def test_a_pool_builds_built_in_policies_bare_and_users_behind_a_guard(modules: Path) -> None:
    config = parse_config(config_text(pool=f"    policy: {mod(modules)}:Broken\n"), "p.yaml")
    pool = Pool.from_config("app", config.pools["app"], lambda: 0.0, random.Random(0))
    assert isinstance(pool.policy, GuardedPolicy)
    with pytest.raises(PluginError):
        pool.select([], b"/", "127.0.0.1", (), 0.0)
    plain = parse_config(config_text(pool="    policy: p2c_ewma\n"), "p.yaml")
    pool = Pool.from_config("app", plain.pools["app"], lambda: 0.0, random.Random(0))
    assert type(pool.policy) is P2CEwma
    assert all(backend.tracks_latency for backend in pool.backends)  # needs_latency


# -- module:Class --------------------------------------------------------------------------------


def test_module_class_references_import_from_sys_path(modules: Path) -> None:
    cls = plugins.load("filters", f"{mod(modules)}:Shout")
    assert issubclass(cls, Filter)
    assert cls.__name__ == "Shout"


def test_plugin_path_is_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "here_only.py").write_text(MODULE)
    text = "plugins:\n  path: [plugs]\n" + config_text(
        "    filters:\n      - use: here_only:Shout\n        with: {file: data.txt}\n"
    )
    config = parse_config(text, str(tmp_path / "portico.yaml"))
    assert config.plugins.path == (str(tmp_path / "plugs"),)
    _, options = plugins.build(
        "filters",
        "here_only:Shout",
        {"file": "data.txt"},
        config.pools,
        config.plugins.path,
        config.plugins.base_dir,
    )
    assert options is not None
    assert options.file == tmp_path / "data.txt"  # type: ignore[attr-defined]


def test_an_edited_module_is_imported_again(modules: Path) -> None:
    name = mod(modules)
    first = plugins.load("filters", f"{name}:Shout")
    source = modules / f"{name}.py"
    source.write_text(MODULE.replace('"hey"', '"hello there"'))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    second = plugins.load("filters", f"{name}:Shout")
    assert second is not first
    assert second.Options.model_fields["word"].default == "hello there"
    assert plugins.load("filters", f"{name}:Shout") is second  # unchanged: not again


# -- entry points --------------------------------------------------------------------------------


def test_entry_points_register_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shoutpkg.py").write_text(MODULE)
    dist = tmp_path / "shoutpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoutpkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[portico.filters]\nshout = shoutpkg:Shout\n\n"
        "[portico.policies]\nbroken = shoutpkg:Broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "shout" in plugins.names("filters")
    assert plugins.resolve("filters", "shout") == "shoutpkg:Shout"
    assert plugins.load("filters", "shout").__name__ == "Shout"
    config = parse_config(
        config_text(
            "    filters:\n      - use: shout\n        with: {word: hi}\n",
            "    policy: broken\n",
        ),
        "portico.yaml",
    )
    assert config.listeners[0].filters[0].use == "shout"
    assert config.pools["app"].policy == "broken"


# -- errors, each at its line --------------------------------------------------------------------


def test_reference_errors_name_what_is_wrong(modules: Path) -> None:
    name = mod(modules)
    (modules / "needs_missing.py").write_text("import not_installed_anywhere\n")
    (modules / "syntax_error.py").write_text("def broken(:\n")
    text = config_text(
        "    filters:\n"
        "      - use: no_such_module:Thing\n"
        f"      - use: {name}:Shuot\n"
        f"      - use: {name}:NotAFilter\n"
        f"      - use: {name}:function\n"
        f"      - use: {name}:Broken\n"
        "      - use: needs_missing:X\n"
        "      - use: syntax_error:X\n"
    )
    assert problems(text) == [
        'portico.yaml:6 listeners[0].filters[0].use: cannot import "no_such_module": '
        'no module named "no_such_module"',
        f'portico.yaml:7 listeners[0].filters[1].use: module "{name}" has no attribute "Shuot"'
        ' (did you mean "Shout"?)',
        f"portico.yaml:8 listeners[0].filters[2].use: {name}:NotAFilter is a class, not a "
        "filter: subclass portico.plugins.Filter",
        f"portico.yaml:9 listeners[0].filters[3].use: {name}:function is a function, not a "
        "filter: subclass portico.plugins.Filter",
        f"portico.yaml:10 listeners[0].filters[4].use: {name}:Broken is a class, not a filter:"
        " subclass portico.plugins.Filter",
        'portico.yaml:11 listeners[0].filters[5].use: importing "needs_missing" failed: '
        "No module named 'not_installed_anywhere'",
        'portico.yaml:12 listeners[0].filters[6].use: importing "syntax_error" failed: '
        "SyntaxError: invalid syntax (syntax_error.py, line 1)",
    ]
    # names and the shape of a reference are checked with the rest of the structure
    text = config_text("    filters:\n      - use: shuot\n      - use: a:b:c\n")
    assert problems(text) == [
        'portico.yaml:6 listeners[0].filters[0].use: no filter is registered as "shuot": write '
        "module.path:ClassName (or install a package registering it under the portico.filters "
        "entry points)",
        'portico.yaml:7 listeners[0].filters[1].use: "a:b:c" is not a plugin reference: '
        "write module.path:ClassName",
    ]


def test_option_errors_are_reported_at_their_keys(modules: Path) -> None:
    name = mod(modules)
    text = config_text(
        "    filters:\n"
        f"      - use: {name}:Shout\n"
        "        with:\n"
        "          word: [not, text]\n"
        "          pool: nowhere\n"
        "          wrod: typo\n"
        f"      - use: {name}:Bare\n"
        "        with: {anything: 1}\n",
        "    policy:\n"
        f"      use: {name}:Broken\n"
        "      with: {speed: 3}\n"
        "    health:\n"
        "      active:\n"
        "        type: tcp\n"
        "        with: {port: 1}\n",
    )
    assert problems(text) == [
        "portico.yaml:8 listeners[0].filters[0].with.word: must be text, not a list",
        'portico.yaml:9 listeners[0].filters[0].with.pool: no pool named "nowhere" '
        "(pools are: app)",
        'portico.yaml:10 listeners[0].filters[0].with.wrod: unknown key "wrod": did you mean '
        '"word"?',
        f"portico.yaml:12 listeners[0].filters[1].with: {name}:Bare takes no options",
        f"portico.yaml:17 pools.app.policy.with: {name}:Broken takes no options",
        "portico.yaml:21 pools.app.health.active.with: portico.health.probes:TcpCheck takes no "
        "options",
    ]


def test_a_plugin_whose_constructor_fails_is_a_config_problem(modules: Path) -> None:
    (modules / "fussy.py").write_text(
        "from portico.plugins import Filter\n\n"
        "class Fussy(Filter):\n"
        "    def __init__(self):\n"
        "        raise OSError('keys.txt: no such file')\n"
    )
    text = config_text("    filters:\n      - use: fussy:Fussy\n")
    assert problems(text) == [
        "portico.yaml:6 listeners[0].filters[0].use: creating fussy:Fussy failed: OSError: "
        "keys.txt: no such file"
    ]


def test_policy_mapping_form_and_its_mistakes() -> None:
    config = parse_config(config_text(pool="    policy: {use: least_conn}\n"), "p.yaml")
    assert config.pools["app"].policy == "least_conn"
    assert problems(config_text(pool="    policy: {use: least_conn, width: 1}\n")) == [
        'portico.yaml:6 pools.app: policy: unknown key "width" (valid keys here: use, with)'
    ]
    assert problems(config_text(pool="    policy: leastconn\n")) == [
        "portico.yaml:7 pools.app.policy: must be one of: round_robin, weighted_round_robin, "
        'least_conn, random, p2c_ewma, ip_hash, consistent_hash, not "leastconn" (did you mean '
        '"least_conn"?)'
    ]


def test_filters_on_a_tcp_listener_or_an_answering_route_are_refused() -> None:
    text = config_text("    protocol: tcp\n    filters: [{use: a:B}]\n")
    assert problems(text) == [
        "portico.yaml:6 listeners[0].filters: filters need protocol: http or https"
    ]
    routed = config_text(
        "    routes:\n      - respond: {status: 200}\n        filters: [{use: a:B}]\n"
    )
    assert problems(routed) == [
        'portico.yaml:6 listeners[0].routes[0]: "filters" do nothing on a route with "respond"'
    ]
