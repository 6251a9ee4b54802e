"""The ingest journal: every received object's state, and the worklist it feeds.

States: ``received`` (durable in the spool, waiting for the queue), ``processing``
(claimed by a worker), ``stored`` (in Orthanc, frames prepared, spool file removed),
``failed`` (a permanent error; the reason is kept and ``neuronova ingest retry`` re-runs
it). Each task names the spool file it was created for, so a newer copy of the same SOP
Instance UID always wins and an older task finishing late changes nothing. A spool file is
named by its name in the home's spool folder (``spool_path``), never by absolute path, so
a moved home keeps its pending objects (:func:`appliance.layout.spool_name`). Objects the
overwrite policy refuses are ``held`` (their own table, their spool file kept) until an
admin accepts or discards them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

import sqlite_utils
from pydicom import Dataset

from appliance.config import OVERWRITE_POLICIES
from appliance.db import now_iso, open_database, patient_key, transaction
from appliance.ingest.header import QIDO_KEYWORDS, STUDY_KEYWORDS, Received, header_text

RECEIVED, PROCESSING, STORED, FAILED = "received", "processing", "stored", "failed"
# What may replace an archived object: ``never``, ``same-source`` (only the source that
# sent the archived copy, the default) or ``always``. Under the first two an object that
# would change the patient of an archived study is held as well.
NEVER, SAME_SOURCE, ALWAYS = OVERWRITE_POLICIES
T = TypeVar("T")


# Plain SQL on the receiver's hot path: one statement per table, no schema look-ups.
UPSERT_INSTANCE = """
INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class, state, source, spool_path,
                       received_at, updated_at, attempts, ts_in, size_in, number)
VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?, 0, ?, ?, ?)
ON CONFLICT (sop_uid) DO UPDATE SET
    study_uid = excluded.study_uid, series_uid = excluded.series_uid,
    sop_class = excluded.sop_class, state = 'received', source = excluded.source,
    spool_path = excluded.spool_path, received_at = excluded.received_at,
    updated_at = excluded.updated_at, stored_at = NULL, attempts = 0, ts_in = excluded.ts_in,
    error = NULL, size_in = excluded.size_in, action = NULL, ts_out = NULL, reason = NULL,
    size_out = NULL, frames = NULL, images_at = NULL, number = excluded.number
"""
INSERT_SERIES = """
INSERT OR IGNORE INTO series (series_uid, study_uid, modality, description, number, first_sop,
                              body_part)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
UPSERT_STUDY = """
INSERT INTO studies (study_uid, patient_name, patient_id, study_date, study_time, description,
                     accession, modalities, received_at, updated_at, patient_birth_date,
                     patient_sex, patient_key, referring_physician, dicom_study_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (study_uid) DO UPDATE SET
    patient_name = excluded.patient_name, patient_id = excluded.patient_id,
    patient_key = excluded.patient_key,
    study_date = excluded.study_date, study_time = excluded.study_time,
    description = excluded.description, accession = excluded.accession,
    updated_at = excluded.updated_at, patient_birth_date = excluded.patient_birth_date,
    patient_sex = excluded.patient_sex, referring_physician = excluded.referring_physician,
    dicom_study_id = excluded.dicom_study_id,
    modalities = CASE
        WHEN excluded.modalities = ''
          OR instr(',' || coalesce(studies.modalities, '') || ',',
                   ',' || excluded.modalities || ',') > 0
        THEN studies.modalities
        ELSE trim(coalesce(studies.modalities, '') || ',' || excluded.modalities, ',')
    END
"""


