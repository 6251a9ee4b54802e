"""The ingest journal: every received object's state, and the worklist it feeds.

States: ``received`` (durable in the spool, waiting for the queue), ``processing``
(claimed by a worker), ``stored`` (in Orthanc, frames prepared, spool file removed),
``failed`` (a permanent error; the reason is kept and ``neuronova ingest retry`` re-runs
it). Each task names the spool file it was created for, so a newer copy of the same SOP
Instance UID always wins and an older task finishing late changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from pydicom import Dataset

from appliance.db import open_database
from appliance.spool import UID_RE
from appliance.users import now_iso

RECEIVED, PROCESSING, STORED, FAILED = "received", "processing", "stored", "failed"
T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """The identity of one received object, read from its header."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    transfer_syntax: str


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)[:200]


def describe(ds: Dataset) -> Received:
    """The identity of a dataset; :class:`ValueError` if a UID is missing."""
    uids = {k: _text(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
    missing = [k for k, v in uids.items() if not v]
    if missing:
        raise ValueError(f"the object has no {', '.join(missing)}")
    invalid = [k for k, v in uids.items() if len(v) > 64 or not UID_RE.match(v)]
    if invalid:
        raise ValueError(f"invalid {', '.join(invalid)} (UIDs are digits and dots, at most 64)")
    meta = getattr(ds, "file_meta", Dataset())
    return Received(
        uids["SOPInstanceUID"],
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        _text(ds, "SOPClassUID"),
        _text(meta, "TransferSyntaxUID"),
    )


class Journal:
    """The journal tables, safe to share between threads (access is serialized)."""

    def __init__(self, path: Path) -> None:
        self.db: sqlite_utils.Database = open_database(path, threads=True)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite_utils.Database]:
        with self._lock, self.db.conn:
            yield self.db

    def read(self, query: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``query`` with the database, serialized with the journal's writes."""
        with self._tx() as db:
            return query(db)

    def _update(self, sql: str, args: list[Any]) -> bool:
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def record_received(
        self, ds: Dataset, item: Received, spool_path: Path, source: str, size: int
    ) -> None:
        """Journal a durable spool file (a newer copy of a SOP replaces the older one)."""
        now = now_iso()
        with self._tx() as db:
            db["instances"].upsert(
                {
                    "sop_uid": item.sop_uid,
                    "study_uid": item.study_uid,
                    "series_uid": item.series_uid,
                    "sop_class": item.sop_class,
                    "state": RECEIVED,
                    "source": source,
                    "spool_path": str(spool_path),
                    "received_at": now,
                    "updated_at": now,
                    "stored_at": None,
                    "attempts": 0,
                    "ts_in": item.transfer_syntax,
                    "error": None,
                    "size_in": size,
                    **dict.fromkeys(("action", "ts_out", "reason", "size_out", "frames")),
                },
                pk="sop_uid",
            )
            self._upsert_series_and_study(db, ds, item, now)

    def _upsert_series_and_study(
        self, db: sqlite_utils.Database, ds: Dataset, item: Received, now: str
    ) -> None:
        modality = _text(ds, "Modality")
        if not db["series"].count_where("series_uid = ?", [item.series_uid]):
            db["series"].insert(
                {
                    "series_uid": item.series_uid,
                    "study_uid": item.study_uid,
                    "modality": modality,
                    "description": _text(ds, "SeriesDescription"),
                    "number": _text(ds, "SeriesNumber"),
                    "first_sop": item.sop_uid,
                },
            )
        study = {
            "study_uid": item.study_uid,
            "patient_name": _text(ds, "PatientName"),
            "patient_id": _text(ds, "PatientID"),
            "study_date": _text(ds, "StudyDate"),
            "study_time": _text(ds, "StudyTime"),
            "description": _text(ds, "StudyDescription"),
            "accession": _text(ds, "AccessionNumber"),
            "updated_at": now,
        }
        existing = list(db["studies"].rows_where("study_uid = ?", [item.study_uid]))
        modalities = (
            set(filter(None, (existing[0]["modalities"] or "").split(","))) if existing else set()
        )
        study["modalities"] = ",".join(sorted(modalities | ({modality} if modality else set())))
        if not existing:
            study["received_at"] = now
        db["studies"].upsert(study, pk="study_uid")

    def claim(self, sop_uid: str, spool_path: str) -> bool:
        """Take the object for processing; False if another copy or worker has it."""
        return self._update(
            "UPDATE instances SET state = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE sop_uid = ? AND spool_path = ? AND state = ?",
            [PROCESSING, now_iso(), sop_uid, spool_path, RECEIVED],
        )

    def superseded(self, sop_uid: str, spool_path: str) -> bool:
        """True when a newer copy of this SOP Instance replaced ``spool_path``."""
        with self._tx() as db:
            row = db.execute("SELECT spool_path FROM instances WHERE sop_uid = ?", [sop_uid])
            found = row.fetchone()
        return found is not None and found[0] != spool_path

    def release(self, sop_uid: str, spool_path: str, error: str) -> int:
        """Give the object back for a retry; returns its attempt count."""
        with self._tx() as db:
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

    def reset_interrupted(self) -> int:
        """After a crash: objects left ``processing`` go back to ``received``."""
        with self._tx() as db:
            return db.execute(
                "UPDATE instances SET state = ? WHERE state = ?", [RECEIVED, PROCESSING]
            ).rowcount

    def retry_failed(self, sop_uids: list[str] | None = None) -> list[tuple[str, str]]:
        """Put failed objects back to ``received``; returns their (sop_uid, spool_path)."""
        where, args = "state = ?", [FAILED]
        if sop_uids:
            where += f" AND sop_uid IN ({', '.join('?' for _ in sop_uids)})"
            args += sop_uids
        with self._tx() as db:
            rows = db.execute(f"SELECT sop_uid, spool_path FROM instances WHERE {where}", args)
            found = [(r[0], r[1]) for r in rows.fetchall()]
            db.execute(
                f"UPDATE instances SET state = '{RECEIVED}', attempts = 0 WHERE {where}", args
            )
        return found

    def pending(self) -> list[tuple[str, str]]:
        """(sop_uid, spool_path) of every object waiting for the queue."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT sop_uid, spool_path FROM instances WHERE state = ?", [RECEIVED]
            )
            return [(r[0], r[1]) for r in rows.fetchall()]

    def knows_spool_file(self, spool_path: str) -> str | None:
        """The state of the journal row for this spool file, if any."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM instances WHERE spool_path = ?", [spool_path]
            ).fetchone()
        return row[0] if row else None
