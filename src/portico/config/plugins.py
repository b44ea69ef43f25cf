"""Plugins named in a config: the one loader for built-in and users' policies, filters, probes.

Owns how a config names a plugin and how that name becomes a class and an instance:

- a registered name: a built-in (each package keeps its own registry beside the code:
  `portico.balancing.POLICIES`, `portico.filters.FILTERS`, `portico.health.probes.PROBES`),
  or one an installed distribution declares under the entry-point group `portico.policies`,
  `portico.filters` or `portico.probes`;
- ``module:Class``: imported from `sys.path`, plus the config's `plugins.path` directories.

`resolve` turns a name into ``module:attr`` (pure, for the schema's validators); `load`
imports it and checks its base class; `options` validates what the config gives under
`with:` against the class's `Options` model; `build` does all three and makes the instance.
Every failure is a `PluginProblem` naming what is wrong in words an operator can act on;
`load.py` puts it at its line. Never runs a plugin's hooks (the proxy and the health checker
do, behind a `portico.plugins.guard.Guard`).

Freshness: a module named by ``module:Class`` that was imported earlier in this process and
whose source file changed since is imported again, so a supervisor validating a reload sees
the code its new workers will run (workers are new processes and import everything afresh).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import random
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from portico.config.units import show
from portico.plugins import CONFIG_DIR, POOLS, Filter, Policy, Probe, options_of
from portico.plugins.guard import DEFAULT_BUDGET, Guard, GuardedPolicy

__all__ = [
    "KINDS",
    "FilterUse",
    "PluginProblem",
    "build",
    "build_policy",
    "builtin_names",
    "check_reference",
    "create",
    "instantiate",
    "is_builtin",
    "load",
    "names",
    "options",
    "options_of",
    "resolve",
]


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of plugin: where its built-ins are registered, its entry-point group, its
    base class, and what to call it in a message."""

    registry: str  # "module:attr" of the built-ins' dict, name -> class
    group: str
    base: type
    noun: str


KINDS: Final[dict[str, Kind]] = {
    "policies": Kind("portico.balancing:POLICIES", "portico.policies", Policy, "balancing policy"),
    "filters": Kind("portico.filters:FILTERS", "portico.filters", Filter, "filter"),
    "probes": Kind("portico.health.probes:PROBES", "portico.probes", Probe, "health probe"),
}

T = TypeVar("T")

# module.path:Attr, each part a Python identifier
_REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class PluginProblem(ValueError):
    """Why a plugin reference cannot be used."""


def _builtins(kind: str) -> dict[str, type]:
    module, _, attr = KINDS[kind].registry.partition(":")
    registry: dict[str, type] = getattr(importlib.import_module(module), attr)
    return registry


def _entry_points(kind: str) -> dict[str, str]:
    """Names installed distributions register for `kind`, mapped to their ``module:attr``."""
    found = importlib.metadata.entry_points(group=KINDS[kind].group)
    return {ep.name: ep.value.replace(" ", "") for ep in found}


def names(kind: str) -> list[str]:
    """Every registered name for `kind`: the built-ins in their order, then entry points."""
    out = list(_builtins(kind))
    out += [name for name in sorted(_entry_points(kind)) if name not in out]
    return out


def resolve(kind: str, ref: str) -> str | type:
    """What `ref` names: a built-in class, or the ``module:attr`` to import. Raises
    PluginProblem for a name nobody registered, or text that is not a reference at all."""
    builtin = _builtins(kind).get(ref)
    if builtin is not None:
        return builtin
    if ":" in ref:
        if not _REFERENCE.fullmatch(ref.strip()):
            raise PluginProblem(
                f"{show(ref)} is not a plugin reference: write module.path:ClassName"
            )
        return ref.strip()
    target = _entry_points(kind).get(ref)
    if target is not None:
        return target
    known = names(kind)
    if not known:
        raise PluginProblem(
            f"no {KINDS[kind].noun} is registered as {show(ref)}: write module.path:ClassName"
            f" (or install a package registering it under the {KINDS[kind].group} entry points)"
        )
    message = f"must be one of: {', '.join(known)}, not {show(ref)}"
    close = difflib.get_close_matches(ref, known, n=1, cutoff=0.6)
    if close:
        message += f' (did you mean "{close[0]}"?)'
    raise PluginProblem(message)


def check_reference(kind: str) -> Any:
    """A pydantic after-validator: the value names a plugin of `kind` (not yet imported)."""

    def check(value: str) -> str:
        resolve(kind, value)
        return value

    return check


# ---------------------------------------------------------------------------------------------
# Loading


