"""The config models of who may connect: `access:` lists (listeners and routes) and `bans:`
(a listener's abuse rules).

Owns the YAML shape and its checks: every entry parses as an address or network, every file
named exists and parses (its bad line named), a status class or code is one HTTP knows. The
lookups themselves are `portico.security`'s; the worker reads the files again when it builds a
config version, so a reload picks up their changes. Imported by `schema.py` and `routes.py`
(it imports neither).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from portico.config.units import Duration, show
from portico.security.access import Action, EntryError, parse_network, read_file

__all__ = ["AccessConfig", "BanRule", "NetworkEntry", "check_network_entry"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_network_entry(value: str) -> str:
    """One address or CIDR, kept in canonical form (``10.1.2.3/8`` → ``10.0.0.0/8``)."""
    if not isinstance(value, str):
        value = str(value)
    try:
        return str(parse_network(value))
    except EntryError as exc:
        raise ValueError(str(exc)) from None


NetworkEntry = Annotated[str, BeforeValidator(check_network_entry)]


def _check_file(path: str) -> str:
    try:
        read_file(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except EntryError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    return path


_File = Annotated[str, AfterValidator(_check_file)]


def _none_is_empty(value: object) -> object:
    return () if value is None else value


_List = BeforeValidator(_none_is_empty)


def _status(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"must be a status from {low} to {high}, not {show(value)}")
        return value

    return check


class AccessConfig(_Model):
    """Allow and deny lists of addresses and networks, inline and from files (one entry a
    line, ``#`` comments). The most specific entry decides (a tie: deny); no entry: `default`,
    which is ``deny`` when any allow entry is given and ``allow`` otherwise, unless set."""

    allow: Annotated[tuple[NetworkEntry, ...], _List] = ()
    deny: Annotated[tuple[NetworkEntry, ...], _List] = ()
    allow_files: Annotated[tuple[_File, ...], _List] = ()
    deny_files: Annotated[tuple[_File, ...], _List] = ()
    default: Literal["allow", "deny"] | None = None
    # routes: the answer to a denied request (a listener closes the connection at accept)
    status: Annotated[int, AfterValidator(_status(400, 599))] = 403
    body: str = "403 Forbidden\n"

    def default_action(self) -> Action:
        if self.default is not None:
            return self.default
        return "deny" if self.allow or self.allow_files else "allow"


_STATUS_CLASS = re.compile(r"[1-5]xx")


def _check_status_match(value: object) -> object:
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        text = str(item).lower()
        if isinstance(item, bool) or not (
            _STATUS_CLASS.fullmatch(text) or (text.isdigit() and 100 <= int(text) <= 599)
        ):
            raise ValueError(
                f"{show(item)} is not a status or status class: write e.g. 401, 429 or 4xx"
            )
        out.append(text)
    return tuple(out)


_BAN_KEY = re.compile(r"client_ip|(?:header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_ban_key(value: str) -> str:
    if not _BAN_KEY.fullmatch(value):
        raise ValueError(f"{show(value)} is not a key: use client_ip, header:NAME or cookie:NAME")
    return value


class BanRule(_Model):
    """fail2ban inside the proxy: more than `count` requests (those answered with a `status`
    in the list, when given) from one client key within `window` → that key is refused for
    `duration`, on this listener, by every worker (and instance, with `state.redis`)."""

    name: str | None = None  # for logs, metrics and the admin API; default bans[i]
    key: Annotated[str, AfterValidator(_check_ban_key)] = "client_ip"
    status: Annotated[
        tuple[str, ...] | None,
        BeforeValidator(lambda v: None if v is None else _check_status_match(v)),
    ] = None
    count: Annotated[int, Field(ge=1, le=1_000_000)]
    window: Duration
    duration: Duration
    answer: Annotated[int, AfterValidator(_status(400, 599))] = 403  # to a banned key

    def counts(self, status: int) -> bool:
        """Whether a response with `status` counts towards this rule."""
        wanted = self.status
        if wanted is None:
            return True
        text = str(status)
        return any(item == text or (item[1:] == "xx" and item[0] == text[0]) for item in wanted)
