"""The config models of `compression:` (a listener's or a route's) and of a route's `static:`
action. *pure*

Owns the frozen pydantic models, their defaults and per-field rules: which codings and levels
exist (levels capped where compressing costs 10 to 300 times the CPU per byte of the
defaults, see bench/compress_steps.py), which media types may be listed (never images,
video or audio), a static root that is an absolute directory, index names that are plain file
names, Cache-Control's max_age in seconds up to years. Reads the file system only to check that
the root is a directory. It must not import `schema.py` or `routes.py`, which import it.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from portico.config.units import Size, parse_duration, show

__all__ = [
    "DEFAULT_TYPES",
    "LEVEL_RANGES",
    "CacheControlConfig",
    "CompressionConfig",
    "CompressionLevels",
    "StaticConfig",
    "compression_shorthand",
]

# The defaults as the compression package has them (a twin: config never imports upward).
DEFAULT_TYPES: Final = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
)
# Allowed levels: each library's range, capped where a 64 KiB step takes more than ~5 ms on
# this project's 2-core machine (br 7+ and zstd 13+ reach 20-300 ms): on the fly, such levels
# would spend a core per few MB/s (the worker thread keeps the loop free, not the CPU).
LEVEL_RANGES: Final = {"gzip": (1, 9), "br": (0, 6), "zstd": (1, 12)}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _none_is_empty(value: object) -> object:
    return {} if value is None else value


def _level(coding: str) -> object:
    low, high = LEVEL_RANGES[coding]

    def check(value: int) -> int:
        if isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"a {coding} level is from {low} to {high}, not {show(value)}")
        return value

    return AfterValidator(check)


class CompressionLevels(_Model):
    """The level of each coding (higher: smaller and slower)."""

    gzip: Annotated[int, _level("gzip")] = 5
    br: Annotated[int, _level("br")] = 4
    zstd: Annotated[int, _level("zstd")] = 3


Coding = Literal["zstd", "br", "gzip"]

_MEDIA_PATTERN = re.compile(r"[a-z0-9!#$&^_.+-]+/(?:\*|\*\+[a-z0-9!#$&^_.+-]+|[a-z0-9!#$&^_.+-]+)")


def _check_type(value: str) -> str:
    low = value.strip().lower()
    if not _MEDIA_PATTERN.fullmatch(low):
        raise ValueError(
            f"{show(value)} is not a media type: write type/subtype, type/* or "
            "type/*+suffix (no parameters)"
        )
    if low.startswith(("image/", "video/", "audio/")) and low != "image/svg+xml":
        raise ValueError(f"{show(value)}: images, video and audio are never compressed")
    return low


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{show(value)} is listed twice")
        seen.add(value)
    return values


class CompressionConfig(_Model):
    """Compress responses on the fly for clients that accept it (off unless set)."""

    algorithms: Annotated[tuple[Coding, ...], AfterValidator(_unique)] = Field(
        default=("zstd", "br", "gzip"), min_length=1
    )  # offered; ties between a client's equal preferences go to the earlier one
    min_size: Size = 1024  # a body known to be shorter is sent as it is
    types: Annotated[
        tuple[Annotated[str, AfterValidator(_check_type)], ...], AfterValidator(_unique)
    ] = Field(default=DEFAULT_TYPES, min_length=1)
    levels: Annotated[CompressionLevels, BeforeValidator(_none_is_empty)] = Field(
        default_factory=CompressionLevels
    )


def compression_shorthand(value: object) -> object:
    """`compression: true` is `compression: {}` (the defaults); `false` is no section."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


_LONG_UNITS: Final = {"d": 86400.0, "y": 365 * 86400.0}
_LONG = re.compile(r"([0-9]+)\s*([dy])", re.IGNORECASE)


def _max_age(value: object) -> int:
    """Seconds as a whole number: a duration (`1h`, `30m`), or days and years (`7d`, `1y`)."""
    if isinstance(value, str):
        match = _LONG.fullmatch(value.strip())
        if match is not None:
            return int(int(match.group(1)) * _LONG_UNITS[match.group(2).lower()])
    try:
        return int(parse_duration(value))
    except ValueError:
        raise ValueError(
            f"{show(value)} is not a max_age: write seconds or a duration such as 1h, 7d, 1y"
        ) from None


class CacheControlConfig(_Model):
    """The Cache-Control of every file a static route serves."""

    max_age: Annotated[
        int,
        BeforeValidator(_max_age),
        WithJsonSchema(
            {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["1y"]}]}
        ),
    ] = 0
    immutable: bool = False  # the file at this URL never changes (fingerprinted assets)
    public: bool = True  # shared caches may keep it too (false: private)

    def header(self) -> str:
        parts = ["public" if self.public else "private", f"max-age={self.max_age}"]
        if self.immutable:
            parts.append("immutable")
        return ", ".join(parts)


def _check_root(value: str) -> str:
    if not os.path.isabs(value):
        raise ValueError(f"{show(value)} is not an absolute path")
    if not os.path.isdir(value):
        raise ValueError(f"{show(value)} is not a directory")
    return os.path.realpath(value)


def _check_index(value: str) -> str:
    if not value or "/" in value or "\\" in value or "\0" in value or value in (".", ".."):
        raise ValueError(f"{show(value)} is not a file name")
    if value.startswith("."):
        raise ValueError(f"{show(value)} is a hidden file: it is never served")
    return value


class StaticConfig(_Model):
    """Answer GET and HEAD from files under `root` (a route action)."""

    root: Annotated[str, AfterValidator(_check_root)]  # absolute; symlinks in it resolved
    index: Annotated[
        tuple[Annotated[str, AfterValidator(_check_index)], ...],
        BeforeValidator(lambda v: () if v is None else [v] if isinstance(v, str) else v),
    ] = ("index.html",)
    try_files: Literal["fallback"] | None = None  # a missing file: the route's pool answers
    follow_symlinks: bool = False  # true: symlinks may lead out of root
    autoindex: bool = False  # list a directory without an index file (else 403)
    cache_control: CacheControlConfig | None = None
    precompressed: bool = True  # serve name.zst / name.br / name.gz to clients that accept it

    @model_validator(mode="after")
    def _unique_index(self) -> Self:
        _unique(self.index)
        return self
