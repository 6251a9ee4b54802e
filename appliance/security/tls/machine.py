"""This machine's host names and interface addresses, read locally: no packet is sent."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

_IPV6_LINK_SCOPE = 0x20
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_FIB_TRIE = Path("/proc/net/fib_trie")
_IF_INET6 = Path("/proc/net/if_inet6")


def host_names() -> list[str]:
    """This machine's host name and fully qualified name, without duplicates.

    Returns
    -------
    list[str]
        ``socket.gethostname()`` first, then ``socket.getfqdn()`` if it differs; IP
        addresses and loopback names (``localhost``) are left out.
    """
    names: list[str] = []
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.strip().rstrip(".").lower()
        if name and name not in names and name not in _LOOPBACK_NAMES and not _is_ip(name):
            names.append(name)
    return names


def interface_addresses() -> list[IPAddress]:
    """The addresses of this machine's interfaces, read locally (no packet is sent).

    IPv4 addresses come from ``/proc/net/fib_trie``, IPv6 ones from
    ``/proc/net/if_inet6`` (link-local ones are left out: they need a zone to be used).
    Where ``/proc`` is not available the host name is resolved instead.

    Returns
    -------
    list[IPv4Address | IPv6Address]
        Loopback addresses included, without duplicates, in the order found.
    """
    found = _ipv4_from_fib_trie(_read_text(_FIB_TRIE)) + _ipv6_from_if_inet6(_read_text(_IF_INET6))
    if not found:
        found = _addresses_of_hostname()
    return unique(found)


def unique(items: Iterable[T]) -> list[T]:
    """``items`` without duplicates, each kept where it first appears."""
    return list(dict.fromkeys(items))


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _ipv4_from_fib_trie(text: str) -> list[IPAddress]:
    """Local host addresses (``/32 host LOCAL`` entries) of a ``fib_trie`` dump."""
    found: list[IPAddress] = []
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:].strip()
        elif stripped.startswith("/32 host LOCAL") and last:
            found.append(ipaddress.IPv4Address(last))
    return found


def _ipv6_from_if_inet6(text: str) -> list[IPAddress]:
    """Non-link-local addresses of an ``if_inet6`` dump."""
    found: list[IPAddress] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or len(parts[0]) != 32:
            continue
        if int(parts[3], 16) & 0xF0 == _IPV6_LINK_SCOPE:
            continue
        found.append(ipaddress.IPv6Address(int(parts[0], 16)))
    return found


def _addresses_of_hostname() -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return []
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_link_local:
            found.append(address)
    return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
