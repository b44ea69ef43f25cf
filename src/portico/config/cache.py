"""The config model of the HTTP cache: a route's ``cache:`` and the top-level ``cache:``.

Owns the frozen pydantic models and their field rules. *pure*: it builds no cache (the worker
does, into `portico.cache.runtime` values) and imports neither routes.py nor schema.py, which
import it.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from portico.config.units import Duration, DurationOrZero, Size, show

__all__ = ["CacheStorageConfig", "RouteCacheConfig"]

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid header name")
    return value


def _check_fraction(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"must be from 0 to 1, not {show(value)}")
    return value


def _check_param(value: str) -> str:
    if not value or any(c in value for c in "&=#? "):
        raise ValueError(f'{show(value)} is not a query parameter name (or "*")')
    return value


def _check_positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be more than 0 bytes")
    return value


def _none_is_empty(value: object) -> object:
    return () if value is None else value


def _reject_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {show(value)}")
    return value


class RouteCacheConfig(_Model):
    """A route's cache (RFC 9111, as a shared cache). Only GET responses are stored; HEAD and
    Range requests are answered from stored GETs."""

    enabled: bool = True  # so that `cache: {enabled: false}` turns it off without deleting
    # left out of the cache key: parameter names, or "*" for the whole query
    ignore_query: Annotated[
        tuple[Annotated[str, AfterValidator(_check_param)], ...], BeforeValidator(_none_is_empty)
    ] = ()
    # request header values added to the cache key (beside method and URI)
    key_headers: Annotated[
        tuple[Annotated[str, AfterValidator(_check_header_name)], ...],
        BeforeValidator(_none_is_empty),
    ] = ()
    # heuristic freshness (RFC 9111 §4.2.2): this share of the time since Last-Modified, for
    # responses without explicit freshness; 0 turns heuristics off
    heuristic_fraction: Annotated[
        float, BeforeValidator(_reject_bool), AfterValidator(_check_fraction)
    ] = 0.1
    heuristic_max: Duration = 86400.0  # the longest heuristic lifetime
    max_entry_size: Annotated[Size, AfterValidator(_check_positive)] = 8 * 1024 * 1024
    collapse: bool = True  # concurrent misses for one key: one origin request, the rest wait
    collapse_timeout: Duration = 5.0  # the longest a request waits for that one
    collapse_max_waiters: Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)] = 1024
    cache_status: bool = True  # send the Cache-Status response field (RFC 9211)
    # the origin out of reach (no answer: refused, broken, timed out; no server fit): a stored
    # response this stale may stand in when nothing forbids it (RFC 9111 §4.2.4); 0: never
    stale_if_unreachable: DurationOrZero = 86400.0


class CacheStorageConfig(_Model):
    """Where the routes' caches keep responses: one memory tier per worker, and optionally a
    disk tier (a directory) shared by the workers of this instance, kept across restarts."""

    memory_size: Annotated[Size, AfterValidator(_check_positive)] = 64 * 1024 * 1024
    max_entry_size: Annotated[Size, AfterValidator(_check_positive)] = 8 * 1024 * 1024
    disk_path: Annotated[str, Field(min_length=1)] | None = None  # None: no disk tier
    disk_size: Annotated[Size, AfterValidator(_check_positive)] = 1024 * 1024 * 1024
    disk_max_entry_size: Annotated[Size, AfterValidator(_check_positive)] = 256 * 1024 * 1024
