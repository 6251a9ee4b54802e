"""``modality``, ``audit``, ``ingest`` and ``import``: CliRunner on real temporary homes.

No worker runs in the fast tests, so imported and accepted objects stay ``received``.
The slow test imports into the running appliance and waits until everything is stored.
"""

from __future__ import annotations

import getpass
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.cli import cli
from appliance.config import Settings, load_settings
from appliance.db import open_database
from appliance.ingest.importer import UnusableFile, read_object
from appliance.ingest.intake import Ingest
from appliance.ingest.journal import Journal
from appliance.jobs.queue import create_queue
from appliance.security import audit
from tests.support.running import run_cli
from tests.support.samples import TEST_FILES, native_dataset, renamed_copy

DICOMDIR = TEST_FILES / "dicomdirtests" / "DICOMDIR"
# Distinct SOP Instance UIDs, three transfer syntaxes.
SAMPLES = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(home, environ={})


def invoke(runner: CliRunner, home: Path, *args: str):
    return runner.invoke(cli, [*args, "--home", str(home)])


def rows(home: Path, sql: str, args: list | None = None) -> list[tuple]:
    return open_database(home / "db" / "appliance.db").execute(sql, args or []).fetchall()


def accept(settings: Settings, *names: str) -> list[str]:
    """Accept pydicom test files the way the receiver does; returns their SOP UIDs."""
    ingest = Ingest(settings, create_queue(settings))
    uids = []
    for name in names:
        data = (TEST_FILES / name).read_bytes()
        ds = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
        assert ingest.accept(data, ds, source="test") is None  # journaled and queued
        uids.append(str(ds.SOPInstanceUID))
    return uids


def spool_path(home: Path, sop_uid: str) -> str:
    return rows(home, "SELECT spool_path FROM instances WHERE sop_uid = ?", [sop_uid])[0][0]


# --- modality ------------------------------------------------------------------------


