"""The last backup's result, kept in ``HOME/run/backup-status.json`` for status and doctor.

The record is a JSON object: ``finished`` (ISO 8601, UTC), ``finished_unix`` (seconds),
``ok`` (bool), ``dest``, ``snapshot`` (its name, or null), ``files``, ``bytes_copied``,
``seconds`` and ``error`` (null when ok).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.config import Settings
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


def next_backup(settings: Settings, now: datetime | None = None) -> datetime | None:
    """When the daily backup runs next (UTC), or None when ``[backup] destination`` is off."""
    if not settings.backup.destination:
        return None
    now = now or datetime.now(UTC)
    hour, minute = settings.backup.hour_minute
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


def backup_summary(settings: Settings) -> dict[str, Any]:
    """The last backup (with its age) and the daily schedule: what `status` and the System
    page show. ``daily`` is None when the daily backup is off."""
    last = read_status(settings.layout)
    upcoming = next_backup(settings)
    daily = (
        None
        if upcoming is None
        else {
            "destination": settings.backup.destination,
            "time_utc": settings.backup.time,
            "next": upcoming.isoformat(timespec="seconds"),
            "keep_daily": settings.backup.keep_daily,
            "keep_weekly": settings.backup.keep_weekly,
            "remote": settings.backup.remote or None,
        }
    )
    age = None if last is None else round(max(0.0, time.time() - float(last["finished_unix"])))
    return {"last": last, "age_s": age, "daily": daily}
