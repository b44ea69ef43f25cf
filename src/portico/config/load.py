"""Reading a config file: YAML text in, a valid `Config` or every problem with its line out.

This module owns the YAML side (syntax errors, duplicate keys, the node tree that maps key
paths to line numbers), the human wording of pydantic's errors, and `ConfigError`. It never
decides what is valid (that is `schema.py`) and never applies a config to a running server.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from portico.config import plugins
from portico.config.schema import (
    DEFER_REFERENCES,
    Config,
    Loc,
    check_references,
    format_loc,
)
from portico.config.units import show

__all__ = ["ConfigError", "ConfigProblem", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file, at a line (1-based, None if unknown) and key path
    (``"pools.app.servers[1].address"``; empty for the file as a whole)."""

    filename: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists everything wrong with it."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`.

    Raises ConfigError (never OSError) if the file cannot be read, is not UTF-8, or is not a
    valid config; problems name the file as `path` was written.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as file:
            raw = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(filename, None, "", f"cannot read: {reason}")]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = ConfigProblem(filename, line, "", "the file is not UTF-8 text")
        raise ConfigError([problem]) from exc
    return parse_config(text, filename)


def _discovery_loc(loc: Loc, data: object) -> Loc:
    """Where a DNS entry's problem is in the file: `pools.P.discover[k]` names the k-th
    `dns:`/`srv:` entry, which the file may give in `servers:` (PoolConfig moves them)."""
    if len(loc) < 4 or loc[0] != "pools" or loc[2] != "discover" or not isinstance(loc[3], int):
        return loc
    pool = data.get("pools", {}).get(loc[1]) if isinstance(data, dict) else None
    if not isinstance(pool, dict):
        return loc
    given = pool.get("discover")
    k = loc[3] - (len(given) if isinstance(given, list) else 0)
    if k < 0:
        return loc  # in `discover:` itself
    servers = pool.get("servers")
    entries = [
        i
        for i, s in enumerate(servers if isinstance(servers, list) else [])
        if isinstance(s, dict) and ("dns" in s or "srv" in s)
    ]
    if k >= len(entries):
        return loc
    return ("pools", loc[1], "servers", entries[k], *loc[4:])


