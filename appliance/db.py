"""The app database (SQLite via sqlite-utils): users, audit trail, ingest journal (with
the objects held back by the overwrite policy)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import sqlite_utils

SCHEMA: dict[str, dict] = {
    "users": {
        "columns": {
            "username": str,
            "role": str,
            "password_hash": str,
            "disabled": int,
            "created_at": str,
            "last_login": str,
            "sso_subject": str,  # "issuer subject" of a user signed in by single sign-on
            "pending": int,  # 1: created by single sign-on, waiting for an admin's approval
        },
        "pk": "username",
        "not_null": {"role", "password_hash"},
        "defaults": {"disabled": 0, "pending": 0},
    },
    "audit": {
        "columns": {
            "id": int,
            "ts": str,
            "event": str,
            "username": str,
            "client": str,
            "detail": str,
            "last_ts": str,
            "count": int,
            "study_uid": str,
            "patient_id": str,
            "dedupe": str,
        },
        "pk": "id",
        "not_null": {"ts", "event"},
        "defaults": {"count": 1},
    },
    "sessions": {
        "columns": {
            "id": str,
            "username": str,
            "csrf": str,
            "created_at": str,
            "expires_at": str,
            "revoked_at": str,
            "revoke_reason": str,
            "client": str,
            "user_agent": str,
        },
        "pk": "id",
        "not_null": {"username", "csrf", "created_at", "expires_at"},
    },
    "refresh_tokens": {
        "columns": {"token_hash": str, "session_id": str, "created_at": str, "used_at": str},
        "pk": "token_hash",
        "not_null": {"session_id", "created_at"},
    },
    "oauth_states": {  # authorization requests in flight (appliance.security.oauth)
        "columns": {
            "state_hash": str,
            "kind": str,
            "browser_hash": str,
            "client": str,
            "nonce": str,
            "verifier": str,
            "issuer": str,
            "redirect_uri": str,
            "next": str,
            "created_at": str,
            "expires_at": str,
        },
        "pk": "state_hash",
        "not_null": {"kind", "browser_hash", "nonce", "verifier", "created_at", "expires_at"},
    },
    "login_attempts": {
        "columns": {"id": int, "username": str, "client": str, "started_at": str},
        "pk": "id",
        "not_null": {"username", "client", "started_at"},
    },
    "shares": {
        "columns": {
            "id": str,
            "study_uid": str,
            "created_by": str,
            "created_at": str,
            "expires_at": str,
            "revoked_at": str,
            "note": str,
        },
        "pk": "id",
        "not_null": {"study_uid", "created_by", "created_at", "expires_at"},
    },
    "modalities": {
        "columns": {"ae_title": str, "host": str, "description": str, "created_at": str},
        "pk": "ae_title",
        "not_null": {"created_at"},
    },
    "instances": {
        "columns": {
            "sop_uid": str,
            "study_uid": str,
            "series_uid": str,
            "sop_class": str,
            "state": str,
            "source": str,
            "spool_path": str,  # the file's name in the home's spool/ (absolute before migration 5)
            "received_at": str,
            "updated_at": str,
            "stored_at": str,
            "attempts": int,
            "ts_in": str,
            "ts_out": str,
            "action": str,
            "reason": str,
            "error": str,
            "size_in": int,
            "size_out": int,
            "frames": int,
            "images_at": str,
            "number": str,  # InstanceNumber (FHIR ImagingStudy)
        },
        "pk": "sop_uid",
        "not_null": {"study_uid", "series_uid", "state", "received_at"},
        "defaults": {"attempts": 0},
    },
    "held": {
        "columns": {
            "id": int,
            "sop_uid": str,
            "study_uid": str,
            "source": str,
            "spool_path": str,  # as in instances
            "reason": str,
            "patient_name": str,
            "patient_id": str,
            "size": int,
            "received_at": str,
        },
        "pk": "id",
        "not_null": {"sop_uid", "study_uid", "spool_path", "reason", "received_at"},
    },
    "series": {
        "columns": {
            "series_uid": str,
            "study_uid": str,
            "modality": str,
            "description": str,
            "number": str,
            "first_sop": str,
            "body_part": str,  # BodyPartExamined (FHIR ImagingStudy)
        },
        "pk": "series_uid",
        "not_null": {"study_uid"},
    },
    "deleting": {
        "columns": {"study_uid": str, "username": str, "started_at": str},
        "pk": "study_uid",
    },
    "metrics": {  # counters every process adds to (appliance.metrics)
        "columns": {"name": str, "labels": str, "value": float},
        "pk": ("name", "labels"),
        "not_null": {"value"},
    },
    "studies": {
        "columns": {
            "study_uid": str,
            "patient_name": str,
            "patient_id": str,
            "study_date": str,
            "study_time": str,
            "description": str,
            "accession": str,
            "modalities": str,
            "received_at": str,
            "updated_at": str,
            "patient_birth_date": str,  # FHIR Patient
            "patient_sex": str,
            "patient_key": str,  # patient_key(patient_id): the FHIR Patient id, searched
            # QIDO's (appliance.store.study_search); NULL: recorded before migration 4
            "referring_physician": str,
            "dicom_study_id": str,  # StudyID (0020,0010), not the UID
        },
        "pk": "study_uid",
    },
    "fhir_push": {  # appliance.fhir.push: each study's push to the clinic's FHIR server
        "columns": {
            "study_uid": str,
            "state": str,
            "generation": int,
            "attempts": int,
            "due_at": str,
            "pushed_at": str,
            "error": str,
            "status": int,
        },
        "pk": "study_uid",
        "not_null": {"state", "due_at"},
        "defaults": {"generation": 0, "attempts": 0},
    },
}

INDEXES: list[tuple[str, list[str]]] = [
    ("instances", ["study_uid", "state"]),
    ("instances", ["series_uid"]),
    ("instances", ["state", "updated_at"]),
    ("series", ["study_uid"]),
    ("studies", ["study_date"]),
    ("studies", ["patient_name"]),
    ("studies", ["patient_id"]),
    ("studies", ["updated_at"]),
    ("studies", ["received_at"]),
    ("studies", ["patient_key"]),
    ("fhir_push", ["state"]),
    ("audit", ["event", "username", "ts"]),
    ("audit", ["event", "client", "ts"]),
    ("audit", ["ts"]),
    ("audit", ["study_uid"]),
    ("audit", ["patient_id"]),
    ("audit", ["username"]),
    ("refresh_tokens", ["session_id"]),
    ("sessions", ["username"]),
    ("login_attempts", ["username", "started_at"]),
    ("login_attempts", ["client", "started_at"]),
    ("login_attempts", ["started_at"]),
    ("oauth_states", ["expires_at"]),
    ("oauth_states", ["client"]),
]


# Values for columns added to an existing database: instances stored before images_at
# existed had their JPEGs written with their frames.
BACKFILL: dict[tuple[str, str], str] = {
    ("instances", "images_at"): "UPDATE instances SET images_at = stored_at WHERE state = 'stored'",
    ("audit", "last_ts"): "UPDATE audit SET last_ts = ts",
    ("audit", "count"): "UPDATE audit SET count = 1",
    ("users", "pending"): "UPDATE users SET pending = 0",
}


class Transactions(Protocol):
    """Runs transactions on the app database, serialized with its other users
    (:class:`appliance.ingest.journal.Journal`)."""

    def transaction(self) -> AbstractContextManager[sqlite_utils.Database]:
        """The database inside one transaction: committed when the block ends, rolled
        back if it raises."""
        ...


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """``with transaction(db):`` the block's writes are all committed, or none if it raises.

    Inside a transaction already open on ``db`` (``journal.transaction()``, say) the block
    is a SAVEPOINT of it: its writes commit or roll back with the enclosing transaction,
    where ``with db.conn:`` would commit that early. Otherwise ``BEGIN IMMEDIATE`` takes
    SQLite's write lock first (waiting up to the busy timeout), so a block that reads,
    then writes, never works on an outdated snapshot.
    """
    if db.conn.in_transaction:
        with db.atomic():  # sqlite-utils: a SAVEPOINT inside an open transaction
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()


def open_database(path: Path, *, threads: bool = False) -> sqlite_utils.Database:
    """Open (creating if needed) the app database with WAL journaling and the schema.

    ``threads`` allows use from several threads; callers then serialize access.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=not threads))
    db.execute("PRAGMA busy_timeout = 10000")
    db.enable_wal()
    db.execute("PRAGMA synchronous = NORMAL")
    if not db.table_names():  # a new file; an existing home changes only by its migrations
        converge_schema(db)
    return db


