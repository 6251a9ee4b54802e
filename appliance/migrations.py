"""Ordered migrations of a data home and its app database, run once at start and recorded.

The home's ``version.json`` says which NeuroNova last started on it and which migrations
ran (number, name, the version that ran it, when). At start (``neuronova init``/``run``,
``service --init``: :func:`appliance.home.init_home`, under the home's init lock) the
migrations the record lacks run in order, each recorded as soon as it is done, so a start
cut short goes on where it stopped; each migration is therefore safe to run again. A home
whose record names a migration this version does not know was written by a newer
NeuroNova: this one refuses to start on it (:class:`HomeTooNewError`) and says what to do.

Migration 1 is the app database as NeuroNova 0.1.0 made it, which before this module was
brought up to date by every process that opened it: on a 0.1.0 home it adds what that
home's database lacks; on a new home the database is already made with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from appliance.db import converge_schema, now_iso, open_database, patient_key, transaction
from appliance.durable import fsync_dir, write_atomic
from appliance.errors import ConfigError, HomeTooNewError
from appliance.layout import SPOOL_FOLDER, HomeLayout, spool_name
from appliance.version import current, image_tag


@dataclass(frozen=True)
class Migration:
    """One step of a home's history: ``apply`` brings a home from ``number - 1`` to
    ``number`` and changes nothing when run again."""

    number: int
    name: str
    apply: Callable[[HomeLayout], None]


def _converged_database(layout: HomeLayout) -> None:
    """The app database given every table, column and index of :mod:`appliance.db`'s
    schema it lacks (migration 1 made 0.1.0's; later ones add to the schema)."""
    db = open_database(layout.database_file)
    try:
        converge_schema(db)
    finally:
        db.close()


def _studies_by_received_date(layout: HomeLayout) -> None:
    db = open_database(layout.database_file)
    try:
        db["studies"].create_index(["received_at"], if_not_exists=True)
    finally:
        db.close()


def _studies_by_patient_key(layout: HomeLayout) -> None:
    """Keep each study's FHIR Patient id (``patient_key``) beside its Patient ID, indexed:
    a FHIR search by patient hashed every distinct Patient ID of the archive."""
    db = open_database(layout.database_file)
    try:
        if "patient_key" not in db["studies"].columns_dict:
            db["studies"].add_column("patient_key", str)
        missing = db.execute("SELECT DISTINCT patient_id FROM studies WHERE patient_key IS NULL")
        with transaction(db):
            db.conn.executemany(
                "UPDATE studies SET patient_key = ? WHERE patient_id IS ? AND patient_key IS NULL",
                [(patient_key(pid), pid) for (pid,) in missing.fetchall()],
            )
        db["studies"].create_index(["patient_key"], if_not_exists=True)
    finally:
        db.close()


def _spool_files_by_name(layout: HomeLayout) -> None:
    """Name each journaled spool file by its name in the spool folder, not by the absolute
    path it had when it was received (:func:`appliance.layout.spool_name`): a home moved
    to another folder kept its files under the new path, and recovery took them for
    unknown copies, removed them, and failed their objects. One transaction; a path in
    no folder named ``spool`` is kept (the file is still found there)."""
    db = open_database(layout.database_file)
    try:
        db.conn.create_function("spool_name", 1, spool_name, deterministic=True)
        with transaction(db):
            for table in ("instances", "held"):
                db.execute(
                    f"UPDATE {table} SET spool_path = spool_name(spool_path) "
                    "WHERE spool_path LIKE ?",
                    [f"%/{SPOOL_FOLDER}/%"],
                )
    finally:
        db.close()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "app database of NeuroNova 0.1.0: its tables, columns and indexes",
        _converged_database,
    ),
    Migration(
        2,
        "index of studies by received date (retention by received date reads only what expired)",
        _studies_by_received_date,
    ),
    Migration(
        3,
        "FHIR Patient id kept with each study and indexed (a search by patient reads one)",
        _studies_by_patient_key,
    ),
    Migration(
        4,
        "ReferringPhysicianName and StudyID kept with each study; names and identifiers "
        "indexed without regard to case (QIDO study searches)",
        _converged_database,
    ),
    Migration(
        5,
        "spool files journaled by their name in the spool folder, not their absolute path "
        "(a moved home keeps its pending objects)",
        _spool_files_by_name,
    ),
)


@dataclass(frozen=True)
class Applied:
    """A migration that ran on the home: which, by which version, when (UTC ISO 8601)."""

    number: int
    name: str
    version: str
    at: str


@dataclass(frozen=True)
class HomeRecord:
    """The home's ``version.json``: the version that last started on it, and its migrations."""

    version: str | None = None
    migrations: tuple[Applied, ...] = field(default_factory=tuple)

    @property
    def level(self) -> int:
        """The number of the last migration that ran (0 for a home without a record)."""
        return max((m.number for m in self.migrations), default=0)


def read_record(layout: HomeLayout) -> HomeRecord:
    """The home's record; an empty one when the home has none yet (new, or made by 0.1.0)."""
    path = layout.record_file
    if not path.exists():
        return HomeRecord()
    try:
        data = json.loads(path.read_text())
        applied = tuple(Applied(**m) for m in data["migrations"])
        return HomeRecord(data["version"], applied)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is damaged ({exc}): restore it from a backup of this home, or move it "
            "away to have every migration run again (each is safe to repeat)."
        ) from None


def write_record(layout: HomeLayout, record: HomeRecord) -> None:
    """Replace the home's record at once (a reader sees the old or the new one)."""
    data = {"version": record.version, "migrations": [asdict(m) for m in record.migrations]}
    write_atomic(layout.record_file, json.dumps(data, indent=2).encode() + b"\n", mode=0o644)
    fsync_dir(layout.record_file.parent)


def refuse_newer(layout: HomeLayout, record: HomeRecord, version: str | None = None) -> None:
    """:class:`HomeTooNewError` when ``record`` names migrations this version lacks
    (``version``: this program's, asked only then)."""
    known = MIGRATIONS[-1].number
    if record.level <= known:
        return
    version = version or current()
    newer = next(m for m in record.migrations if m.number > known)
    raise HomeTooNewError(
        f"{layout.home} was migrated by NeuroNova {newer.version} (migration {newer.number}: "
        f"{newer.name}); this is NeuroNova {version}, which knows migrations up to {known} "
        f"and cannot use it. Install NeuroNova {record.version} or newer (apt-get install "
        f"neuronova, or the image neuronova:{image_tag(record.version or newer.version)}); "
        f"to go back to {version}, restore a backup of the home made by {version}."
    )


def migrate(layout: HomeLayout, version: str) -> list[Migration]:
    """Run the migrations the home's record lacks, in order, recording each; then record
    ``version`` as the one that last started. The caller holds the home's init lock.
    Returns the migrations that ran."""
    record = read_record(layout)
    refuse_newer(layout, record, version)
    ran = []
    for migration in MIGRATIONS:
        if migration.number <= record.level:
            continue
        migration.apply(layout)
        done = Applied(migration.number, migration.name, version, now_iso())
        record = replace(record, migrations=(*record.migrations, done))
        write_record(layout, record)
        ran.append(migration)
    if record.version != version or ran:
        write_record(layout, replace(record, version=version))
    return ran


def record_summary(home: Path) -> dict[str, object]:
    """What the admin's System page shows of the record: the version that last started on
    the home and the migrations that ran (``{}`` when the home has no record)."""
    record = read_record(HomeLayout(home))
    if record.version is None:
        return {}
    return {"version": record.version, "migrations": [asdict(m) for m in record.migrations]}
