"""Deleting a study: Orthanc's copy and everything derived from it.

Order, chosen so that a failure leaves either the whole study or none of it:

1. a row in ``deleting`` marks the study: from then on the receiver and STOW-RS hold any
   new object of it (``neuronova held``) instead of journaling it, and the queue's
   workers no longer claim its waiting objects;
2. objects a worker is storing right now are waited for (at most :data:`DRAIN_TIMEOUT`);
3. Orthanc deletes the study (if Orthanc is down, nothing else has changed);
4. the journal's rows (instances, series, the worklist's study, held objects) go in one
   transaction, then the frame files and JPEGs, then the spool files still waiting;
5. the mark is removed: a study sent again afterwards is a new arrival.

A queued task of a deleted object finds no journal row and does nothing. A JPEG task
already running writes only into an existing instance directory (``write_images``), and
the study's directory is renamed away in one step, so it cannot bring files back
(``test_a_jpeg_task_racing_a_deletion_writes_nothing_back``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlite_utils

from appliance.config import Settings
from appliance.db import now_iso
from appliance.errors import ApplianceError
from appliance.fhir.push import mark_deleted
from appliance.ingest.journal import PROCESSING, Journal
from appliance.security import audit
from appliance.store.frame_files import remove_study_files
from appliance.store.orthanc import OrthancRejected, OrthancStore, OrthancUnavailable
from appliance.uids import is_valid_uid

DRAIN_TIMEOUT = 30.0  # seconds to wait for objects of the study a worker is storing


class StudyNotFound(ApplianceError):
    """Neither the worklist nor Orthanc knows the study."""


class StudyDeletionError(ApplianceError):
    """The study could not be deleted now (being deleted, busy, Orthanc down); try again."""


@dataclass(frozen=True)
class DeletedStudy:
    """What one deletion removed."""

    study_uid: str
    patient_id: str
    patient_name: str
    instances: int
    bytes_freed: int
    seconds: float


def delete_study(
    settings: Settings, journal: Journal, study_uid: str, username: str, client: str | None = None
) -> DeletedStudy:
    """Delete a study everywhere (see the module's docstring) and audit it.

    Raises
    ------
    ValueError
        ``study_uid`` is not a valid UID.
    StudyNotFound
        Nothing of the study exists.
    StudyDeletionError
        Another deletion of it is running, a worker kept storing it, or Orthanc failed.
    """
    if not is_valid_uid(study_uid):
        raise ValueError(f"not a valid StudyInstanceUID: {study_uid!r}")
    started = time.monotonic()
    _mark(journal, study_uid, username)
    try:
        _drain(journal, study_uid)
        in_orthanc = _delete_in_orthanc(settings, study_uid)
        patient, spool_files, instances = _forget(journal, study_uid)
        freed = remove_study_files(settings.layout.frames_dir, study_uid)
        for name in spool_files:
            settings.layout.spool_file(name).unlink(missing_ok=True)
    finally:
        with journal.transaction() as db:
            db.execute("DELETE FROM deleting WHERE study_uid = ?", [study_uid])
    if patient is None and not in_orthanc and not freed:
        raise StudyNotFound(f"no study {study_uid} in the archive")
    result = DeletedStudy(study_uid, *(patient or ("", "")), instances, freed,
                          round(time.monotonic() - started, 3))  # fmt: skip
    with journal.transaction() as db:
        _audit(db, result, username, client)
    return result


def _mark(journal: Journal, study_uid: str, username: str) -> None:
    with journal.transaction() as db:
        inserted = db.execute(
            "INSERT OR IGNORE INTO deleting (study_uid, username, started_at) VALUES (?, ?, ?)",
            [study_uid, username, now_iso()],
        ).rowcount
    if not inserted:
        raise StudyDeletionError(f"study {study_uid} is being deleted already")


def _drain(journal: Journal, study_uid: str) -> None:
    """Wait until no worker is storing an object of the study (none can start now)."""

    def busy() -> int:
        return journal.read(
            lambda db: db.execute(
                "SELECT count(*) FROM instances WHERE study_uid = ? AND state = ?",
                [study_uid, PROCESSING],
            ).fetchone()[0]
        )

    deadline = time.monotonic() + DRAIN_TIMEOUT
    while busy():
        if time.monotonic() > deadline:
            raise StudyDeletionError(
                f"a worker is still storing objects of study {study_uid}; try again in a "
                "minute (if the appliance is stopped, start it once: it recovers them)"
            )
        time.sleep(0.1)


def _delete_in_orthanc(settings: Settings, study_uid: str) -> bool:
    try:
        return OrthancStore(settings).delete_study(study_uid)
    except (OrthancUnavailable, OrthancRejected) as exc:
        raise StudyDeletionError(
            f"Orthanc did not delete study {study_uid} ({exc}); nothing was removed, try again"
        ) from exc


def _forget(journal: Journal, study_uid: str) -> tuple[tuple[str, str] | None, list[str], int]:
    """Remove the study's journal rows; returns its patient (ID, name), the spool files
    still waiting or held, and how many instances it had."""
    with journal.transaction() as db:
        row = db.execute(
            "SELECT patient_id, patient_name FROM studies WHERE study_uid = ?", [study_uid]
        ).fetchone()
        waiting = db.execute(
            "SELECT spool_path FROM instances WHERE study_uid = ? AND state != 'stored' "
            "UNION ALL SELECT spool_path FROM held WHERE study_uid = ?",
            [study_uid, study_uid],
        )
        spool = [r[0] for r in waiting.fetchall()]
        count = db.execute(
            "SELECT count(*) FROM instances WHERE study_uid = ?", [study_uid]
        ).fetchone()[0]
        for table in ("instances", "series", "studies", "held"):
            db.execute(f"DELETE FROM {table} WHERE study_uid = ?", [study_uid])
        mark_deleted(db, study_uid)  # the clinic's FHIR server forgets it too
    patient = (row[0] or "", row[1] or "") if row else None
    return patient, spool, count


def _audit(db: sqlite_utils.Database, done: DeletedStudy, username: str,
           client: str | None) -> None:  # fmt: skip
    audit.record(
        db,
        audit.STUDY_DELETED,
        username=username,
        client=client,
        study_uid=done.study_uid,
        patient_id=done.patient_id,
        patient_name=done.patient_name,
        instances=done.instances,
        bytes_freed=done.bytes_freed,
    )
