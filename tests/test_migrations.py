"""Home and database migrations: ordered, recorded in the home, run once at start under
the home's init lock, and a home migrated by a newer version refused with what to do."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from appliance import migrations
from appliance.cli import cli
from appliance.config import load_settings
from appliance.db import open_database, patient_key
from appliance.errors import HomeTooNewError
from appliance.home import init_home
from appliance.migrations import MIGRATIONS, Migration, read_record
from appliance.version import current

LAST = MIGRATIONS[-1].number  # the test's own migrations come after the real ones


def test_a_new_home_records_every_migration_and_the_version(tmp_path, runner):
    home = tmp_path / "h"
    first = runner.invoke(cli, ["init", "--home", str(home)])
    assert first.exit_code == 0, first.output
    assert f"Migrated the home for NeuroNova {current()}: 1: app database" in first.output
    record = json.loads((home / "version.json").read_text())
    assert record["version"] == current()
    assert [(m["number"], m["version"]) for m in record["migrations"]] == [
        (m.number, current()) for m in MIGRATIONS
    ]
    second = runner.invoke(cli, ["init", "--home", str(home)])
    assert "Migrated" not in second.output  # run once
    assert "already set up; nothing to do" in second.output
    assert json.loads((home / "version.json").read_text()) == record


def test_init_on_an_older_home_says_what_it_migrated_not_nothing_to_do(tmp_path, runner):
    settings, _ = home_at_level(tmp_path, LAST - 1)
    result = runner.invoke(cli, ["init", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert f"Migrated the home for NeuroNova {current()}: {LAST}: " in result.output
    assert "nothing to do" not in result.output


def test_a_home_of_0_1_0_gets_migration_1(tmp_path):
    """A 0.1.0 home has no record, and its database may lack what later 0.1.0 builds
    added (here the users' single sign-on columns and the FHIR push table)."""
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    layout = settings.layout
    layout.record_file.unlink()
    with sqlite3.connect(layout.database_file) as con:
        con.execute("ALTER TABLE users DROP COLUMN pending")
        con.execute("DROP TABLE fhir_push")
    con.close()
    assert "pending" not in open_database(layout.database_file)["users"].columns_dict
    init_home(settings)
    db = open_database(layout.database_file)
    assert "pending" in db["users"].columns_dict and db["fhir_push"].exists()
    assert [row["pending"] for row in db["users"].rows] == [0]  # backfilled
    assert read_record(layout).level == MIGRATIONS[-1].number


def home_at_level(tmp_path, level: int, *undo: str):
    """A new home whose record stops at migration ``level``, its database taken back by the
    SQL statements ``undo``: (settings, layout) of a home as an older build left it."""
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    layout = settings.layout
    record = json.loads(layout.record_file.read_text())
    record["migrations"] = record["migrations"][:level]
    layout.record_file.write_text(json.dumps(record))
    with sqlite3.connect(layout.database_file) as con:
        for statement in undo:
            con.execute(statement)
    con.close()
    return settings, layout


def test_migration_2_indexes_studies_by_received_date_on_an_older_home(tmp_path):
    """A home a 0.2 build migrated (level 1) has no index on studies.received_at; the next
    start adds it and records migration 2."""
    settings, layout = home_at_level(tmp_path, 1, "DROP INDEX idx_studies_received_at")
    init_home(settings)
    indexes = {index.name for index in open_database(layout.database_file)["studies"].indexes}
    assert "idx_studies_received_at" in indexes
    assert read_record(layout).level == LAST


def test_migration_3_keeps_each_studys_fhir_patient_id_on_an_older_home(tmp_path):
    """A home at level 2 has studies without ``patient_key``; the next start adds the
    column, fills it (an absent Patient ID is the key of "") and indexes it, once."""
    settings, layout = home_at_level(
        tmp_path,
        2,
        "DROP INDEX idx_studies_patient_key",
        "ALTER TABLE studies DROP COLUMN patient_key",
        "INSERT INTO studies (study_uid, patient_id) VALUES "
        "('1.1', 'A-1'), ('1.2', 'A-1'), ('1.3', NULL), ('1.4', 'B 2')",
    )
    init_home(settings)
    db = open_database(layout.database_file)
    keys = dict(db.execute("SELECT study_uid, patient_key FROM studies").fetchall())
    expected = {"1.1": "A-1", "1.2": "A-1", "1.3": "", "1.4": "B 2"}
    assert keys == {uid: patient_key(pid) for uid, pid in expected.items()}
    assert "idx_studies_patient_key" in {index.name for index in db["studies"].indexes}
    assert read_record(layout).level == LAST
    migrations._studies_by_patient_key(layout)  # again: nothing changes
    assert dict(db.execute("SELECT study_uid, patient_key FROM studies").fetchall()) == keys


def newer_record(home) -> None:
    record = json.loads((home / "version.json").read_text())
    record["version"] = "9.1.0"
    record["migrations"].append(
        {
            "number": 99,
            "name": "split the audit trail",
            "version": "9.0.0",
            "at": "2030-01-01T00:00:00+00:00",
        }
    )
    (home / "version.json").write_text(json.dumps(record))


@pytest.mark.parametrize("command", [["init"], ["run"], ["user", "list"]])
def test_an_older_version_refuses_a_home_a_newer_one_migrated(home, runner, command):
    newer_record(home)
    before = (home / "version.json").read_text()
    result = runner.invoke(cli, [*command, "--home", str(home)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith(
        f"Error: {home} was migrated by NeuroNova 9.0.0 (migration 99: split the audit "
        f"trail); this is NeuroNova {current()}, which knows migrations up to {LAST}"
    )
    assert "Install NeuroNova 9.1.0 or newer (apt-get install neuronova" in result.output
    assert (home / "version.json").read_text() == before  # nothing changed


def test_prepare_home_of_a_container_refuses_a_newer_home(home):
    from appliance.cli.services import prepare_home

    newer_record(home)
    with pytest.raises(HomeTooNewError, match=r"migrated by NeuroNova 9\.0\.0"):
        prepare_home(load_settings(home, environ={}))


def test_a_damaged_record_names_the_file_and_what_to_do(home, runner):
    (home / "version.json").write_text("{not json")
    result = runner.invoke(cli, ["init", "--home", str(home)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{home / 'version.json'} is damaged" in result.output
    assert "restore it from a backup" in result.output


def test_two_starts_at_once_run_a_migration_once(tmp_path, monkeypatch):
    """Two containers on one home volume start together: the init lock lets one migrate;
    the other finds the record up to date. Migration 2 here is a test's own, slow enough
    that both starts overlap it."""
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    runs = []
    entered = threading.Event()

    def slow(layout) -> None:
        runs.append(layout.home)
        entered.set()
        time.sleep(0.5)

    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, Migration(LAST + 1, "slow", slow)))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            init_home(settings)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    threads[0].start()
    assert entered.wait(30)
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(runs) == 1
    record = read_record(settings.layout)
    assert [m.number for m in record.migrations] == [*range(1, LAST + 1), LAST + 1]


def test_a_start_cut_short_goes_on_from_the_last_recorded_migration(tmp_path, monkeypatch):
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    applied = []

    def fails(layout) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(migrations, "MIGRATIONS", (
        *MIGRATIONS,
        Migration(LAST + 1, "two", lambda layout: applied.append(2)),
        Migration(LAST + 2, "three", fails),
    ))  # fmt: skip
    with pytest.raises(OSError):
        init_home(settings)
    layout = settings.layout
    assert read_record(layout).level == LAST + 1
    monkeypatch.setattr(migrations, "MIGRATIONS", (
        *MIGRATIONS,
        Migration(LAST + 1, "two", lambda layout: applied.append(2)),
        Migration(LAST + 2, "three", lambda layout: applied.append(3)),
    ))  # fmt: skip
    init_home(settings)
    assert applied == [2, 3] and read_record(layout).level == LAST + 2


def test_migrations_are_numbered_in_order():
    assert [m.number for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_migration_5_names_spool_files_by_their_name_in_the_spool_folder(tmp_path):
    """A home at level 4 journaled absolute paths, here of the place it had before a move
    (whose own path holds a folder named spool); the next start keeps only the names. A
    path in no spool folder is kept: the file is still found there."""
    old = "/srv/spool/neuronova/spool"
    settings, layout = home_at_level(
        tmp_path,
        4,
        "INSERT INTO instances (sop_uid, study_uid, series_uid, state, received_at, spool_path) "
        f"VALUES ('1.1', '1', '1.9', 'received', 'now', '{old}/1.1.aaa.dcm'), "
        f"('1.2', '1', '1.9', 'stored', 'now', '{old}/1.2.bbb.dcm'), "
        "('1.3', '1', '1.9', 'failed', 'now', '/elsewhere/1.3.ccc.dcm'), "
        "('1.4', '1', '1.9', 'received', 'now', '1.4.ddd.dcm')",
        "INSERT INTO held (sop_uid, study_uid, spool_path, reason, received_at) "
        f"VALUES ('1.5', '1', '{old}/1.5.eee.dcm', 'policy', 'now')",
    )
    init_home(settings)
    db = open_database(layout.database_file)
    names = dict(db.execute("SELECT sop_uid, spool_path FROM instances").fetchall())
    names.update(db.execute("SELECT sop_uid, spool_path FROM held").fetchall())
    assert names == {"1.1": "1.1.aaa.dcm", "1.2": "1.2.bbb.dcm", "1.3": "/elsewhere/1.3.ccc.dcm",
                     "1.4": "1.4.ddd.dcm", "1.5": "1.5.eee.dcm"}  # fmt: skip
    assert layout.spool_file(names["1.1"]) == layout.spool_dir / "1.1.aaa.dcm"
    assert layout.spool_file(names["1.3"]) == Path("/elsewhere/1.3.ccc.dcm")
    assert read_record(layout).level == LAST
    migrations._spool_files_by_name(layout)  # again: nothing changes
    again = dict(db.execute("SELECT sop_uid, spool_path FROM instances").fetchall())
    assert again == {sop: name for sop, name in names.items() if sop != "1.5"}
