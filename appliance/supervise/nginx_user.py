"""The user nginx's worker processes run as, and what they must be able to reach.

Started as root, nginx would keep its workers (which parse every request) as root unless
told otherwise; they run as ``[internal] nginx_user`` (``nobody`` by default) instead.
Those workers open frame files, the built web apps and their temporary files themselves
(design.md fact 7), so every folder on the way there must let that user in: the data
home's own folders get the workers' group and ``g+x`` (enter, not list; others stay out
of the home); a folder outside the home that keeps the workers out is an error that
names it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError


def worker_user(settings: Settings) -> pwd.struct_passwd | None:
    """The workers' user when nginx starts as root; ``None`` otherwise (they then run as
    the appliance's own, unprivileged, user)."""
    if os.geteuid() != 0:
        return None
    user = settings.internal.nginx_user
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"[internal] nginx_user: there is no user {user!r} on this system "
            "(nginx's worker processes run as it); create it or name another one"
        ) from None


def user_directive(user: pwd.struct_passwd | None) -> str:
    """nginx's ``user`` line for ``user`` and its primary group (empty for ``None``)."""
    if user is None:
        return ""
    return f"user {user.pw_name} {grp.getgrgid(user.pw_gid).gr_name};"


def let_workers_reach(user: pwd.struct_passwd | None, ours: Path, paths: Iterable[Path]) -> None:
    """Make every folder on the way to ``paths`` enterable by ``user``.

    Folders inside ``ours`` (the data home) get ``user``'s group and ``g+x``; a folder
    elsewhere that ``user`` cannot enter raises :class:`ConfigError` naming it and the
    ways out.
    """
    if user is None or user.pw_uid == 0:
        return
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for path in paths:
        for folder in [*reversed(path.parents), path]:
            if _can_enter(folder.stat(), user.pw_uid, groups):
                continue
            if folder == ours or ours in folder.parents:
                os.chown(folder, -1, user.pw_gid)
                folder.chmod(stat.S_IMODE(folder.stat().st_mode) | stat.S_IXGRP)
                continue
            raise ConfigError(
                f"nginx's worker processes run as {user.pw_name!r} ([internal] nginx_user) "
                f"and cannot enter {folder} (mode {stat.S_IMODE(folder.stat().st_mode):04o}) "
                f"on the way to {path}. Let them in with `chmod o+x {folder}` (enter only, "
                "not list), or put the data home where they can reach it (--home)."
            )


def _can_enter(info: os.stat_result, uid: int, groups: set[int]) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)
