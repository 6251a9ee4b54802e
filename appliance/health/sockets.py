"""Listening TCP sockets from ``/proc`` and the ones the appliance's processes own."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = "0A"  # the kernel's TCP_LISTEN state in /proc/net/tcp{,6}


@dataclass(frozen=True)
class Listener:
    """One listening socket: address, port and the socket's inode."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it (127.0.0.0/8, ::1, ::ffff:127.x)."""
        mapped = getattr(self.address, "ipv4_mapped", None)
        return self.address.is_loopback or bool(mapped and mapped.is_loopback)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def _address(hex_text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``/proc/net/tcp``'s address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_text)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listeners(proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening TCP socket of this network namespace (IPv4 and IPv6)."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except FileNotFoundError:  # a kernel without IPv6
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == TCP_LISTEN:
                host, port = fields[1].split(":")
                found.append(Listener(_address(host), int(port, 16), int(fields[9])))
    return found


def _children(proc: Path) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(roots: list[int], proc: Path) -> Iterator[int]:
    tree = _children(proc)
    todo = list(roots)
    while todo:
        pid = todo.pop()
        yield pid
        todo.extend(tree.get(pid, []))


def owned_inodes(state_file: Path, proc: Path = Path("/proc")) -> set[int] | None:
    """Socket inodes of the supervised services and their children; ``None`` when no
    supervisor state exists (services run apart, as in the cloud profile)."""
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    roots = [c["pid"] for c in state.get("children", {}).values() if c.get("pid")]
    inodes = set()
    for pid in _descendants(roots, proc):
        fd_dir = proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:  # ended, or another user's process
            continue
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes
