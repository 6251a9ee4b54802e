"""The app's databases in a backup: an online-backup copy, vacuumed when mostly free pages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.backup.copying import put_database
from appliance.backup.repository import Repository


def _database(path: Path, rows: int, kept: int) -> Path:
    """A WAL database that held ``rows`` rows of 1 KB and keeps ``kept`` of them."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE task (id INTEGER PRIMARY KEY, data BLOB)")
    db.executemany("INSERT INTO task (data) VALUES (?)", [(bytes(1000),)] * rows)
    db.commit()
    db.execute("DELETE FROM task WHERE id > ?", (kept,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


@pytest.mark.parametrize(("kept", "vacuumed"), [(10, True), (3000, False)])
def test_a_database_mostly_free_is_stored_without_its_free_pages(
    tmp_path: Path, kept: int, vacuumed: bool
) -> None:
    path = _database(tmp_path / "queue.db", 4000, kept)
    repo = Repository(tmp_path / "repo", b"k" * 43)
    repo.create()
    entry, copied = put_database(repo, path, tmp_path / "scratch")
    repo.sync()
    assert copied > 0
    assert (entry["size"] < path.stat().st_size / 10) is vacuumed, (entry, path.stat().st_size)
    restored = tmp_path / "restored.db"
    with open(restored, "wb") as out:
        repo.copy_to(entry["sha256"], out)
    db = sqlite3.connect(restored)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM task").fetchone() == (kept,)
    db.close()
