"""The allow-list of modalities (calling AE titles, optionally pinned to an address).

While the list is empty the receiver accepts any caller ("open"), so a fresh install
works at once; ``status`` and the health report say so until the first one is added.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import sqlite_utils

from appliance.db import now_iso
from appliance.errors import ApplianceError

AE_TITLE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


class ModalityError(ApplianceError):
    """An invalid allow-list change."""


def validate_ae_title(ae_title: str) -> str:
    """An AE title: 1-16 printable ASCII characters, no backslash (PS3.5 6.2)."""
    if not AE_TITLE_RE.match(ae_title):
        raise ModalityError(
            f"invalid AE title {ae_title!r}: use 1-16 printable ASCII characters, no backslash"
        )
    return ae_title


def add_modality(
    db: sqlite_utils.Database, ae_title: str, host: str | None = None, description: str = ""
) -> dict[str, Any]:
    """Register a calling AE title; ``host`` restricts it to one IP address."""
    validate_ae_title(ae_title)
    if host:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ModalityError(f"invalid host {host!r}: give an IP address") from None
    if db["modalities"].count_where("ae_title = ?", [ae_title]):
        raise ModalityError(f"modality {ae_title} is already registered")
    row = {
        "ae_title": ae_title,
        "host": host or None,
        "description": description[:200],
        "created_at": now_iso(),
    }
    db["modalities"].insert(row)
    return row


def remove_modality(db: sqlite_utils.Database, ae_title: str) -> None:
    """Unregister a calling AE title."""
    if not db["modalities"].count_where("ae_title = ?", [ae_title]):
        raise ModalityError(f"no modality {ae_title!r} (see `neuronova modality list`)")
    db["modalities"].delete(ae_title)


def list_modalities(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every registered modality, by AE title."""
    return list(db["modalities"].rows_where(order_by="ae_title"))


def caller_allowed(modalities: list[dict[str, Any]], ae_title: str, address: str) -> str | None:
    """``None`` if this caller may associate, else the reason it may not."""
    if not modalities:
        return None
    for row in modalities:
        if row["ae_title"] == ae_title:
            if row["host"] and row["host"] != address:
                return f"AE title {ae_title} is registered for {row['host']}, not {address}"
            return None
    return f"AE title {ae_title!r} is not on the modality allow-list"
