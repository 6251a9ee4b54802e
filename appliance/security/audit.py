"""The audit trail: security events and reads of patient data, readable by admins.

Most events are one row each. Two kinds are aggregated so that a busy viewer or a flood
cannot fill the disk: rejections (one row per event, reason, user and client per minute,
with a count) and reads of patient data (:class:`ReadLedger`: the first read of each
study by each session or share; QIDO searches once per session, level and filters per
hour, with a count). A repeated row moves to the end of the trail, so ``id`` order is the
order of latest activity.

Stored text is kept as received; :func:`escape` makes it safe to print (the CLI table and
the CSV export use it), so a name with a newline cannot forge a line of output.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from appliance import metrics
from appliance.db import now_iso, transaction

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
SHARE_OPENED = "share_opened"
STUDY_READ = "study_read"
STUDY_QUERY = "study_query"
OBJECT_HELD = "object_held"  # the DICOM receiver's overwrite policy refused an object
STUDY_DELETED = "study_deleted"  # an admin deleted a study (or a retention rule did)
SSO_LOGIN = "sso_login"  # signed in through the OpenID Connect provider
SSO_REFUSED = "sso_refused"
SMART_LAUNCH = "smart_launch"  # opened from an EHR (SMART App Launch)
SMART_REFUSED = "smart_refused"
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
    SHARE_OPENED,
    STUDY_READ,
    STUDY_QUERY,
    OBJECT_HELD,
    STUDY_DELETED,
    SSO_LOGIN,
    SSO_REFUSED,
    SMART_LAUNCH,
    SMART_REFUSED,
)
# Rejections anyone can send in bulk: one row per (event, reason, user, client) and window.
# Failed logins stay one row each: the login throttle (appliance.security.sessions) bounds them.
RATE_AGGREGATED = frozenset(
    {TOKEN_REJECTED, ROLE_DENIED, CSRF_REJECTED, LOGIN_THROTTLED, SSO_REFUSED, SMART_REFUSED}
)
RATE_WINDOW = 60  # seconds
# Events counted in /api/metrics as authentication failures, by event and reason.
AUTH_FAILURES = frozenset(
    {
        LOGIN_FAILED,
        LOGIN_THROTTLED,
        TOKEN_REJECTED,
        ROLE_DENIED,
        CSRF_REJECTED,
        REFRESH_REUSED,
        SSO_REFUSED,
        SMART_REFUSED,
    }
)
QUERY_WINDOW = 3600  # seconds: one row per session, QIDO level and filters
SHARE_OPEN_WINDOW = 3600  # seconds: one row per share link and client address
MAX_REMEMBERED = 100_000  # (reader, study, access) keys a process keeps in memory
MAX_TEXT = 500  # characters of free text (QIDO filters) kept
EXPORT_COLUMNS = (
    "id",
    "ts",
    "last_ts",
    "count",
    "event",
    "username",
    "client",
    "study_uid",
    "patient_id",
    "detail",
)

_UPSERT = (
    "INSERT INTO audit (ts, last_ts, count, event, username, client, study_uid, patient_id, "
    "detail, dedupe) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe) DO "
)
_ADD_TO_COUNT = _UPSERT + (
    "UPDATE SET count = count + 1, last_ts = excluded.last_ts, detail = excluded.detail, "
    "id = (SELECT max(id) + 1 FROM audit)"
)
_KEEP_FIRST = _UPSERT + "NOTHING"


def record(
    db: sqlite_utils.Database,
    event: str,
    *,
    username: str | None = None,
    client: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    key: str | None = None,
    once: bool = False,
    **detail: Any,
) -> None:
    """Append one event; ``detail`` is stored as JSON (never put a secret in it).

    An event with the ``key`` of an earlier row adds to that row's count (its detail
    becomes the latest one's) or, with ``once``, is dropped. Events of
    :data:`RATE_AGGREGATED` kinds get a per-minute key of their own. The row and an
    authentication failure's count are written in one transaction, or in the one already
    open on ``db``.
    """
    if key is None and event in RATE_AGGREGATED:
        key = window_key(RATE_WINDOW, event, detail.get("reason"), username, client)
    now = now_iso()
    text = json.dumps(detail, sort_keys=True) if detail else None
    with transaction(db):
        db.execute(
            _KEEP_FIRST if once else _ADD_TO_COUNT,
            [now, now, event, username, client, study_uid, patient_id, text, key],
        )
        if event in AUTH_FAILURES:
            reason = str(detail.get("reason") or event)[:64]
            metrics.add(db, {metrics.key("auth_failures_total", event=event, reason=reason): 1})


def window_key(seconds: int, *parts: str | None) -> str:
    """A row key for ``parts`` in the current window of ``seconds``."""
    return json.dumps([seconds, int(time.time() // seconds), *parts])


def patient_of(db: sqlite_utils.Database, study_uid: str) -> tuple[str | None, str | None]:
    """The patient ID and name of a received study (from the worklist), or ``None``s."""
    row = db.execute(
        "SELECT patient_id, patient_name FROM studies WHERE study_uid = ?", [study_uid]
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


class ReadLedger:
    """The first read of each study by each session or share, as one ``study_read`` row.

    Reads are looked up in memory first, so the frame gate's hot path pays one dict
    lookup per frame. The first time, the row is written with a unique key, so the app
    processes (each with a ledger of its own) write one row between them. At most
    ``size`` keys are kept; the oldest are forgotten, and the key in the database still
    stops a second row.
    """

    def __init__(self, db: sqlite_utils.Database, size: int = MAX_REMEMBERED) -> None:
        self.db = db
        self.size = size
        self._seen: dict[tuple[str, str, str], None] = {}

    def read(
        self,
        reader: str,
        study_uid: str,
        access: str,
        *,
        username: str,
        client: str,
        **detail: Any,
    ) -> None:
        """Record ``reader``'s (a session's or a share's) first ``access`` of a study.

        ``access`` is ``view`` (metadata, frames, images) or ``download`` (whole
        studies, series or instances).
        """
        seen = (reader, study_uid, access)
        if seen in self._seen:
            return
        patient_id, patient_name = patient_of(self.db, study_uid)
        record(
            self.db,
            STUDY_READ,
            username=username,
            client=client,
            study_uid=study_uid,
            patient_id=patient_id,
            key=json.dumps([STUDY_READ, *seen]),
            once=True,
            access=access,
            patient_name=patient_name,
            session=reader,
            **detail,
        )
        self._seen[seen] = None
        if len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]


def iso_ago(seconds: float) -> str:
    """The ISO timestamp ``seconds`` ago."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


