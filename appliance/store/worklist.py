"""The worklist: studies with their ingest progress, searched and paged in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils

SORT_COLUMNS = {
    "study_date": "study_date {d}, study_time {d}",
    "patient_name": "patient_name {d}",
    "patient_id": "patient_id {d}",
    "modalities": "modalities {d}",
    "description": "description {d}",
    "updated_at": "updated_at {d}",
}
MAX_LIMIT = 200
# Studies counted past the page: beyond them the total is a lower bound ("1,250+ studies"),
# so counting costs what the page costs however large the archive (issue 20).
COUNT_AHEAD = 1000


class WorklistQueryError(ValueError):
    """An invalid worklist query parameter."""


@dataclass(frozen=True)
class WorklistQuery:
    """Search, filters, sort and page of a worklist request."""

    q: str = ""
    patient_id: str = ""  # exact (a SMART launch's patient), unlike the search ``q``
    modality: str = ""
    date_from: str = ""
    date_to: str = ""
    sort: str = "-study_date"
    limit: int = 50
    offset: int = 0

    def order_by(self) -> str:
        key = self.sort.lstrip("-")
        if key not in SORT_COLUMNS:
            raise WorklistQueryError(f"sort must be one of {', '.join(SORT_COLUMNS)}")
        direction = "DESC" if self.sort.startswith("-") else "ASC"
        return SORT_COLUMNS[key].format(d=direction) + ", study_uid"

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = ["1 = 1"], []
        if self.q:
            clauses.append(
                "(patient_name LIKE ? OR patient_id LIKE ? OR accession LIKE ? "
                "OR description LIKE ? OR study_uid = ?)"
            )
            like = f"%{self.q}%"
            args += [like, like, like, like, self.q]
        if self.patient_id:
            clauses.append("patient_id = ?")
            args.append(self.patient_id)
        if self.modality:
            clauses.append("(',' || modalities || ',') LIKE ?")
            args.append(f"%,{self.modality},%")
        for value, op in ((self.date_from, ">="), (self.date_to, "<=")):
            if value:
                if not (len(value) == 8 and value.isdigit()):
                    raise WorklistQueryError("dates must be YYYYMMDD")
                clauses.append(f"study_date {op} ?")
                args.append(value)
        return " AND ".join(clauses), args


def search_studies(db: sqlite_utils.Database, query: WorklistQuery) -> dict[str, Any]:
    """One page of studies with series/instance counts and ingest progress, and the
    total: exact when ``total_exact``, else at least that many (see :data:`COUNT_AHEAD`)."""
    if not 1 <= query.limit <= MAX_LIMIT or query.offset < 0:
        raise WorklistQueryError(f"limit must be 1-{MAX_LIMIT} and offset at least 0")
    where, args = query.where()
    total, exact = _bounded_count(db, where, args, query.offset + query.limit + COUNT_AHEAD)
    studies = list(
        db.query(
            f"SELECT * FROM studies WHERE {where} ORDER BY {query.order_by()} LIMIT ? OFFSET ?",
            [*args, query.limit, query.offset],
        )
    )
    _add_counts(db, studies)
    return {"total": total, "total_exact": exact, "items": [_item(s) for s in studies]}


def _bounded_count(
    db: sqlite_utils.Database, where: str, args: list[Any], most: int
) -> tuple[int, bool]:
    """(studies matching ``where``, counted up to ``most``; whether that is all of them)."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM studies WHERE {where} LIMIT ?)"
    found = db.execute(sql, [*args, most + 1]).fetchone()[0]
    return min(found, most), found <= most


def _add_counts(db: sqlite_utils.Database, studies: list[dict[str, Any]]) -> None:
    if not studies:
        return
    uids = [s["study_uid"] for s in studies]
    marks = ", ".join("?" for _ in uids)
    by_study = {s["study_uid"]: s for s in studies}
    for s in studies:
        s["progress"] = _no_progress()
        s["series_count"] = 0
    states = db.execute(
        f"SELECT study_uid, state, action, count(*) FROM instances WHERE study_uid IN ({marks}) "
        "GROUP BY study_uid, state, action",
        uids,
    )
    for study_uid, state, action, count in states.fetchall():
        _count(by_study[study_uid]["progress"], state, action, count)
    series = db.execute(
        f"SELECT study_uid, count(*) FROM series WHERE study_uid IN ({marks}) GROUP BY study_uid",
        uids,
    )
    for study_uid, count in series.fetchall():
        by_study[study_uid]["series_count"] = count


def _item(study: dict[str, Any]) -> dict[str, Any]:
    return {
        "study_uid": study["study_uid"],
        "patient_name": study["patient_name"] or "",
        "patient_id": study["patient_id"] or "",
        "study_date": study["study_date"] or "",
        "modalities": [m for m in (study["modalities"] or "").split(",") if m],
        "description": study["description"] or "",
        "accession": study["accession"] or "",
        "series_count": study["series_count"],
        "instance_count": study["progress"]["received"],
        "progress": study["progress"],
        "received_at": study["received_at"],
        "updated_at": study["updated_at"],
    }


def series_progress(db: sqlite_utils.Database, study_uid: str) -> list[dict[str, Any]]:
    """Each series of a study with its ingest progress and first/last timestamps."""
    series = {
        row["series_uid"]: {**row, "progress": _no_progress()}
        for row in db.query(
            "SELECT s.series_uid, s.modality, s.description, s.number, "
            "min(i.received_at) AS first_received_at, max(i.updated_at) AS last_updated_at "
            "FROM series s LEFT JOIN instances i USING (series_uid) "
            "WHERE s.study_uid = ? GROUP BY s.series_uid ORDER BY s.number, s.series_uid",
            [study_uid],
        )
    }
    counts = db.execute(
        "SELECT series_uid, state, action, count(*) FROM instances WHERE study_uid = ? "
        "GROUP BY series_uid, state, action",
        [study_uid],
    )
    for uid, state, action, count in counts.fetchall():
        if uid in series:
            _count(series[uid]["progress"], state, action, count)
    return list(series.values())


def _no_progress() -> dict[str, int]:
    return {"received": 0, "transcoded": 0, "stored": 0, "failed": 0}


def _count(progress: dict[str, int], state: str, action: str | None, count: int) -> None:
    progress["received"] += count
    if state == "stored":
        progress["stored"] += count
        if action == "transcoded":
            progress["transcoded"] += count
    elif state == "failed":
        progress["failed"] += count


def studies_of_patient(db: sqlite_utils.Database, patient_id: str, most: int) -> list[str]:
    """Up to ``most`` Study Instance UIDs of the patient, newest first."""
    rows = db.execute(
        "SELECT study_uid FROM studies WHERE patient_id = ? "
        "ORDER BY study_date DESC, study_time DESC LIMIT ?",
        [patient_id, most],
    )
    return [row[0] for row in rows]