def test_modality_add_list_remove_and_audit_trail(home: Path, runner: CliRunner) -> None:
    empty = invoke(runner, home, "modality", "list")
    assert empty.exit_code == 0
    assert "ANY caller is accepted until the first one is added" in empty.output

    added = invoke(
        runner, home, "modality", "add", "CT_ROOM2", "--host", "10.0.0.7",
        "--description", "CT room 2",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "Added CT_ROOM2 (from 10.0.0.7)" in added.output
    assert "only listed modalities may send" in added.output
    listed = invoke(runner, home, "modality", "list")
    assert "CT_ROOM2" in listed.output and "10.0.0.7" in listed.output
    assert "CT room 2" in listed.output and "ANY" not in listed.output

    removed = invoke(runner, home, "modality", "remove", "CT_ROOM2")
    assert removed.exit_code == 0
    assert "ANY caller is accepted again" in removed.output
    trail = rows(home, "SELECT event, username, detail FROM audit ORDER BY id")
    assert [(e, u) for e, u, _ in trail] == [("admin_change", f"cli:{getpass.getuser()}")] * 2
    assert json.loads(trail[0][2]) == {
        "action": "modality_added",
        "ae_title": "CT_ROOM2",
        "host": "10.0.0.7",
    }
    assert json.loads(trail[1][2]) == {"action": "modality_removed", "ae_title": "CT_ROOM2"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "BAD\\AET"], "Error: invalid AE title 'BAD\\\\AET'"),
        (["add", "SEVENTEEN_CHARS_X"], "Error: invalid AE title"),
        (["add", "MR1", "--host", "scanner.local"], "Error: invalid host 'scanner.local'"),
        (["add", "CT1"], "Error: modality CT1 is already registered"),
        (["remove", "NOPE"], "Error: no modality 'NOPE' (see `neuronova modality list`)"),
    ],
)
def test_modality_errors_say_what_to_fix(
    home: Path, runner: CliRunner, args: list[str], message: str
) -> None:
    assert invoke(runner, home, "modality", "add", "CT1").exit_code == 0
    result = invoke(runner, home, "modality", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(rows(home, "SELECT * FROM audit")) == 1


# --- audit ---------------------------------------------------------------------------


def test_audit_table_filters_and_json(home: Path, runner: CliRunner) -> None:
    db = open_database(home / "db" / "appliance.db")
    db["audit"].insert(
        {"ts": audit.iso_ago(2 * 86400), "event": audit.LOGIN_FAILED, "username": "eve"}
    )
    audit.record(db, audit.LOGIN_OK, username="admin", client="10.0.0.5", method="password")
    audit.record(db, audit.LOGIN_FAILED, username="mallory", client="10.0.0.9")

    table = invoke(runner, home, "audit")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert [line.split()[2] for line in lines[1:]] == ["login_failed", "login_ok", "login_failed"]
    assert "admin" in lines[2] and "10.0.0.5" in lines[2] and "method=password" in lines[2]

    recent = invoke(runner, home, "audit", "--since", "1h")
    assert "mallory" in recent.output and "eve" not in recent.output
    assert "eve" in invoke(runner, home, "audit", "--since", "3d").output
    since_iso = audit.iso_ago(3 * 86400)[:16]  # 2026-01-31T08:00, read as UTC
    assert "eve" in invoke(runner, home, "audit", "--since", since_iso).output

    failed = invoke(runner, home, "audit", "--event", "login_failed", "--json")
    events = json.loads(failed.output)
    assert [e["username"] for e in events] == ["mallory", "eve"]
    newest = json.loads(invoke(runner, home, "audit", "--limit", "1", "--json").output)
    assert [e["username"] for e in newest] == ["mallory"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "3x"], "Invalid value for '--since': '3x' is neither a duration"),
        (["--since", "yesterday"], "(45s, 30m, 1h, 2d) nor an ISO time"),
        (["--event", "nope"], "Invalid value for '--event'"),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_audit_bad_options(home: Path, runner: CliRunner, args: list[str], message: str) -> None:
    result = invoke(runner, home, "audit", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_audit_when_empty(home: Path, runner: CliRunner) -> None:
    result = invoke(runner, home, "audit", "--since", "30m")
    assert result.exit_code == 0
    assert result.output.startswith("No audit events since 20")


# --- ingest status / retry -----------------------------------------------------------


def test_ingest_status_on_an_empty_journal(home: Path, runner: CliRunner) -> None:
    result = invoke(runner, home, "ingest", "status")
    assert result.exit_code == 0
    assert "No objects received yet" in result.output
    assert "neuronova import PATH" in result.output
    unknown = invoke(runner, home, "ingest", "status", "--study", "1.2.3")
    assert unknown.exit_code == 1
    assert "Error: no object of study 1.2.3 was received" in unknown.output


def test_ingest_status_shows_progress_and_failures(
    home: Path, settings: Settings, runner: CliRunner
) -> None:
    ct, mr, _ = accept(settings, *SAMPLES)
    Journal(home / "db" / "appliance.db").fail(mr, spool_path(home, mr), "Orthanc refused it")

    result = invoke(runner, home, "ingest", "status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[4:8] == ["RECEIVED", "TRANSCODED", "STORED", "FAILED"]
    mr_study = next(line for line in lines[1:4] if "CompressedSamples^MR1" in line)
    assert mr_study.split()[4:8] == ["1", "0", "0", "1"]
    assert (
        "Total: 3 object(s) in 3 study(ies): 0 stored (0 transcoded to HTJ2K, "
        "0 kept as received), 2 waiting, 1 failed." in result.output
    )
    assert mr in result.output and "Orthanc refused it" in result.output
    assert "neuronova ingest retry" in result.output

    study = rows(home, "SELECT study_uid FROM instances WHERE sop_uid = ?", [ct])[0][0]
    data = json.loads(invoke(runner, home, "ingest", "status", "--study", study, "--json").output)
    assert [s["study_uid"] for s in data["studies"]] == [study]
    assert data["totals"] == {
        "studies": 1,
        "received": 1,
        "transcoded": 0,
        "stored": 0,
        "failed": 0,
        "waiting": 1,
    }
    assert data["failed"] == []


def test_ingest_retry_puts_failed_objects_back_in_the_queue(
    home: Path, settings: Settings, runner: CliRunner
) -> None:
    ct, mr, _ = accept(settings, *SAMPLES)
    journal = Journal(home / "db" / "appliance.db")
    journal.fail(ct, spool_path(home, ct), "boom")
    queued_before = create_queue(settings).huey.pending_count()

    result = invoke(runner, home, "ingest", "retry")
    assert result.exit_code == 0, result.output
    assert "Queued 1 failed object(s) again" in result.output
    assert "at the next `neuronova run`" in result.output
    assert rows(home, "SELECT state FROM instances WHERE sop_uid = ?", [ct]) == [("received",)]
    assert create_queue(settings).huey.pending_count() == queued_before + 1

    nothing = invoke(runner, home, "ingest", "retry")
    assert nothing.exit_code == 0 and "No failed object to retry." in nothing.output
    journal.fail(mr, spool_path(home, mr), "boom")
    partly = invoke(runner, home, "ingest", "retry", mr, "1.2.3")
    assert partly.exit_code == 1
    assert "Queued 1 failed object(s) again" in partly.output
    assert "Error: not failed (or unknown), left alone: 1.2.3." in partly.output


# --- import --------------------------------------------------------------------------


def ct_slice(study: str, series: str, number: int, size: int = 256) -> Dataset:
    """One synthetic signed 16-bit CT slice of a series (air, soft tissue, bone)."""
    hu = np.full((size, size), -1000, np.int16)
    hu[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 40
    hu[size // 2 :, size // 2 : size // 2 + 10 + number] = 700
    return native_dataset(
        hu, StudyInstanceUID=study, SeriesInstanceUID=series, Modality="CT",
        PatientName="IMPORT^TEST", PatientID="IMP-1", InstanceNumber=number,
        RescaleIntercept=0, RescaleSlope=1,
    )  # fmt: skip


def mixed_tree(root: Path) -> Path:
    """3 DICOM files, a text file, a DICOMDIR, a truncated DICOM and a symlink loop."""
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(TEST_FILES / SAMPLES[0], root / "ct.dcm")
    shutil.copy(TEST_FILES / SAMPLES[1], root / "a" / "mr.dcm")
    shutil.copy(TEST_FILES / SAMPLES[2], root / "a" / "b" / "IM0001")
    (root / "a" / "README.txt").write_text("exported from the old PACS\n")
    shutil.copy(DICOMDIR, root / "DICOMDIR")
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    (root / "a" / "cut.dcm").write_bytes(data[: len(data) - 1000])
    (root / "a" / "b" / "loop").symlink_to(root)
    return root


def test_import_mixed_tree_counts_every_file(tmp_path: Path, home: Path, runner: CliRunner) -> None:
    tree = mixed_tree(tmp_path / "archive")
    result = runner.invoke(cli, ["import", str(tree), "--home", str(home), "--no-wait"])
    assert result.exit_code == 1
    out = result.output
    assert f"Found 6 file(s) in {tree}:" in out
    for label, count in [
        ("imported", 3),
        ("skipped, not DICOM", 1),
        ("skipped, DICOMDIR", 1),
        ("failed", 1),
    ]:
        assert f"  {label:<20} {count:>6}" in out
    assert "already in archive" not in out
    assert "Stored 0 of 3 object(s)" in out
    assert "safely spooled and will be processed at the next `neuronova run`" in out
    assert "Failed:\n  a/cut.dcm: the file is cut short (an incomplete copy?)\n" in out
    assert "Error: 1 file(s) were not imported (listed above)" in out

    journal = rows(home, "SELECT sop_uid, state, source, spool_path FROM instances")
    assert len(journal) == 3
    assert {(state, source) for _, state, source, _ in journal} == {("received", "import")}
    assert all((home / "spool" / name).is_file() for *_, name in journal)
    assert len(list((home / "spool").glob("*.dcm"))) == 3


def test_import_again_counts_objects_already_in_the_archive(
    tmp_path: Path, home: Path, runner: CliRunner
) -> None:
    file = tmp_path / "ct.dcm"
    shutil.copy(TEST_FILES / "CT_small.dcm", file)
    first = invoke(runner, home, "import", str(file), "--no-wait")
    assert first.exit_code == 0, first.output
    db = open_database(home / "db" / "appliance.db")
    db.execute("UPDATE instances SET state = 'stored', action = 'transcoded'")
    db.conn.commit()

    again = invoke(runner, home, "import", str(file), "--no-wait")
    assert again.exit_code == 0, again.output
    assert f"  {'already in archive':<20} {1:>6}  (imported again" in again.output
    assert rows(home, "SELECT state FROM instances") == [("received",)]
    assert len(list((home / "spool").glob("*.dcm"))) == 2


def test_import_reports_missing_uids_and_caps_the_failure_list(
    tmp_path: Path, home: Path, runner: CliRunner
) -> None:
    tree = tmp_path / "bad"
    tree.mkdir()
    no_uid = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del no_uid.SOPInstanceUID
    for n in range(55):
        no_uid.save_as(tree / f"{n:02}.dcm", enforce_file_format=True)
    result = invoke(runner, home, "import", str(tree), "--no-wait")
    assert result.exit_code == 1
    assert "  00.dcm: the object has no SOPInstanceUID" in result.output
    assert "  49.dcm:" in result.output and "  50.dcm:" not in result.output
    assert "  ... and 5 more" in result.output
    assert rows(home, "SELECT count(*) FROM instances") == [(0,)]


def test_import_stops_early_when_the_disk_is_full(
    tmp_path: Path, home: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = mixed_tree(tmp_path / "archive")
    monkeypatch.setenv("NEURONOVA_DICOM_MIN_FREE_MB", str(10**9))
    result = invoke(runner, home, "import", str(tree), "--no-wait")
    assert result.exit_code == 1
    assert "Error: the import stopped early: could not write to the data home: less than" in (
        result.output
    )
    assert "Free disk space in" in result.output and "run the same import again" in result.output
    assert f"  {'skipped, DICOMDIR':<20} {1:>6}" in result.output  # sorted first
    assert f"  {'not attempted':<20} {5:>6}" in result.output
    assert rows(home, "SELECT count(*) FROM instances") == [(0,)]
    assert not list((home / "spool").glob("*.dcm"))


def test_import_on_a_missing_home_says_run_init(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["import", str(tmp_path), "--home", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "is not a NeuroNova home yet. Run `neuronova init" in result.output


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("CT_small.dcm", -1000),  # inside native pixel data
        ("JPEG2000.dcm", -100),  # inside encapsulated pixel data
        ("CT_small.dcm", 700),  # inside a header value
        ("MR_truncated.dcm", None),  # pydicom's own truncated file
    ],
)
def test_truncated_files_are_refused(tmp_path: Path, name: str, cut: int | None) -> None:
    data = (TEST_FILES / name).read_bytes()
    (tmp_path / name).write_bytes(data[:cut])
    with pytest.raises(UnusableFile, match="cut short"):
        read_object(tmp_path / name)


@pytest.mark.parametrize("name", [*SAMPLES, "image_dfl.dcm", "MR_small_bigendian.dcm"])
def test_complete_files_are_read(name: str) -> None:
    read = read_object(TEST_FILES / name)
    assert read is not None and read[1].SOPInstanceUID


# --- end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_import_into_the_running_appliance_waits_until_stored(appliance, tmp_path: Path) -> None:
    tree = tmp_path / "archive"
    (tree / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"):
        renamed_copy(TEST_FILES / name, tree / name)
    study, series = generate_uid(), generate_uid()
    for n in range(1, 11):
        ct_slice(study, series, n).save_as(
            tree / "series" / f"CT{n:03}.dcm", enforce_file_format=True
        )
    (tree / "notes.txt").write_text("not DICOM")
    first = run_cli(appliance, "import", str(tree), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"  {'imported':<20} {14:>6}" in first.stdout
    assert f"  {'skipped, not DICOM':<20} {1:>6}" in first.stdout
    assert "Stored 14 of 14 object(s)" in first.stdout
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in tree.rglob("*.dcm")]
    marks = ", ".join("?" for _ in sops)
    states = rows(
        appliance.settings.home,
        f"SELECT state, action, count(*) FROM instances WHERE sop_uid IN ({marks}) "
        "GROUP BY state, action",
        sops,
    )
    counts = {action: count for state, action, count in states if state == "stored"}
    assert sum(counts.values()) == 14 and counts.get("transcoded", 0) >= 11
    assert (
        f"{counts.get('transcoded', 0)} transcoded to HTJ2K, {counts.get('kept', 0)} kept"
        in first.stdout
    )

    again = run_cli(appliance, "import", str(tree), timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"  {'already in archive':<20} {14:>6}" in again.stdout
    assert "Stored 14 of 14 object(s)" in again.stdout
