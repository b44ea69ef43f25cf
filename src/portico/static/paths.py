"""From a request path to an open file under a root, refusing every way out of the root.

Owns `request_segments` (a request target's path as checked, percent-decoded segments) and
`open_under` (those segments opened below a root directory). The rules:

- the path is decoded once, strictly: a `%` not followed by two hex digits, an encoded `/`
  (`%2f`), a backslash, a NUL (raw or `%00`), a control character, or bytes that are not
  valid UTF-8 (overlong forms such as `%c0%ae` included: Python's decoder refuses them) are
  refused (`NotFound`): no file name needs them, and each is a known traversal trick;
- `..` anywhere is refused, never normalised away; `.` and empty segments are dropped;
- a segment starting with `.` (`.git`, `.env`, `.htpasswd`) is hidden (`Hidden`), except
  `.well-known` (RFC 8615);
- symlinks are followed only inside the root (`Forbidden` for one that leads out), unless
  `follow_symlinks`. The path is opened one component at a time from the root's descriptor
  with O_NOFOLLOW; only when that meets a symlink is the path resolved, checked to stay in
  the root, and opened the same way along the resolved path, so a symlink swapped in between
  the check and the open is refused too, not followed.

Opening touches the file system but never a socket; it never reads file contents.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Forbidden",
    "Hidden",
    "Missing",
    "NotFound",
    "Opened",
    "Refused",
    "open_under",
    "request_segments",
]

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block open
_DIR_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY
_ALLOWED_DOT: Final = frozenset({".well-known"})


class Refused(Exception):
    """The request path names nothing Portico will serve; the subclass says how to answer."""

    status = 404


class NotFound(Refused):
    """No such file, or a path no file can have (a traversal attempt answers the same)."""


class Missing(NotFound):
    """No file of that name: the one refusal a `try_files` fallback passes to the pool."""


class Hidden(NotFound):
    """A dot-file or dot-directory: answered as if it did not exist."""


class Forbidden(Refused):
    """It exists but is not served: a symlink leading out of the root, a special file."""

    status = 403


def _decode(path: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25:  # %
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise NotFound("a malformed percent escape")
            byte = int(pair, 16)
            if byte == 0x2F:
                raise NotFound("an encoded slash")
            out.append(byte)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def request_segments(target: bytes) -> tuple[str, ...]:
    """The path of `target` (query dropped) as decoded, checked segments; () for the root.

    Raises `NotFound` for what no served file can be named (see the module's rules) and
    `Hidden` for a dot-segment."""
    path = target.partition(b"?")[0].partition(b"#")[0]
    if not path.startswith(b"/"):
        raise NotFound("not an origin-form path")
    raw = _decode(path)
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NotFound("not UTF-8") from None
    if any(c < " " or c == "\x7f" or c == "\\" for c in text):
        raise NotFound("a control character or a backslash")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise NotFound("a parent segment")
        if segment.startswith(".") and segment not in _ALLOWED_DOT:
            raise Hidden("a hidden file")
        segments.append(segment)
    return tuple(segments)


@dataclass(frozen=True, slots=True)
class Opened:
    """An open file or directory under the root: its descriptor (the caller closes it) and
    `fstat` of that descriptor (what is served is what was opened, even if the name is
    replaced meanwhile)."""

    fd: int
    stat: os.stat_result
    segments: tuple[str, ...]  # as found under the root (symlinks inside it resolved)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.stat.st_mode)


def _inside(real: str, root: str) -> str | None:
    """`real` relative to `root` ("" for the root itself), or None when it is outside."""
    if real == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return real[len(prefix) :] if real.startswith(prefix) else None


def open_under(root: str, segments: tuple[str, ...], follow_symlinks: bool = False) -> Opened:
    """Open `segments` (from `request_segments`) below the directory `root` (an absolute,
    resolved path). Raises `NotFound`, `Hidden` or `Forbidden`; any other OSError is
    `NotFound` (a name too long, a component that is a file, permissions)."""
    if follow_symlinks:
        path = os.path.join(root, *segments)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            raise Missing("no such file") from None
        return _opened(fd, segments)
    fast = _walk(root, segments)
    if fast is not None:
        return _opened(fast, segments)
    # a symlink on the way (or a race): resolve it, and serve it only if it stays inside
    try:
        real = os.path.realpath(os.path.join(root, *segments), strict=True)
    except OSError:
        raise Missing("no such file") from None
    relative = _inside(real, root)
    if relative is None:
        raise Forbidden("a symlink leading out of the root")
    inner = tuple(part for part in relative.split(os.sep) if part)
    if any(part.startswith(".") and part not in _ALLOWED_DOT for part in inner):
        raise Hidden("a symlink to a hidden file")
    # walk from the root's descriptor without following anything: a symlink put in place
    # since realpath() looked fails with ELOOP or ENOTDIR instead of being followed
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        raise NotFound("the root is missing") from None
    try:
        for i, part in enumerate(inner):
            last = i == len(inner) - 1
            flags = (_OPEN_FLAGS if last else _DIR_FLAGS) | os.O_NOFOLLOW
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError:
        os.close(fd)
        raise Forbidden("the path changed while it was opened") from None
    return _opened(fd, inner)


def _walk(root: str, segments: tuple[str, ...]) -> int | None:
    """The usual case, in one open per segment: `segments` opened from the root's descriptor
    without following any symlink. None when a component may be a symlink (ELOOP, or ENOTDIR
    on the way: the caller resolves the path and checks where it leads); `Missing` when a
    component does not exist."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        raise Missing("the root is missing") from None
    try:
        for i, part in enumerate(segments):
            last = i == len(segments) - 1
            flags = (_OPEN_FLAGS if last else _DIR_FLAGS) | os.O_NOFOLLOW
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                fd = -1
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and not last):
                    return None  # a symlink (or a file where a directory should be)
                raise Missing("no such file") from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _opened(fd: int, segments: tuple[str, ...]) -> Opened:
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise NotFound("gone") from None
    opened = Opened(fd, info, segments)
    if not (opened.is_file or opened.is_dir):
        os.close(fd)
        raise Forbidden("not a regular file")
    return opened
