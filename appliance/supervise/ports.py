"""Before anything starts: every port ``neuronova run`` will listen on must be free.

A taken port used to show only as a child retried five times and given up on, with the
cause in that program's own log. Checked here first:

- an internal port (the app, the frame gate, Orthanc: loopback only, nobody outside
  dials them) left at its default moves to a free one, so a second appliance, or any
  program holding 18042, does not stop this one. The ports in use are recorded in the
  home's run folder (``run/ports.json``), where the CLI and the doctor read them while
  the appliance runs (:func:`live_ports`);
- any other taken port (a public one, or an internal one set on purpose) stops the start
  at once with the port, the setting that names it and, where ``/proc`` tells, the
  program holding it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from appliance.config import DECLARED, Settings
from appliance.errors import PortInUseError
from appliance.health.sockets import listeners
from appliance.security.keys import write_private_file

log = logging.getLogger("neuronova.supervisor")

PUBLIC_PORTS = ("web.http_port", "web.https_port", "dicom.port")
# ``[internal]`` keys; also the keys of ``run/ports.json``.
INTERNAL_PORTS = ("app_port", "gate_port", "orthanc_port")
# Every port setting of an all-in-one appliance, by ``section.key``.
PORT_SETTINGS = (*PUBLIC_PORTS, *(f"internal.{key}" for key in INTERNAL_PORTS))
LOWEST_CHOSEN_PORT = 20000  # chosen ports: above the registered services many boxes run
DEFAULTS = {declared.path: declared.default for declared in DECLARED}


@dataclass(frozen=True)
class PlannedListener:
    """One address and port the appliance will listen on, and the setting behind it."""

    path: str  # section.key
    host: str
    port: int


def planned_listeners(settings: Settings) -> list[PlannedListener]:
    """The listeners of an all-in-one ``neuronova run``: public ones, then internal ones."""
    hosts = {path: settings.network.bind for path in PUBLIC_PORTS}
    hosts |= {f"internal.{key}": settings.internal.listen for key in INTERNAL_PORTS}
    return [PlannedListener(path, host, settings.value(path)) for path, host in hosts.items()]


def port_is_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind ``host``:``port`` now (TIME_WAIT does not count)."""
    host = "0.0.0.0" if host in ("", "*") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_low(proc: Path = Path("/proc")) -> int:
    """The first port of the kernel's ephemeral range (32768 by default).

    The kernel hands ports from that range to outgoing connections, so a port chosen
    there and bound a moment later may have been taken meanwhile; ports below it are
    only ever taken by a program that binds them on purpose.
    """
    try:
        return int((proc / "sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def choose_free_port(host: str, avoid: set[int]) -> int:
    """A port below the ephemeral range that ``host`` can bind now, not one of ``avoid``."""
    candidates = list(range(LOWEST_CHOSEN_PORT, ephemeral_low()))
    random.shuffle(candidates)
    for port in candidates:
        if port not in avoid and port_is_free(host, port):
            return port
    raise PortInUseError(f"no free port on {host} between {LOWEST_CHOSEN_PORT} and the "
                         "kernel's ephemeral range")  # fmt: skip


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


def _taken(planned: PlannedListener, holder: str | None) -> PortInUseError:
    field = next(d for d in DECLARED if d.path == planned.path)
    held_by = f" by {holder}" if holder else " by another program"
    return PortInUseError(
        f"port {planned.port} on {planned.host} ([{field.section}] {field.key}) is "
        f"already in use{held_by}. Stop that program, or set [{field.section}] "
        f"{field.key} in neuronova.toml (or {field.env_var}) to a free port."
    )


def settle_ports(settings: Settings) -> Settings:
    """``settings`` with every port free now, the internal ones recorded in ``run/ports.json``.

    A taken internal port left at its default moves to a free one (logged); any other
    taken port raises :class:`PortInUseError` naming it, its setting and its holder.
    """
    planned = planned_listeners(settings)
    claimed = {listener.port for listener in planned}
    moved: dict[str, int] = {}
    for listener in planned:
        if port_is_free(listener.host, listener.port):
            continue
        holder = holder_of(listener.port)
        section, key = listener.path.split(".")
        if section != "internal" or listener.port != DEFAULTS[listener.path]:
            raise _taken(listener, holder)
        moved[key] = port = choose_free_port(listener.host, claimed)
        claimed.add(port)
        by = f" by {holder}" if holder else ""
        log.warning("internal port %d ([internal] %s) is in use%s; using %d this time",
                    listener.port, key, by, port)  # fmt: skip
    settled = settings.with_values({f"internal.{key}": port for key, port in moved.items()})
    ports = {key: getattr(settled.internal, key) for key in INTERNAL_PORTS}
    write_private_file(settings.layout.ports_file, json.dumps(ports).encode())
    return settled


def live_ports(settings: Settings) -> Settings:
    """``settings`` with the internal ports the running appliance uses, when it runs."""
    layout = settings.layout
    if not _running(layout.lock_file):
        return settings
    try:
        ports = json.loads(layout.ports_file.read_text())
    except (OSError, ValueError):
        return settings
    recorded = {key: ports[key] for key in INTERNAL_PORTS if isinstance(ports.get(key), int)}
    return settings.with_values({f"internal.{key}": port for key, port in recorded.items()})


def _running(lock_file: Path) -> bool:
    """Whether a ``neuronova run`` holds the home's lock (:class:`HomeLock`) now."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