def load(kind: str, ref: str, path: Iterable[str] = ()) -> type:
    """The class `ref` names, imported and checked to subclass the kind's base class.

    `path`: directories searched first for a ``module:Class`` module (the config's
    `plugins.path`, made absolute). Raises PluginProblem, never what the import raised.
    """
    spec = KINDS[kind]
    target = resolve(kind, ref)
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    for directory in reversed(list(path)):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    module = _import(module_name)
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            public = [n for n in dir(found) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise PluginProblem(f'module "{module_name}" has no attribute "{attr}"{hint}') from None
    if not (isinstance(found, type) and issubclass(found, spec.base)):
        base = f"portico.plugins.{spec.base.__name__}"
        what = "a class" if isinstance(found, type) else f"a {type(found).__name__}"
        raise PluginProblem(f"{target} is {what}, not a {spec.noun}: subclass {base}")
    return found


# module name -> the modification time of its source when it was imported (by this loader)
_imported: dict[str, float] = {}


def _import(name: str) -> ModuleType:
    """Import `name`, again if its source changed since this loader last imported it."""
    importlib.invalidate_caches()
    module = sys.modules.get(name)
    try:
        if module is not None and not name.startswith("portico."):
            mtime = _mtime(module)
            if mtime is not None and mtime != _imported.get(name, mtime):
                module = importlib.reload(module)
        if module is None:
            module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if missing == name or name.startswith(missing + "."):
            raise PluginProblem(f'cannot import "{name}": no module named "{missing}"') from None
        raise PluginProblem(f'importing "{name}" failed: {exc}') from None
    except Exception as exc:  # a plugin's import-time error is a config problem, not a crash
        raise PluginProblem(f'importing "{name}" failed: {type(exc).__name__}: {exc}') from None
    mtime = _mtime(module)
    if mtime is not None:
        _imported[name] = mtime
    return module


def _mtime(module: ModuleType) -> float | None:
    source = getattr(module, "__file__", None)
    try:
        return os.stat(source).st_mtime if source else None
    except OSError:
        return None


def options(
    cls: type, raw: Mapping[str, Any] | None, pools: Iterable[str], base_dir: str = ""
) -> BaseModel | None:
    """`raw` (the config's `with:`) validated by the class's `Options` model; None when it
    declares none. `pools` and `base_dir` (the config file's directory) are what `PoolName`
    and `ConfigPath` options are checked against. Raises pydantic's ValidationError
    (locations relative to `with:`), or PluginProblem for options to a class without any."""
    model = options_of(cls)
    if model is None:
        if raw:
            raise PluginProblem(f"{cls.__module__}:{cls.__qualname__} takes no options")
        return None
    context = {POOLS: list(pools), CONFIG_DIR: base_dir}
    return model.model_validate(dict(raw or {}), context=context)


def build(
    kind: str,
    ref: str,
    raw: Mapping[str, Any] | None,
    pools: Iterable[str],
    path: Iterable[str] = (),
    base_dir: str = "",
) -> tuple[type, BaseModel | None]:
    """The class and its validated options, ready to instantiate."""
    cls = load(kind, ref, path)
    return cls, options(cls, raw, pools, base_dir)


def instantiate(cls: type[T], options: BaseModel | None) -> T:
    """One instance of a filter or probe class: ``cls(options)``, or ``cls()`` when it
    declares no `Options` (policies have `Policy.create`)."""
    factory: Any = cls
    return cast(T, factory(options) if options_of(cls) is not None else factory())


def create(cls: type, options: BaseModel | None) -> object:
    """An instance of any kind of plugin class, as the worker or the checker builds it."""
    if issubclass(cls, Policy):
        return cls.create(options, random.Random())
    return instantiate(cls, options)


def build_policy(
    ref: str,
    raw: Mapping[str, Any] | None,
    rng: random.Random,
    *,
    pool: str,
    path: Iterable[str] = (),
    budget: float = DEFAULT_BUDGET,
) -> Policy:
    """The policy of pool `pool`: a built-in one bare, a user's behind a `Guard` (timed, and
    what it raises fails only the request concerned)."""
    cls = load("policies", ref, path)
    assert issubclass(cls, Policy)
    policy = cls.create(options(cls, raw, ()), rng)
    if ref in _builtins("policies"):
        return policy
    return GuardedPolicy(policy, Guard(f"{ref} (pool {pool})", budget))


def builtin_names(kind: str) -> tuple[str, ...]:
    """The built-in names of `kind`, in their registry's order."""
    return tuple(_builtins(kind))


def is_builtin(kind: str, ref: str) -> bool:
    return ref in _builtins(kind)


# ---------------------------------------------------------------------------------------------
# The config's side


class FilterUse(BaseModel):
    """One filter as a config names it: ``{use: mypkg.auth:ApiKey, with: {...}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    use: str
    options: dict[str, Any] = Field(default_factory=dict, alias="with")

    @field_validator("use")
    @classmethod
    def _registered(cls, value: str) -> str:
        resolve("filters", value)
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return {} if value is None else value
