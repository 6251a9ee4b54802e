"""Orthanc's SQLite index gets planner statistics before Orthanc starts: without them
SQLite answers a look-up by UID on the index of (tag group, tag element), which reads an
identifier of every instance in the archive; with them, on the index of values."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.store.orthanc import OrthancStore
from appliance.store.orthanc_index import refresh_statistics, sqlite_index_file
from bench.synthetic import make_slices, write_series
from tests.support.running import make_appliance, storescu, wait_stored

# Orthanc 1.10.1's look-up of a resource by one of its DICOM identifiers (SOP Instance
# UID, tag 0008,0018, resource type 3 = instance).
LOOKUP = (
    "SELECT d.id FROM DicomIdentifiers AS d, Resources AS r WHERE d.id = r.internalId "
    "AND r.resourceType = 3 AND d.tagGroup = 8 AND d.tagElement = 24 AND d.value = ?"
)


@pytest.fixture(scope="module")
def orthanc_schema(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The statements of the index Orthanc makes (a real Orthanc, a few instances), and
    checks on the way that a start refreshes that index's statistics."""
    tmp_path = tmp_path_factory.mktemp("orthanc-index")
    appliance = make_appliance(tmp_path)
    series = write_series(tmp_path / "series", make_slices(3))
    index = sqlite_index_file(appliance.settings)
    for _ in range(2):  # the first start makes the index, the second finds it
        appliance.start()
        try:
            assert storescu(appliance, series.files).returncode == 0
            wait_stored(appliance, series.sop_uids)
            assert all(OrthancStore(appliance.settings).lookup_ids(s) for s in series.sop_uids)
        finally:
            appliance.stop()
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
        analyzed = {t for (t,) in db.execute("SELECT tbl FROM sqlite_stat1")}
        schema = [
            sql
            for (sql,) in db.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            )
        ]
    assert "DicomIdentifiers" in analyzed  # the second start gave it statistics
    return schema


def archive_index(folder: Path, schema: list[str], instances: int) -> Path:
    """An index of Orthanc's schema holding ``instances`` instances' identifiers (one
    patient, study and series per 100 instances), as Orthanc 1.10.1 leaves it: no
    statistics."""
    folder.mkdir(parents=True)
    path = folder / "index"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in schema:
            db.execute(statement)
        rows, identifiers = [], []
        for n in range(instances):
            base = len(rows) + 1
            if n % 100 == 0:
                rows += [(base, 0, None), (base + 1, 1, base), (base + 2, 2, base + 1)]
                identifiers += [(base, 16, 32, f"P{n}"), (base + 1, 32, 13, f"1.2.{n}"),
                                (base + 2, 32, 14, f"1.3.{n}")]  # fmt: skip
                parent = base + 2
            rows.append((len(rows) + 1, 3, parent))
            identifiers.append((len(rows), 8, 24, f"1.4.{n}"))
        db.executemany("INSERT INTO Resources (internalId, resourceType, publicId, parentId) "
                       "VALUES (?, ?, hex(randomblob(20)), ?)", rows)  # fmt: skip
        db.executemany("INSERT INTO DicomIdentifiers VALUES (?, ?, ?, ?)", identifiers)
    return path


def lookup_steps(index: Path, value: str) -> int:
    """SQLite's virtual-machine steps of Orthanc's look-up by SOP Instance UID."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    with contextlib.closing(sqlite3.connect(index)) as db:
        db.set_progress_handler(tick, 10)
        assert db.execute(LOOKUP, [value]).fetchall()
    return steps


def test_a_look_up_by_uid_costs_the_same_at_8x_the_archive_once_analyzed(
    tmp_path: Path, orthanc_schema: list[str]
) -> None:
    cost: dict[str, list[int]] = {"as Orthanc leaves it": [], "analyzed": []}
    for instances in (2_000, 16_000):
        index = archive_index(tmp_path / str(instances), orthanc_schema, instances)
        cost["as Orthanc leaves it"].append(lookup_steps(index, "1.4.7"))
        settings = load_settings(tmp_path / f"home-{instances}", {}, environ={})
        settings.layout.orthanc_dir.mkdir(parents=True)
        index.parent.rename(settings.layout.orthanc_dir / "index")
        refresh_statistics(settings)
        cost["analyzed"].append(lookup_steps(sqlite_index_file(settings), "1.4.7"))
    before, after = (b / a for a, b in cost.values())
    assert before > 6, cost  # it read every instance's identifier
    assert after < 1.5, cost


def test_a_locked_or_missing_index_is_left_alone(tmp_path, caplog) -> None:
    appliance = make_appliance(tmp_path)
    refresh_statistics(appliance.settings)  # no index yet: nothing to do, no error
    index = sqlite_index_file(appliance.settings)
    index.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(index, isolation_level=None)) as held:
        held.execute("CREATE TABLE t (x)")
        held.execute("BEGIN EXCLUSIVE")  # as a running Orthanc holds it
        refresh_statistics(appliance.settings)
    assert "statistics were not refreshed" in caplog.text