INSERT_HELD = """
INSERT INTO held (sop_uid, study_uid, source, spool_path, reason, patient_name, patient_id,
                  size, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def stored_in_series(db: sqlite_utils.Database, series_uid: str) -> set[str]:
    """The SOP Instance UIDs of a series that are stored in Orthanc (``+state`` keeps
    SQLite on the series index: on the state index it read every stored instance of the
    archive, for each instance ingested: 19 ms a call at 50,000, 45% of the worker)."""
    rows = db.execute(
        "SELECT sop_uid FROM instances WHERE series_uid = ? AND +state = ?", [series_uid, STORED]
    )
    return {row[0] for row in rows}


def stored_series(db: sqlite_utils.Database) -> list[tuple[str, str]]:
    """(StudyInstanceUID, SeriesInstanceUID) of every series with a stored instance."""
    rows = db.execute(
        "SELECT DISTINCT study_uid, series_uid FROM instances WHERE state = ? "
        "ORDER BY study_uid, series_uid",
        [STORED],
    )
    return [(row[0], row[1]) for row in rows]


@dataclass(frozen=True)
class Refusal:
    """Why the overwrite policy holds an object back: a short ``comment`` for the sender
    (a DICOM ErrorComment holds 64 characters) and the full ``reason`` for the admin."""

    comment: str
    reason: str


def _refusal(
    db: sqlite_utils.Database, ds: Dataset, item: Received, source: str, policy: str
) -> Refusal | None:
    """What ``policy`` says against journaling this object, or None (an object of a study
    an admin is deleting is always held, so it cannot bring back half of the study)."""
    if db.execute("SELECT 1 FROM deleting WHERE study_uid = ?", [item.study_uid]).fetchone():
        return Refusal(
            "Refused: an admin is deleting this study",
            f"study {item.study_uid} was being deleted by an admin when this object arrived",
        )
    if policy == ALWAYS:
        return None
    row = db.execute("SELECT source FROM instances WHERE sop_uid = ?", [item.sop_uid]).fetchone()
    if row is not None and (policy == NEVER or row[0] != source):
        return Refusal(
            "Refused: the instance is archived from another source",
            f"SOP Instance {item.sop_uid} is archived from {row[0]}; overwrite policy "
            f"{policy} keeps it from being replaced by {source}",
        )
    study = db.execute(
        "SELECT patient_id, patient_name FROM studies WHERE study_uid = ?", [item.study_uid]
    ).fetchone()
    patient = (header_text(ds, "PatientID"), header_text(ds, "PatientName"))
    if study is not None and tuple(study) != patient:
        return Refusal(
            "Refused: patient differs from the archived study's",
            f"study {item.study_uid} is archived for patient ID {study[0]!r}, name "
            f"{study[1]!r}; this object names ID {patient[0]!r}, name {patient[1]!r}",
        )
    return None


class Journal:
    """The journal tables, safe to share between threads (access is serialized)."""

    def __init__(self, path: Path) -> None:
        self.db: sqlite_utils.Database = open_database(path, threads=True)
        # Reentrant: a method called inside ``transaction()`` joins that transaction.
        self._lock = threading.RLock()

    @contextmanager
    def _serialized(self) -> Iterator[sqlite_utils.Database]:
        """The database, used by one thread at a time. Inside ``transaction()`` the block
        joins that transaction; otherwise what it writes is committed when it ends."""
        with self._lock:
            if self.db.conn.in_transaction:
                yield self.db
            else:
                with self.db.conn:  # a write with RETURNING is left open by sqlite-utils
                    yield self.db

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """``with journal.transaction() as db:`` one transaction, serialized with every
        other use of the journal: the block's writes are all committed, or none if it
        raises. ``BEGIN IMMEDIATE`` takes SQLite's write lock first (waiting up to the
        busy timeout), so a block that reads, then writes, never has an outdated snapshot.
        The journal's methods, and a nested block, called in the block join it.
        """
        with self._lock, transaction(self.db) as db:
            yield db

    def read(self, query: Callable[[sqlite_utils.Database], T]) -> T:
        """The result of ``query(db)``, serialized with the journal's other uses (to write,
        use :meth:`transaction`)."""
        with self._serialized() as db:
            return query(db)

    def _update(self, sql: str, args: list[Any]) -> bool:
        with self._serialized() as db:
            return db.execute(sql, args).rowcount == 1

    def record_received(
        self,
        ds: Dataset,
        item: Received,
        spool_path: str,
        source: str,
        size: int,
        policy: str = ALWAYS,
    ) -> Refusal | None:
        """Journal a durable spool file, named ``spool_path`` in the spool folder (a newer
        copy of a SOP replaces the older one).

        Under ``policy`` (see :data:`OVERWRITE_POLICIES`) an object that may not replace
        the archived copy, or would change an archived study's patient, is journaled as
        held instead, in the same transaction as the check, and the refusal returned.
        """
        now = now_iso()
        modality = header_text(ds, "Modality")
        instance = [item.sop_uid, item.study_uid, item.series_uid, item.sop_class, source,
                    spool_path, now, now, item.transfer_syntax, size,
                    header_text(ds, "InstanceNumber")]  # fmt: skip
        series = [item.series_uid, item.study_uid, modality, header_text(ds, "SeriesDescription"),
                  header_text(ds, "SeriesNumber"), item.sop_uid,
                  header_text(ds, "BodyPartExamined")]  # fmt: skip
        study = [item.study_uid, *(header_text(ds, k) for k in STUDY_KEYWORDS), modality, now, now,
                 header_text(ds, "PatientBirthDate"), header_text(ds, "PatientSex"),
                 patient_key(header_text(ds, "PatientID")),
                 *(header_text(ds, k) for k in QIDO_KEYWORDS)]  # fmt: skip
        with self.transaction() as db:
            refusal = _refusal(db, ds, item, source, policy)
            if refusal is not None:
                held = [item.sop_uid, item.study_uid, source, spool_path, refusal.reason,
                        study[1], study[2], size, now]  # fmt: skip
                db.execute(INSERT_HELD, held)
                return refusal
            db.execute(UPSERT_INSTANCE, instance)
            db.execute(INSERT_SERIES, series)
            db.execute(UPSERT_STUDY, study)
        return None

    def held(self) -> list[dict[str, Any]]:
        """The objects the overwrite policy held back, oldest first."""
        with self._serialized() as db:
            return list(db["held"].rows_where(order_by="id"))

    def held_object(self, held_id: int) -> dict[str, Any] | None:
        """One held object's row, or None."""
        with self._serialized() as db:
            rows = list(db["held"].rows_where("id = ?", [held_id]))
        return rows[0] if rows else None

    def forget_held(self, held_id: int) -> None:
        """Remove a held object's row (accepted or discarded)."""
        with self._serialized() as db:
            db.execute("DELETE FROM held WHERE id = ?", [held_id])

    def claim(self, sop_uid: str, spool_path: str) -> bool:
        """Take the object for processing; False if another copy or worker has it, or its
        study is being deleted."""
        return self._update(
            "UPDATE instances SET state = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE sop_uid = ? AND spool_path = ? AND state = ? "
            "AND study_uid NOT IN (SELECT study_uid FROM deleting)",
            [PROCESSING, now_iso(), sop_uid, spool_path, RECEIVED],
        )

    def superseded(self, sop_uid: str, spool_path: str) -> bool:
        """True when a newer copy of this SOP Instance replaced ``spool_path``. Names are
        compared (each copy's is new), never folders: a path journaled in another place
        of the home still names the same file."""
        with self._serialized() as db:
            row = db.execute("SELECT spool_path FROM instances WHERE sop_uid = ?", [sop_uid])
            found = row.fetchone()
        return found is not None and PurePath(found[0]).name != PurePath(spool_path).name

    def release(self, sop_uid: str, spool_path: str, error: str) -> int:
        """Give the object back for a retry; returns its attempt count."""
        with self.transaction() as db:
            db.execute(
                "UPDATE instances SET state = ?, error = ?, updated_at = ? "
                "WHERE sop_uid = ? AND spool_path = ?",
                [RECEIVED, error, now_iso(), sop_uid, spool_path],
            )
            row = db.execute("SELECT attempts FROM instances WHERE sop_uid = ?", [sop_uid])
            return (row.fetchone() or [0])[0]

    def fail(self, sop_uid: str, spool_path: str, error: str) -> None:
        """Mark a permanent failure; the spool file stays for ``ingest retry``."""
        self._update(
            "UPDATE instances SET state = ?, error = ?, updated_at = ? "
            "WHERE sop_uid = ? AND spool_path = ?",
            [FAILED, error[:1000], now_iso(), sop_uid, spool_path],
        )

    def stored(self, sop_uid: str, spool_path: str, **facts: Any) -> bool:
        """Mark the object stored (``facts``: ts_out, action, reason, size_out, frames)."""
        now = now_iso()
        columns = ", ".join(f"{name} = ?" for name in facts)
        return self._update(
            f"UPDATE instances SET state = ?, stored_at = ?, updated_at = ?, error = NULL, "
            f"{columns} WHERE sop_uid = ? AND spool_path = ? AND state = ?",
            [STORED, now, now, *facts.values(), sop_uid, spool_path, PROCESSING],
        )

    def first_of_series(self, sop_uid: str, series_uid: str) -> bool:
        """True when this instance's picture stands for its series (``series.first_sop``)."""
        with self._serialized() as db:
            row = db.execute(
                "SELECT first_sop FROM series WHERE series_uid = ?", [series_uid]
            ).fetchone()
        return row is not None and row[0] == sop_uid

    def images_written(self, sop_uid: str, spool_path: str) -> bool:
        """Record that the rendered and thumbnail JPEGs of this stored copy exist."""
        return self._update(
            "UPDATE instances SET images_at = ? WHERE sop_uid = ? AND spool_path = ? AND state = ?",
            [now_iso(), sop_uid, spool_path, STORED],
        )

    def images_pending_for(self, sop_uid: str, spool_path: str) -> bool:
        """Whether this stored copy of the instance still lacks its JPEGs."""
        with self._serialized() as db:
            row = db.execute(
                "SELECT 1 FROM instances WHERE sop_uid = ? AND spool_path = ? AND state = ? "
                "AND images_at IS NULL",
                [sop_uid, spool_path, STORED],
            ).fetchone()
        return row is not None

    def orthanc_keys(self, sop_uid: str) -> tuple[str, str, str] | None:
        """The instance's PatientID, Study and Series Instance UIDs, which name it in
        Orthanc (:func:`appliance.store.orthanc.instance_id`); None if unknown."""
        with self._serialized() as db:
            row = db.execute(
                "SELECT s.patient_id, i.study_uid, i.series_uid FROM instances AS i "
                "JOIN studies AS s USING (study_uid) WHERE i.sop_uid = ?",
                [sop_uid],
            ).fetchone()
        return None if row is None or row[0] is None else tuple(row)

    def images_pending(self, limit: int) -> list[tuple[str, str]]:
        """(sop_uid, spool_path) of up to ``limit`` stored objects whose JPEGs are still
        to be written (an index holds just those)."""
        with self._serialized() as db:
            rows = db.execute(
                "SELECT sop_uid, spool_path FROM instances WHERE state = ? AND frames > 0 "
                "AND images_at IS NULL LIMIT ?",
                [STORED, limit],
            )
            return [(r[0], r[1]) for r in rows.fetchall()]

    def reset_interrupted(self) -> int:
        """After a crash: objects left ``processing`` go back to ``received``."""
        with self._serialized() as db:
            return db.execute(
                "UPDATE instances SET state = ? WHERE state = ?", [RECEIVED, PROCESSING]
            ).rowcount

    def retry_failed(self, sop_uids: list[str] | None = None) -> list[tuple[str, str]]:
        """Put failed objects back to ``received``; returns their (sop_uid, spool_path)."""
        where, args = "state = ?", [FAILED]
        if sop_uids:
            where += f" AND sop_uid IN ({', '.join('?' for _ in sop_uids)})"
            args += sop_uids
        with self.transaction() as db:
            rows = db.execute(f"SELECT sop_uid, spool_path FROM instances WHERE {where}", args)
            found = [(r[0], r[1]) for r in rows.fetchall()]
            db.execute(
                f"UPDATE instances SET state = '{RECEIVED}', attempts = 0 WHERE {where}", args
            )
        return found

    def pending(self) -> list[tuple[str, str]]:
        """(sop_uid, spool_path) of every object waiting for the queue."""
        with self._serialized() as db:
            rows = db.execute(
                "SELECT sop_uid, spool_path FROM instances WHERE state = ?", [RECEIVED]
            )
            return [(r[0], r[1]) for r in rows.fetchall()]

    def spool_file_state(self, sop_uid: str, spool_path: str) -> str | None:
        """The state of the journal row for the spool file ``spool_path`` of ``sop_uid``
        (``held`` too), if any: a look-up by primary key, so a recovery costs the same
        per spool file however large the archive."""
        with self._serialized() as db:
            row = db.execute(
                "SELECT state FROM instances WHERE sop_uid = ? AND spool_path = ? "
                "UNION ALL SELECT 'held' FROM held WHERE spool_path = ?",
                [sop_uid, spool_path, spool_path],
            ).fetchone()
        return row[0] if row else None
