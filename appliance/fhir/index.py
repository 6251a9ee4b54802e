"""The worklist index read for FHIR: studies, their series and stored instances, patients.

The index (``studies``, ``series``, ``instances`` tables of the app database, written by
the ingest journal) answers every FHIR read and search in SQL; Orthanc is not asked.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from appliance.fhir.query import ACCESSION_KEY, ANY_KEY, UID_KEY, Page, Search

STARTED = "(study_date || substr(coalesce(study_time, '') || '000000', 1, 6))"
PATIENT = "coalesce(patient_id, '')"
Row = dict[str, Any]


def _marks(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join("?" for _ in values)


def _where(search: Search, scope: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause of a search over ``studies``; ``scope`` pins it to one study."""
    clauses, args = ["1 = 1"], []
    for name, values in search.groups:
        if not values:
            clauses.append("0")
        elif name == "patient_key":  # the FHIR id kept beside the Patient ID, indexed
            clauses.append(f"patient_key IN ({_marks(values)})")
            args += values
        elif name == "study_uid":
            clauses.append(f"study_uid IN ({_marks(values)})")
            args += values
        elif name == "identifier":  # query.study_identifier's keys
            uids = _keyed(values, UID_KEY, ANY_KEY)
            numbers = _keyed(values, ACCESSION_KEY, ANY_KEY)
            clauses.append(f"(study_uid IN ({_marks(uids)}) OR accession IN ({_marks(numbers)}))")
            args += uids + numbers
        elif name == "patient_id":  # patient_id itself, not PATIENT: its index serves
            missing = " OR patient_id IS NULL" if "" in values else ""
            clauses.append(f"(patient_id IN ({_marks(values)}){missing})")
            args += values
        elif name == "modality":
            test = "instr(',' || coalesce(modalities, '') || ',', ?) > 0"
            clauses.append("(" + " OR ".join(test for _ in values) + ")")
            args += [f",{v}," for v in values]
        elif name == "name":
            test = "('^' || replace(coalesce(patient_name, ''), ' ', '^')) LIKE ? ESCAPE '\\'"
            clauses.append("(" + " OR ".join(test for _ in values) + ")")
            args += [f"%^{_escape_like(v).replace(' ', '^')}%" for v in values]
    for bound, op, day_op in [(b, ">=", ">=") for b in search.since] + [
        (b, "<", "<=") for b in search.before
    ]:  # the day's bound first: the study_date index serves it
        clauses.append(f"study_date {day_op} ? AND length(study_date) = 8 AND {STARTED} {op} ?")
        args += [bound[:8], bound]
    if scope is not None:
        clauses.append("study_uid = ?")
        args.append(scope)
    return " AND ".join(clauses), args


def _keyed(values: tuple[str, ...], *keys: str) -> list[str]:
    """The values that start with one of ``keys``, without it."""
    return [v.partition(":")[2] for v in values if v.startswith(keys)]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_studies(
    db: sqlite_utils.Database, search: Search, scope: str | None = None
) -> tuple[int, list[Row]]:
    """(total, one page of study rows), newest study first."""
    where, args = _where(search, scope)
    total = db.execute(f"SELECT count(*) FROM studies WHERE {where}", args).fetchone()[0]
    page = _page_rows(
        db,
        f"SELECT * FROM studies WHERE {where} ORDER BY study_date DESC, study_time DESC, "
        "study_uid LIMIT ? OFFSET ?",
        args,
        search.page,
    )
    return total, page


def _page_rows(db: sqlite_utils.Database, sql: str, args: list[Any], page: Page) -> list[Row]:
    if page.count == 0:
        return []
    return list(db.query(sql, [*args, page.count, page.offset]))


def study_contents(
    db: sqlite_utils.Database, study_uids: list[str]
) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    """The series and the stored instances of ``study_uids``, each by study, in order."""
    series: dict[str, list[Row]] = {uid: [] for uid in study_uids}
    instances: dict[str, list[Row]] = {uid: [] for uid in study_uids}
    if not study_uids:
        return series, instances
    marks = _marks(study_uids)
    for row in db.query(
        f"SELECT * FROM series WHERE study_uid IN ({marks}) "
        "ORDER BY CAST(number AS INTEGER), series_uid",
        study_uids,
    ):
        series[row["study_uid"]].append(row)
    for row in db.query(
        "SELECT sop_uid, study_uid, series_uid, sop_class, number FROM instances "
        f"WHERE study_uid IN ({marks}) AND state = 'stored' "
        "ORDER BY CAST(number AS INTEGER), sop_uid",
        study_uids,
    ):
        instances[row["study_uid"]].append(row)
    return series, instances


PATIENT_COLUMNS = (
    f"{PATIENT} AS patient_id, patient_name, patient_birth_date, patient_sex, "
    "max(updated_at) AS updated_at"
)


def search_patients(
    db: sqlite_utils.Database, search: Search, scope: str | None = None
) -> tuple[int, list[Row]]:
    """(total, one page of patient rows): one per Patient ID, with the demographics of
    its most recently updated study (SQLite takes bare columns from the max() row)."""
    where, args = _where(search, scope)
    total = db.execute(
        f"SELECT count(DISTINCT {PATIENT}) FROM studies WHERE {where}", args
    ).fetchone()[0]
    page = _page_rows(
        db,
        f"SELECT {PATIENT_COLUMNS} FROM studies WHERE {where} GROUP BY {PATIENT} "
        f"ORDER BY {PATIENT} LIMIT ? OFFSET ?",
        args,
        search.page,
    )
    return total, page


def patient_row(db: sqlite_utils.Database, key: str) -> Row | None:
    """The patient row of one FHIR Patient id (:func:`appliance.db.patient_key`), or
    ``None`` if no study has it."""
    rows = list(
        db.query(
            f"SELECT {PATIENT_COLUMNS} FROM studies WHERE patient_key = ? GROUP BY {PATIENT}",
            [key],
        )
    )
    return rows[0] if rows else None
