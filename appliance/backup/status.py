"""The last backup's result, kept in ``HOME/run/backup-status.json`` for status and doctor.

The record is a JSON object: ``finished`` (ISO 8601, UTC), ``finished_unix`` (seconds),
``ok`` (bool), ``dest``, ``snapshot`` (its name, or null), ``files``, ``bytes_copied``,
``seconds`` and ``error`` (null when ok).
"""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.db import now_iso
from appliance.layout import HomeLayout
from appliance.security.keys import write_private_file


def write_status(layout: HomeLayout, **fields: Any) -> dict[str, Any]:
    """Record a backup's result (``ok``, ``dest``, ... as above); returns the record."""
    record = {"finished": now_iso(), "finished_unix": time.time(), "error": None, **fields}
    layout.backup_status_file.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(layout.backup_status_file, json.dumps(record, indent=2).encode())
    return record


def read_status(layout: HomeLayout) -> dict[str, Any] | None:
    """The last backup's record, or None if no backup ran (or its record is unreadable)."""
    try:
        return json.loads(layout.backup_status_file.read_text())
    except (OSError, ValueError):
        return None


def backup_age(layout: HomeLayout) -> float | None:
    """Seconds since the last successful backup finished, or None if there was none."""
    record = read_status(layout)
    if not record or not record.get("ok"):
        return None
    return max(0.0, time.time() - float(record["finished_unix"]))