DURATION_RE = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_iso(text: str) -> str:
    """The ISO time (UTC, seconds) of a duration back from now (``30m``, ``1h``, ``2d``)
    or of an ISO 8601 time (UTC unless it has an offset); :class:`ValueError` if neither.
    """
    text = text.strip()
    if match := DURATION_RE.match(text):
        return iso_ago(int(match[1]) * UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither a duration (45s, 30m, 1h, 2d) nor an ISO time "
            "(2026-01-31 or 2026-01-31T08:00, UTC unless an offset is given)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def recent(
    db: sqlite_utils.Database,
    *,
    since: str | None = None,
    event: str | None = None,
    username: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The events active latest first, optionally since an ISO time and matching filters."""
    where, args = [], []
    if since:
        where.append("coalesce(last_ts, ts) >= ?")
        args.append(since)
    for column, value in (
        ("event", event),
        ("username", username),
        ("study_uid", study_uid),
        ("patient_id", patient_id),
    ):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    rows = db["audit"].rows_where(
        " AND ".join(where) or None,
        args,
        select=", ".join(EXPORT_COLUMNS),
        order_by="id desc",
        limit=limit,
    )
    return [
        {
            **row,
            "last_ts": row["last_ts"] or row["ts"],
            "count": row["count"] or 1,
            "detail": json.loads(row["detail"]) if row["detail"] else {},
        }
        for row in rows
    ]


_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with backslashes and control characters (C0, C1, line separators,
    direction overrides) written as escapes: safe to print on one line."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m[0]) or f"\\u{ord(m[0]):04x}", text)


def _cell(value: Any) -> str:
    """One CSV cell: escaped, and never read as a formula by a spreadsheet."""
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else escape(str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Events as CSV (a header line, then :data:`EXPORT_COLUMNS`; ``detail`` as JSON)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows([_cell(row[column]) for column in EXPORT_COLUMNS] for row in rows)
    return out.getvalue()
