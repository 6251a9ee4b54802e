"""The app database (SQLite via sqlite-utils): users, audit trail, ingest journal."""

from __future__ import annotations

from pathlib import Path

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
        },
        "pk": "username",
        "not_null": {"role", "password_hash"},
        "defaults": {"disabled": 0},
    },
}


def open_database(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the app database with WAL journaling and the schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA busy_timeout = 10000")
    db.enable_wal()
    db.execute("PRAGMA synchronous = NORMAL")
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    """Create the tables that do not exist yet."""
    for name, spec in SCHEMA.items():
        db[name].create(
            spec["columns"],
            pk=spec["pk"],
            not_null=spec.get("not_null"),
            defaults=spec.get("defaults"),
            if_not_exists=True,
        )
