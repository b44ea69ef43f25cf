"""Request paths to files under a root, and every way out refused (portico.static.paths)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portico.static.paths import (
    Forbidden,
    Hidden,
    Missing,
    NotFound,
    open_under,
    request_segments,
)


def test_segments_are_decoded_and_dots_and_empties_dropped() -> None:
    assert request_segments(b"/") == ()
    assert request_segments(b"/a//b/./c.txt?x=1") == ("a", "b", "c.txt")
    assert request_segments(b"/caf%C3%A9/a%20b") == ("café", "a b")
    assert request_segments(b"/.well-known/security.txt") == (".well-known", "security.txt")


@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/passwd",
        b"/a/../../etc/passwd",
        b"/%2e%2e/etc/passwd",
        b"/%2E%2E/etc/passwd",
        b"/.%2e/etc/passwd",
        b"/a%2f..%2f..%2fetc/passwd",
        b"/a%2Fb",
        b"/..\\etc\\passwd",
        b"/a\\b",
        b"/a%5cb",
        b"/a%00.html",
        b"/a\x00b",
        b"/%c0%ae%c0%ae/etc/passwd",  # overlong UTF-8 for ".."
        b"/%c0%af",  # overlong "/"
        b"/%e0%80%ae",
        b"/%ff",
        b"/%",
        b"/%4",
        b"/%zz",
        b"/a%0d%0ab",
        b"relative",
        b"*",
    ],
)
def test_traversal_tricks_are_refused(target: bytes) -> None:
    with pytest.raises(NotFound):
        request_segments(target)


@pytest.mark.parametrize("target", [b"/.git/config", b"/a/.env", b"/.htpasswd", b"/%2egit/HEAD"])
def test_hidden_files_are_hidden(target: bytes) -> None:
    with pytest.raises(Hidden):
        request_segments(target)


@pytest.fixture
def site(tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("home")
    (root / "sub" / "page.txt").write_text("page")
    (tmp_path / "secret.txt").write_text("secret")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    os.symlink(tmp_path / "secret.txt", root / "out.txt")
    os.symlink(tmp_path, root / "outdir")
    os.symlink(root / "sub" / "page.txt", root / "in.txt")
    os.symlink(root / "sub", root / "in-sub")
    os.symlink(root / ".git" / "config", root / "gitlink")
    os.mkfifo(root / "fifo")
    return os.path.realpath(root), tmp_path


def read(opened_fd: int) -> bytes:
    try:
        return os.read(opened_fd, 100)
    finally:
        os.close(opened_fd)


def test_files_and_directories_open(site: tuple[str, Path]) -> None:
    root, _ = site
    opened = open_under(root, ("sub", "page.txt"))
    assert opened.is_file
    assert opened.segments == ("sub", "page.txt")
    assert read(opened.fd) == b"page"
    directory = open_under(root, ("sub",))
    assert directory.is_dir
    os.close(directory.fd)
    top = open_under(root, ())
    assert top.is_dir
    assert top.segments == ()
    os.close(top.fd)


def test_missing_is_missing(site: tuple[str, Path]) -> None:
    with pytest.raises(Missing):
        open_under(site[0], ("nope.txt",))
    with pytest.raises(Missing):
        open_under(site[0], ("index.html", "below"))


def test_symlinks_inside_the_root_are_followed(site: tuple[str, Path]) -> None:
    opened = open_under(site[0], ("in.txt",))
    assert opened.segments == ("sub", "page.txt")
    assert read(opened.fd) == b"page"
    through_dir = open_under(site[0], ("in-sub", "page.txt"))
    assert through_dir.segments == ("sub", "page.txt")
    assert read(through_dir.fd) == b"page"


@pytest.mark.parametrize("segments", [("out.txt",), ("outdir", "secret.txt"), ("outdir",)])
def test_symlinks_out_of_the_root_are_forbidden(
    site: tuple[str, Path], segments: tuple[str, ...]
) -> None:
    with pytest.raises(Forbidden):
        open_under(site[0], segments)


def test_follow_symlinks_follows_them_out(site: tuple[str, Path]) -> None:
    assert read(open_under(site[0], ("out.txt",), follow_symlinks=True).fd) == b"secret"


def test_a_symlink_to_a_hidden_file_is_hidden(site: tuple[str, Path]) -> None:
    with pytest.raises(Hidden):
        open_under(site[0], ("gitlink",))


def test_a_fifo_is_refused_without_blocking(site: tuple[str, Path]) -> None:
    with pytest.raises(Forbidden):
        open_under(site[0], ("fifo",))


def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    site: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, tmp = site
    real_realpath = os.path.realpath

    def swap_then_resolve(path: str, *, strict: bool = False) -> str:
        resolved = real_realpath(path, strict=strict)
        # the race: between the check and the open, sub/ becomes a link to outside
        os.rename(os.path.join(root, "sub"), os.path.join(root, "sub-old"))
        os.symlink(tmp, os.path.join(root, "sub"))
        (tmp / "page.txt").write_text("outside")
        return resolved

    monkeypatch.setattr(os.path, "realpath", swap_then_resolve)
    with pytest.raises(Forbidden):
        open_under(root, ("in-sub", "page.txt"))  # a symlink on the way: resolved, then walked
