"""Push each stored or updated study to a clinic's FHIR server (``[fhir] push_url``).

The worker marks a study changed when one of its objects is stored
(:func:`mark_stored`); the first mark of a quiet study queues one push task, later
marks only bump the study's generation, so a 300-slice series costs a handful of pushes,
not 300. A push is a conditional update on the Study Instance UID
(``PUT ImagingStudy?identifier=urn:dicom:uid|urn:oid:<UID>``): the server creates the
resource once and updates it after; a pushed study that is deleted here is deleted there
(``DELETE`` on the same URL, state ``gone``). Transient failures (unreachable, 5xx, 429)
are retried with backoff; a refusal (another 4xx) or too many attempts leave the study
``failed`` with the reason. A periodic sweep queues pushes that are overdue (a deletion,
a queue entry lost in a crash). Every study's state is a row of ``fhir_push``
(:func:`push_status` sums it up for the System page).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import sqlite_utils

from appliance.config import Settings
from appliance.db import Transactions, now_iso
from appliance.fhir.assemble import pushed_imaging_study
from appliance.fhir.resources import DICOM_UID_SYSTEM, FHIR_JSON
from appliance.fhir.tasks import SETTLE
from appliance.public_origin import public_origin
from appliance.security.keys import read_secret

log = logging.getLogger("neuronova.fhir")
PENDING, PUSHED, FAILED, GONE = "pending", "pushed", "failed", "gone"
SWEEP_GRACE = 60.0  # seconds a pending push may be overdue before the sweep queues it
SWEEP_LIMIT = 500
MAX_ATTEMPTS = 10
BACKOFF_BASE, BACKOFF_CAP = 5.0, 600.0
TIMEOUT = 30
MAX_ERROR = 500


@dataclass(frozen=True)
class PushOutcome:
    """What a push task did: its state, and when to run again (``None``: do not)."""

    state: str
    retry_in: float | None = None


def _iso_in(seconds: float) -> str:
    """The UTC time ``seconds`` from now, in the database's ISO 8601 form."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


def mark_stored(db: sqlite_utils.Database, sop_uid: str) -> str | None:
    """Mark the study of a just-stored instance changed; returns its Study Instance UID
    when a push task must be queued (none is pending for it yet), else ``None``."""
    row = db.execute("SELECT study_uid FROM instances WHERE sop_uid = ?", [sop_uid]).fetchone()
    if row is None:
        return None
    study_uid = row[0]
    before = db.execute("SELECT state FROM fhir_push WHERE study_uid = ?", [study_uid]).fetchone()
    db.execute(
        "INSERT INTO fhir_push (study_uid, state, generation, attempts, due_at) "
        "VALUES (?, 'pending', 1, 0, ?) ON CONFLICT (study_uid) DO UPDATE SET "
        "generation = generation + 1, state = 'pending', "
        "due_at = CASE WHEN state = 'pending' THEN due_at ELSE excluded.due_at END, "
        "attempts = CASE WHEN state = 'pending' THEN attempts ELSE 0 END",
        [study_uid, _iso_in(SETTLE)],
    )
    return study_uid if before is None or before[0] != PENDING else None


def mark_deleted(db: sqlite_utils.Database, study_uid: str) -> None:
    """Note the deletion of a study (in the deletion's transaction): one that was pushed
    is deleted from the FHIR server too (the sweep queues it); otherwise it is forgotten."""
    db.execute(
        "UPDATE fhir_push SET state = 'pending', generation = generation + 1, attempts = 0, "
        "due_at = ? WHERE study_uid = ? AND pushed_at IS NOT NULL",
        [now_iso(), study_uid],
    )
    db.execute("DELETE FROM fhir_push WHERE study_uid = ? AND pushed_at IS NULL", [study_uid])


def overdue_pushes(db: sqlite_utils.Database) -> list[str]:
    """Pending studies whose push should have run :data:`SWEEP_GRACE` seconds ago (a
    deletion, a queue entry lost in a crash); each is due again a grace period later, so
    one sweep a minute queues a study at most once while its task waits in a backlog."""
    rows = db.execute(
        "SELECT study_uid FROM fhir_push WHERE state = 'pending' AND due_at < ? LIMIT ?",
        [_iso_in(-SWEEP_GRACE), SWEEP_LIMIT],
    )
    studies = [r[0] for r in rows.fetchall()]
    db.execute(
        f"UPDATE fhir_push SET due_at = ? WHERE study_uid IN ({', '.join('?' for _ in studies)})",
        [_iso_in(SWEEP_GRACE), *studies],
    )
    return studies


def push_status(db: sqlite_utils.Database, failures: int = 20) -> dict[str, Any]:
    """Studies by push state, and the latest failures with their reasons."""
    counts = dict(db.execute("SELECT state, count(*) FROM fhir_push GROUP BY state").fetchall())
    failed = list(
        db.query(
            "SELECT study_uid, attempts, error, status, due_at FROM fhir_push "
            "WHERE state = 'failed' OR (state = 'pending' AND error IS NOT NULL) "
            "ORDER BY due_at DESC LIMIT ?",
            [failures],
        )
    )
    return {"counts": counts, "failures": failed}


def conditional_url(push_url: str, study_uid: str) -> str:
    """``<base>/ImagingStudy?identifier=urn:dicom:uid|urn:oid:<UID>``."""
    token = quote(f"{DICOM_UID_SYSTEM}|urn:oid:{study_uid}", safe=":")
    return f"{push_url.rstrip('/')}/ImagingStudy?identifier={token}"


