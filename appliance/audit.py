"""The audit trail: every security event, one row each, readable by admins."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from appliance.users import now_iso

LOGIN_OK = "login_ok"
LOGIN_FAILED = "login_failed"
LOGIN_THROTTLED = "login_throttled"
LOGOUT = "logout"
TOKEN_REJECTED = "token_rejected"
ROLE_DENIED = "role_denied"
CSRF_REJECTED = "csrf_rejected"
REFRESH_REUSED = "refresh_reused"
ADMIN_CHANGE = "admin_change"
SHARE_CREATED = "share_created"
SHARE_REVOKED = "share_revoked"
EVENTS = (
    LOGIN_OK,
    LOGIN_FAILED,
    LOGIN_THROTTLED,
    LOGOUT,
    TOKEN_REJECTED,
    ROLE_DENIED,
    CSRF_REJECTED,
    REFRESH_REUSED,
    ADMIN_CHANGE,
    SHARE_CREATED,
    SHARE_REVOKED,
)


def record(
    db: sqlite_utils.Database,
    event: str,
    *,
    username: str | None = None,
    client: str | None = None,
    **detail: Any,
) -> None:
    """Append one event; ``detail`` is stored as JSON (never put a secret in it)."""
    db["audit"].insert(
        {
            "ts": now_iso(),
            "event": event,
            "username": username,
            "client": client,
            "detail": json.dumps(detail, sort_keys=True) if detail else None,
        }
    )


def iso_ago(seconds: float) -> str:
    """The ISO timestamp ``seconds`` ago."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


def recent(
    db: sqlite_utils.Database,
    *,
    since: str | None = None,
    event: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest events first, optionally since an ISO time and of one kind."""
    where, args = [], []
    if since:
        where.append("ts >= ?")
        args.append(since)
    if event:
        where.append("event = ?")
        args.append(event)
    rows = db["audit"].rows_where(
        " AND ".join(where) or None, args, order_by="id desc", limit=limit
    )
    return [{**row, "detail": json.loads(row["detail"]) if row["detail"] else {}} for row in rows]


def failures_since(db: sqlite_utils.Database, column: str, value: str, since: str) -> list[str]:
    """Timestamps of failed logins by ``username`` or ``client`` since ``since``, oldest first."""
    assert column in ("username", "client")
    rows = db.execute(
        f"SELECT ts FROM audit WHERE event = ? AND {column} = ? AND ts >= ? ORDER BY ts",
        [LOGIN_FAILED, value, since],
    ).fetchall()
    return [row[0] for row in rows]
