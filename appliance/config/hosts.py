"""Host names in settings: what is one, and which name this machine's loopback."""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


def is_host_name(text: str) -> bool:
    """Whether ``text`` is a DNS host name (or ``*.`` wildcard), safe in nginx's config."""
    return len(text) <= 253 and bool(_HOST_NAME.match(text.lower()))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (``localhost`` or 127.0.0.0/8)."""
    return host == "localhost" or host.startswith("127.")
