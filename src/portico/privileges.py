"""Dropping root after binding: the config's `user:` and `group:`.

Owns the lookup of a user and group by name or number (`resolve`, in the supervisor, which
refuses to start on an unknown one) and the switch itself (`drop`, in each worker once it
listens on the sockets the supervisor bound, before it reports ready): supplementary groups
first, then the group, then the user, and a check that root cannot be regained. So every
process that reads a client's bytes runs unprivileged, while the supervisor keeps its own
user to bind new ports below 1024 on a reload (NGINX's master and workers do the same).

Never binds anything itself; never keeps a capability. To run with no root at all, start
Portico as its own user with systemd's `AmbientCapabilities=CAP_NET_BIND_SERVICE`.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import NamedTuple

__all__ = ["Identity", "PrivilegeError", "drop", "resolve"]


class PrivilegeError(Exception):
    """The user or group cannot be found, or the switch failed: Portico must not start."""


class Identity(NamedTuple):
    user: str
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.user}:{self.uid}:{self.gid}"

    @classmethod
    def parse(cls, text: str) -> Identity:
        """The form `str` gives (``name:uid:gid``), as the supervisor passes it to workers."""
        user, uid, gid = text.rsplit(":", 2)
        return cls(user, int(uid), int(gid))


def _lookup_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user {user!r} does not exist on this system") from None


def _lookup_group(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"group {group!r} does not exist on this system") from None


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity to switch to; None when the config names no user. Without `group`, the
    user's primary group."""
    if user is None:
        if group is not None:
            raise PrivilegeError("group is set without user: set user too")
        return None
    entry = _lookup_user(user)
    gid = _lookup_group(group) if group is not None else entry.pw_gid
    return Identity(entry.pw_name, entry.pw_uid, gid)


def drop(identity: Identity) -> bool:
    """Become `identity`. True if the process switched; False if it already runs as that user
    (nothing to do). Raises PrivilegeError if it is another user and not root, or if the switch
    did not stick."""
    if os.geteuid() == identity.uid and os.getegid() == identity.gid:
        return False
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"user {identity.user!r} is set, but Portico runs as uid {os.geteuid()}, not root: "
            "start it as root (it binds, then switches), or remove user/group"
        )
    try:
        os.setgroups([identity.gid])  # only the one group: root's supplementary ones go
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {identity.user!r}: {exc}") from None
    if identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return True
        raise PrivilegeError("root could be regained after switching user: refusing to run")
    return True