def parse_config(text: str, filename: str) -> Config:
    """Validate config `text`; `filename` is only used to label problems.

    Returns the Config, or raises ConfigError with every problem found, sorted by line: YAML
    syntax (alone, as nothing after it can be trusted), duplicate keys, every field error,
    and, once the structure is valid, every broken cross-reference.
    """
    try:
        # the reader checks the first characters at once: a NUL there is a ReaderError here
        # (found by hypothesis, tests/unit/fuzz)
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text, filename)]) from exc
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, ScalarNode) and root.tag.endswith(":null")):
            message = 'the file is empty: it needs at least "listeners:" and "pools:"'
            raise ConfigError([ConfigProblem(filename, None, "", message)])
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            message = f'the top level must be keys like "listeners:" and "pools:", not {kind}'
            raise ConfigError([ConfigProblem(filename, _line(root), "", message)])
        # Index before constructing: construction flattens "<<" merge keys in place.
        duplicates: list[_Duplicate] = []
        lines = _LineIndex.build(root, duplicates)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text, filename)]) from exc
    finally:
        loader.dispose()

    # Duplicates know their own line: the key may sit in a value that a later key replaced.
    placed = [ConfigProblem(filename, d.line, format_loc(d.loc), d.message) for d in duplicates]
    found: list[tuple[Loc, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={DEFER_REFERENCES: True})
    except ValidationError as exc:
        found.extend(
            (_discovery_loc(loc, data), message)
            for loc, message in (
                _explain(error) for error in _relevant(exc.errors(include_url=False))
            )
        )
    if config is not None:
        found.extend((issue.loc, issue.message) for issue in check_references(config))
    if config is not None and not placed and not found:
        config = _with_plugin_path(config, filename)
        found.extend(plugin_problems(config))
    if config is None or placed or found:
        raise ConfigError(_problems(placed, found, lines, filename))
    return config


def _with_plugin_path(config: Config, filename: str) -> Config:
    """`plugins.path` made absolute, from the directory of the config file, which relative
    paths in plugins' options start from too (kept only for a config naming plugins of its
    own: two configs without any stay equal wherever their files are)."""
    if not config.plugins.path and not _names_plugins(config):
        return config
    base = os.path.dirname(os.path.abspath(filename))
    path = tuple(os.path.normpath(os.path.join(base, entry)) for entry in config.plugins.path)
    settings = config.plugins.model_copy(update={"path": path})
    settings._base_dir = base
    return config.model_copy(update={"plugins": settings})


def _names_plugins(config: Config) -> bool:
    """Whether `config` names a plugin other than a built-in one without options."""
    for listener in config.listeners:
        if listener.filters or any(route.filters for route in listener.routes):
            return True
    for pool in config.pools.values():
        if pool.policy_with or not plugins.is_builtin("policies", pool.policy):
            return True
        active = pool.health.active
        if active is not None and (active.options or not plugins.is_builtin("probes", active.type)):
            return True
    return False


def plugin_problems(config: Config) -> list[tuple[Loc, str]]:
    """Import every plugin `config` names and validate its options: each problem at the key
    path of the reference (``use``, ``policy``, ``type``) or of its options (``with``)."""
    found: list[tuple[Loc, str]] = []
    pools = list(config.pools)
    path = config.plugins.path
    base_dir = config.plugins.base_dir

    def check(kind: str, ref: str, raw: dict[str, Any], at: Loc, options_at: Loc) -> None:
        try:
            cls = plugins.load(kind, ref, path)
        except plugins.PluginProblem as exc:
            found.append((at, str(exc)))
            return
        model = plugins.options_of(cls)
        if model is not None and model.model_config.get("extra") not in ("allow", "forbid"):
            # a model that would ignore them: a misspelt option is an error all the same
            known = [field.alias or name for name, field in model.model_fields.items()]
            for key in raw:
                if key not in known and key not in model.model_fields:
                    found.append(((*options_at, key), _unknown_key(str(key), known)))
        try:
            options = plugins.options(cls, raw, pools, base_dir)
        except plugins.PluginProblem as exc:
            found.append((options_at, str(exc)))
            return
        except ValidationError as exc:
            for error in _relevant(exc.errors(include_url=False)):
                loc, message = _explain(error, model or Config)
                found.append(((*options_at, *loc), message))
            return
        if plugins.is_builtin(kind, ref):
            return
        try:  # as a worker will: a constructor that fails here would fail there
            plugins.create(cls, options)
        except Exception as exc:
            found.append((at, f"creating {ref} failed: {type(exc).__name__}: {exc}"))

    for i, listener in enumerate(config.listeners):
        for j, use in enumerate(listener.filters):
            at: Loc = ("listeners", i, "filters", j)
            check("filters", use.use, use.options, (*at, "use"), (*at, "with"))
        for k, route in enumerate(listener.routes):
            for j, use in enumerate(route.filters):
                at = ("listeners", i, "routes", k, "filters", j)
                check("filters", use.use, use.options, (*at, "use"), (*at, "with"))
    for name, pool in config.pools.items():
        at = ("pools", name, "policy")
        check("policies", pool.policy, pool.policy_with, at, (*at, "with"))
        active = pool.health.active
        if active is not None:
            at = ("pools", name, "health", "active")
            check("probes", active.type, active.options, (*at, "type"), (*at, "with"))
    return found


def _problems(
    placed: Iterable[ConfigProblem],
    found: Iterable[tuple[Loc, str]],
    lines: _LineIndex,
    filename: str,
) -> list[ConfigProblem]:
    """Give each found (loc, message) its line, and sort everything by line."""
    problems: list[ConfigProblem] = []
    located = (ConfigProblem(filename, lines.find(loc), format_loc(loc), msg) for loc, msg in found)
    for problem in (*placed, *located):
        if problem not in problems:
            problems.append(problem)
    # Stable: problems on one line keep the order in which they were found.
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


# ---------------------------------------------------------------------------------------------
# Lines of the YAML node tree

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class _Duplicate:
    loc: Loc
    line: int
    message: str


@dataclass(slots=True)
class _LineIndex:
    """The line of one key (or list item) and the same for every key path under it.

    Mapping children are keyed by the key's text, list children by index. A key's line is
    where the key is written, so a wrong value spread over several lines is reported where
    its key starts.
    """

    line: int
    children: dict[str | int, _LineIndex] = field(default_factory=dict)

    def find(self, loc: Loc) -> int:
        """The line of the deepest part of `loc` present in the file: the key itself, or,
        for a key that is missing, the key or list item whose mapping lacks it."""
        entry = self
        for part in loc:
            child = entry.children.get(part)
            if child is None and not isinstance(part, str):
                child = entry.children.get(str(part))  # YAML key 1: reaches pydantic as int
            if child is None:
                break
            entry = child
        return entry.line

    @classmethod
    def build(cls, root: Node, duplicates: list[_Duplicate]) -> _LineIndex:
        """Index the tree under `root`, appending each duplicate mapping key to `duplicates`."""
        return _Indexer(duplicates).index(root, _line(root), ())


class _Indexer:
    """One walk over a composed YAML tree. Anchored nodes reached again through aliases are
    indexed once (memoized by identity), which keeps "billion laughs" documents linear and
    recursive aliases finite."""

    def __init__(self, duplicates: list[_Duplicate]) -> None:
        self.duplicates = duplicates
        self.done: dict[int, _LineIndex] = {}
        self.active: set[int] = set()

    def index(self, node: Node, line: int, loc: Loc) -> _LineIndex:
        seen = self.done.get(id(node))
        if seen is not None:
            return _LineIndex(line, seen.children)
        if id(node) in self.active:  # an alias inside its own anchor
            return _LineIndex(line)
        self.active.add(id(node))
        entry = _LineIndex(line)
        if isinstance(node, MappingNode):
            self._index_mapping(node, entry, loc)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                entry.children[i] = self.index(item, _line(item), (*loc, i))
        self.active.discard(id(node))
        self.done[id(node)] = entry
        return entry

    def _index_mapping(self, node: MappingNode, entry: _LineIndex, loc: Loc) -> None:
        first_line: dict[tuple[str, str], int] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.append(value_node)
                continue
            key = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
            key_line = _line(key_node)
            earlier = first_line.get((key_node.tag, key))
            if earlier is None:
                first_line[(key_node.tag, key)] = key_line
            else:
                self.duplicates.append(
                    _Duplicate(
                        (*loc, key),
                        key_line,
                        f'duplicate key "{key}": it is already set on line {earlier}',
                    )
                )
            # PyYAML keeps the last value, so errors about the value point at the last key.
            entry.children[key] = self.index(value_node, key_line, (*loc, key))
        # "<<: *defaults" fills in keys the mapping does not set itself; earlier merges win.
        for value_node in merged:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                for part, child in self.index(source, _line(source), loc).children.items():
                    entry.children.setdefault(part, child)


def _yaml_problem(exc: yaml.YAMLError, text: str, filename: str) -> ConfigProblem:
    line: int | None = None
    message = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = exc.problem or exc.context or "syntax error"
        context_mark = exc.context_mark
        if exc.problem and exc.context:
            where = ""
            if context_mark is not None and context_mark.line + 1 != line:
                where = f" on line {context_mark.line + 1}"
            if exc.problem.startswith("but "):  # PyYAML splits "expected X" / "but found Y"
                message = f"{exc.context}{where} {exc.problem}"
            else:
                message = f"{exc.problem} ({exc.context}{where})"
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        message = f"character {exc.character!r} is not allowed in YAML"
    message = f"invalid YAML: {message}"
    if line is not None:
        source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
        if _UNQUOTED_IPV6.search(source):
            message += ' (write IPv6 addresses in quotes: "[::1]:8080")'
    return ConfigProblem(filename, line, "", message)


_UNQUOTED_IPV6 = re.compile(r"(?:^|[\s:-])\[[0-9A-Fa-f:.%]*\]:[0-9]")


# ---------------------------------------------------------------------------------------------
# Pydantic errors, in words


def _relevant(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop "too short" errors on a list whose items have errors of their own: pydantic counts
    only the valid items, so one bad server in a list of one also says "at least 1 item"."""
    locs = [tuple(error["loc"]) for error in errors]
    return [
        error
        for error, loc in zip(errors, locs, strict=True)
        if error["type"] != "too_short"
        or not any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)
    ]


def _explain(error: ErrorDetails, root: type[BaseModel] = Config) -> tuple[Loc, str]:
    """Turn one pydantic error into a key path and a message an operator can act on; `root`
    is the model the path starts from (a plugin's options model, or the whole Config)."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return loc[:-1], f'missing required key "{loc[-1]}"'
    if kind == "extra_forbidden":
        return loc, _unknown_key(str(loc[-1]), _keys_at(loc[:-1], root))
    if loc and loc[-1] == "[key]":
        loc = (*loc[:-2], str(loc[-2]))  # a bad mapping key: report it at the key itself
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"].removeprefix("Value error, ")))
    if kind == "literal_error":
        return loc, _not_one_of(value, _choices_at(loc, root) or [str(ctx.get("expected", ""))])
    if kind == "too_short":
        return loc, "must have at least one entry"
    expected = _EXPECTED.get(kind)
    if expected is not None:
        if value is None:
            return loc, f"must be {expected}, but it is empty"
        return loc, f"must be {expected}, not {_kind_of(value)}"
    bound = _BOUNDS.get(kind)
    if bound is not None:
        return loc, f"must be {bound[0]} {ctx.get(bound[1])}, not {show(value)}"
    message = error["msg"]
    return loc, message[:1].lower() + message[1:]


_MAPPING = "a mapping (key: value lines)"
_LIST = 'a list ("- item" lines, or [a, b])'
_EXPECTED: dict[str, str] = {
    "model_type": _MAPPING,
    "model_attributes_type": _MAPPING,
    "dict_type": _MAPPING,
    "tuple_type": _LIST,
    "list_type": _LIST,
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}
_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": ("more than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def _kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return show(value)


def _unknown_key(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key "{key}": did you mean "{close[0]}"?'
    if known:
        return f'unknown key "{key}" (valid keys here: {", ".join(known)})'
    return f'unknown key "{key}"'


def _not_one_of(value: object, choices: Sequence[str]) -> str:
    message = f"must be one of: {', '.join(choices)}, not {show(value)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        if close:
            message += f' (did you mean "{close[0]}"?)'
    return message


def _type_at(loc: Loc, root: type[BaseModel] = Config) -> Any:
    """The schema type found by following `loc` from `root`, or None if it leads nowhere."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field_info = tp.model_fields.get(str(part)) or _by_alias(tp, str(part))
            if field_info is None:
                return None
            tp = field_info.annotation
        elif get_origin(tp) is tuple and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and a None alternative, which change nothing about the shape."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _by_alias(model: type[BaseModel], key: str) -> Any:
    for field_info in model.model_fields.values():
        if field_info.alias == key:
            return field_info
    return None


def _keys_at(loc: Loc, root: type[BaseModel] = Config) -> list[str]:
    tp = _type_at(loc, root)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [field.alias or name for name, field in tp.model_fields.items()]
    return []


def _choices_at(loc: Loc, root: type[BaseModel] = Config) -> list[str]:
    tp = _type_at(loc, root)
    if get_origin(tp) is Literal:
        return [str(arg) for arg in get_args(tp)]
    return []
