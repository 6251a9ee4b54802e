"""Before anything starts: every port ``neuronova run`` will listen on must be free.

A taken port used to show only as a child retried five times and given up on, with the
cause in that program's own log. Checked here first, it stops the start at once with the
port, the setting that names it and, where ``/proc`` tells, the program holding it.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from appliance.config import FIELDS, Settings
from appliance.errors import PortInUseError
from appliance.health.sockets import listeners


@dataclass(frozen=True)
class PlannedListener:
    """One address and port the appliance will listen on, and the setting behind it."""

    attr: str
    host: str
    port: int


def planned_listeners(settings: Settings) -> list[PlannedListener]:
    """The listeners of an all-in-one ``neuronova run``: public ones, then internal ones."""
    public = [(attr, settings.bind) for attr in ("http_port", "https_port", "dicom_port")]
    internal = [
        (attr, settings.internal_listen) for attr in ("app_port", "gate_port", "orthanc_port")
    ]
    return [
        PlannedListener(attr, host, getattr(settings, attr)) for attr, host in public + internal
    ]


def port_is_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind ``host``:``port`` now (TIME_WAIT does not count)."""
    host = "0.0.0.0" if host in ("", "*") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def holder_of(port: int, proc: Path = Path("/proc")) -> str | None:
    """``"name (pid N)"`` of a process listening on ``port``, when ``/proc`` lets us see it."""
    inodes = {listener.inode for listener in listeners(proc) if listener.port == port}
    if not inodes:
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and _owns_any(entry, inodes):
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            return f"{name} (pid {entry.name})"
    return None


def _owns_any(process: Path, inodes: set[int]) -> bool:
    try:
        fds = os.listdir(process / "fd")
    except OSError:  # ended, or another user's process
        return False
    for fd in fds:
        try:
            target = os.readlink(process / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            return True
    return False


def require_free_ports(settings: Settings) -> None:
    """Raise :class:`PortInUseError` naming the first planned port that is taken."""
    settings_by_attr = {field.attr: field for field in FIELDS}
    for planned in planned_listeners(settings):
        if port_is_free(planned.host, planned.port):
            continue
        field = settings_by_attr[planned.attr]
        holder = holder_of(planned.port)
        held_by = f" by {holder}" if holder else " by another program"
        raise PortInUseError(
            f"port {planned.port} on {planned.host} ([{field.section}] {field.key}) is "
            f"already in use{held_by}. Stop that program, or set [{field.section}] "
            f"{field.key} in neuronova.toml (or {field.env_var}) to a free port."
        )