def push_authorization(settings: Settings) -> str | None:
    """The ``Authorization`` header value for ``push_url`` (e.g. ``Bearer <token>``) from
    ``HOME/secrets/fhir-push-authorization`` (``neuronova config fhir-push-authorization``);
    ``None`` without that file. Kept out of the settings so that ``config show`` never
    prints it; refused unless only its owner can read it (:class:`PushFailed`, not
    retried)."""
    path = settings.layout.fhir_push_authorization_file
    try:
        if path.stat().st_mode & 0o077:
            raise PushFailed(0, False, f"{path} must be readable by its owner only (chmod 600)")
        return read_secret(path) or None
    except FileNotFoundError:
        return None


class PushFailed(Exception):
    """A push the server did not accept: HTTP ``status`` (0: no answer), whether retrying
    may help, and the reason."""

    def __init__(self, status: int, transient: bool, reason: str) -> None:
        super().__init__(reason)
        self.status, self.transient = status, transient


class Pusher:
    """Pushes studies of one data home's index to ``[fhir] push_url``."""

    def __init__(self, settings: Settings, journal: Transactions) -> None:
        """``journal`` runs the transactions on the app database (the ingest journal)."""
        self.settings, self.journal = settings, journal

    def instance_stored(self, sop_uid: str) -> str | None:
        """:func:`mark_stored` for a stored instance (nothing when ``[fhir] push_url`` is
        off); the study whose push task to queue, if any."""
        if not self.settings.fhir.push_url:
            return None
        with self.journal.transaction() as db:
            return mark_stored(db, sop_uid)

    def overdue(self) -> list[str]:
        """:func:`overdue_pushes` (none when ``[fhir] push_url`` is off)."""
        if not self.settings.fhir.push_url:
            return []
        with self.journal.transaction() as db:
            return overdue_pushes(db)

    def push(self, study_uid: str) -> PushOutcome:
        """Push one study if it is pending; safe to run twice for the same study."""
        with self.journal.transaction() as db:
            row = db.execute(
                "SELECT state, generation, attempts FROM fhir_push WHERE study_uid = ?",
                [study_uid],
            ).fetchone()
        if row is None or row[0] != PENDING:
            return PushOutcome("skipped")
        _, generation, attempts = row
        origin, system = public_origin(self.settings), self.settings.smart.identifier_system
        with self.journal.transaction() as db:
            resource = pushed_imaging_study(db, study_uid, system, origin)
        try:
            status = self._send(study_uid, resource)
        except PushFailed as exc:
            return self._failed(study_uid, attempts + 1, exc)
        return self._pushed(study_uid, generation, status, deleted=resource is None)

    def _send(self, study_uid: str, resource: dict[str, Any] | None) -> int:
        """PUT the resource, or DELETE it from the server when the study is gone."""
        headers = {"Accept": FHIR_JSON}
        if resource is not None:
            headers["Content-Type"] = FHIR_JSON
        authorization = push_authorization(self.settings)
        if authorization:
            headers["Authorization"] = authorization
        request = urllib.request.Request(
            conditional_url(self.settings.fhir.push_url, study_uid),
            data=json.dumps(resource).encode() if resource is not None else None,
            headers=headers,
            method="PUT" if resource is not None else "DELETE",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and resource is None:
                return exc.code  # nothing to delete there: done
            reason = f"HTTP {exc.code}: {_diagnostics(exc.read(64 * 1024))}"
            transient = exc.code >= 500 or exc.code in (408, 429)
            raise PushFailed(exc.code, transient, reason) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise PushFailed(0, True, f"the FHIR server is unreachable ({exc})") from None

    def _pushed(self, study_uid: str, generation: int, status: int, deleted: bool) -> PushOutcome:
        """Done, unless the study changed during the push: then push it again."""
        done = GONE if deleted else PUSHED

        with self.journal.transaction() as db:
            db.execute(
                "UPDATE fhir_push SET state = CASE WHEN generation = ? THEN ? ELSE 'pending' "
                "END, attempts = 0, error = NULL, status = ?, pushed_at = ?, due_at = ? "
                "WHERE study_uid = ?",
                [generation, done, status, now_iso(), _iso_in(SETTLE), study_uid],
            )
            row = db.execute("SELECT state FROM fhir_push WHERE study_uid = ?", [study_uid])
            state = row.fetchone()[0]
        log.info(
            "%s ImagingStudy %s (HTTP %d)", "deleted" if deleted else "pushed", study_uid, status
        )
        return PushOutcome(state, retry_in=SETTLE if state == PENDING else None)

    def _failed(self, study_uid: str, attempts: int, exc: PushFailed) -> PushOutcome:
        give_up = not exc.transient or attempts >= MAX_ATTEMPTS
        delay = min(BACKOFF_BASE * 2 ** (attempts - 1), BACKOFF_CAP)
        state = FAILED if give_up else PENDING
        with self.journal.transaction() as db:
            db.execute(
                "UPDATE fhir_push SET state = ?, error = ?, status = ?, attempts = ?, "
                "due_at = ? WHERE study_uid = ?",
                [state, str(exc)[:MAX_ERROR], exc.status, attempts, _iso_in(delay), study_uid],
            )
        if give_up:
            log.error("FHIR push of %s failed after %d attempt(s): %s", study_uid, attempts, exc)
            return PushOutcome(FAILED)
        log.warning("FHIR push of %s: %s; retrying in %.0f s", study_uid, exc, delay)
        return PushOutcome(PENDING, retry_in=delay)


def _diagnostics(body: bytes) -> str:
    """The first issue's diagnostics of an OperationOutcome body, else the body's start."""
    try:
        issue = json.loads(body)["issue"][0]
        return str(issue.get("diagnostics") or issue.get("details", {}).get("text") or issue)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace")