QIDO_CASELESS = ("patient_name", "patient_id", "accession")


def converge_schema(db: sqlite_utils.Database) -> None:
    """Create the tables of :data:`SCHEMA` that do not exist yet and add the columns it has
    that the database lacks (backfilling those of :data:`BACKFILL`); changes nothing on a
    database that has them all.

    A home's database changes only at start, by :mod:`appliance.migrations`: a change to
    :data:`SCHEMA` or :data:`INDEXES` comes with a migration there (which may call this).
    """
    for name, spec in SCHEMA.items():
        db[name].create(
            spec["columns"],
            pk=spec["pk"],
            not_null=spec.get("not_null"),
            defaults=spec.get("defaults"),
            if_not_exists=True,
        )
        existing = db[name].columns_dict
        for column, kind in spec["columns"].items():
            if column not in existing:
                db[name].add_column(column, kind)
                if (name, column) in BACKFILL:
                    db.execute(BACKFILL[name, column])
    for table, columns in INDEXES:
        db[table].create_index(columns, if_not_exists=True)
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_instances_images_pending ON instances (state) "
        "WHERE images_at IS NULL"
    )
    # QIDO study searches match these without regard to case (appliance.store.study_search):
    # SQLite's LIKE walks an index of the column only when the index is COLLATE NOCASE.
    for column in QIDO_CASELESS:
        db.execute(
            f"CREATE INDEX IF NOT EXISTS idx_studies_{column}_nocase "
            f"ON studies ({column} COLLATE NOCASE)"
        )
    # Aggregated audit rows (appliance.security.audit.record): one row per key; NULL keys repeat.
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_audit_dedupe ON audit (dedupe)")


def patient_key(patient_id: str | None) -> str:
    """The FHIR id of the patient with DICOM Patient ID ``patient_id`` (none: ``""``).

    A DICOM Patient ID may hold characters a FHIR id may not (``[A-Za-z0-9-.]{1,64}``),
    and an id in a URL should not reveal a medical record number: the id is the first
    128 bits of the ID's SHA-256, hex. Each study row keeps it (``studies.patient_key``,
    indexed) so that a search by FHIR id is an index look-up.
    """
    return hashlib.sha256((patient_id or "").encode()).hexdigest()[:32]


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")
