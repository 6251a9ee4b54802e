"""Deleting a study: the frame files' removal and the ``deleting`` mark at unit level, then
the real appliance: a study pushed with storescu and deleted through the API and the CLI
is gone from Orthanc, QIDO, the worklist and the disk, with an audit row."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests

from appliance.config import load_settings
from appliance.db import now_iso, open_database
from appliance.home import init_home
from appliance.ingest.intake import Ingest
from appliance.jobs.queue import create_queue
from appliance.jobs.work import worker_work
from appliance.lifecycle.deletion import StudyDeletionError, delete_study
from appliance.lifecycle.retention import cutoff, expired_studies
from appliance.store.frame_files import remove_study_files
from appliance.store.orthanc import OrthancStore
from appliance.transcode.pipeline import Pipeline
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.ports import reserve_port
from tests.support.running import run_cli, storescu, wait_stored
from tests.support.samples import TEST_FILES

STUDY, OTHER = "1.2.3.4", "1.2.3.5"
PASSWORD = "deletion test password"


# --- unit ------------------------------------------------------------------------------


def test_remove_study_files_removes_one_study_and_counts_its_bytes(tmp_path: Path) -> None:
    for study in (STUDY, OTHER):
        frames = tmp_path / study / "1.1" / "1.1.1" / "frames"
        frames.mkdir(parents=True)
        (frames / "1").write_bytes(b"x" * 100)
        (frames.parent / "thumbnail.jpg").write_bytes(b"y" * 20)
    assert remove_study_files(tmp_path, STUDY) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == [OTHER]
    assert remove_study_files(tmp_path, STUDY) == 0
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        remove_study_files(tmp_path, "..")


@pytest.fixture
def settings(tmp_path: Path):
    settings = load_settings(
        tmp_path / "home", {"internal.orthanc_port": reserve_port()}, environ={}
    )
    init_home(settings)
    return settings


@pytest.fixture
def ingest(settings) -> Ingest:
    return Ingest(settings, create_queue(settings))


def receive(ingest: Ingest, ds: pydicom.Dataset):
    path = ingest.spool.incoming / f"{pydicom.uid.generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ingest.receive(path, ds, "dicom:CT", "always")


def test_while_a_study_is_deleted_new_objects_are_held_and_waiting_ones_not_claimed(ingest):
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert receive(ingest, ds) is None
    sop, spool = ingest.journal.pending()[0]
    with ingest.journal.transaction() as db:
        db.execute(
            "INSERT INTO deleting (study_uid, username, started_at) VALUES (?, 'admin', ?)",
            [str(ds.StudyInstanceUID), now_iso()],
        )
    assert not ingest.journal.claim(sop, spool)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    refusal = receive(ingest, ds)
    assert refusal.comment == "Refused: an admin is deleting this study"
    assert [row["sop_uid"] for row in ingest.journal.held()] == [ds.SOPInstanceUID]


def test_with_orthanc_down_nothing_is_removed(settings, ingest):
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    receive(ingest, ds)
    study = str(ds.StudyInstanceUID)
    with pytest.raises(StudyDeletionError, match=r"Orthanc did not delete study .*try again"):
        delete_study(settings, ingest.journal, study, "admin")
    assert ingest.journal.read(lambda db: db["studies"].count_where("study_uid = ?", [study]))
    assert ingest.journal.read(lambda db: db["deleting"].count) == 0
    assert settings.layout.spool_file(ingest.journal.pending()[0][1]).exists()


def test_retention_is_off_by_default_and_expires_by_study_date_or_received(tmp_path):
    def home(name: str, values: dict[str, object] | None = None):
        settings = load_settings(tmp_path / name, values, environ={})
        init_home(settings)
        ingest = Ingest(settings, create_queue(settings))
        for date in ("19990101", "20250101", ""):
            ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
            ds.StudyInstanceUID, ds.SOPInstanceUID = f"1.2.{date or 0}", f"1.2.{date or 0}.1"
            ds.StudyDate = date
            receive(ingest, ds)
        return settings, ingest.journal

    today = dt.date(2026, 6, 1)
    assert expired_studies(*home("off"), today) == []
    by_date = expired_studies(*home("date", {"retention.years": 10}), today)
    assert [s["study_uid"] for s in by_date] == ["1.2.19990101"]
    settings, journal = home("received", {"retention.years": 1, "retention.by": "received"})
    with journal.transaction() as db:
        db.execute(
            "UPDATE studies SET received_at = '2020-01-01T00:00:00' WHERE study_uid = '1.2.0'"
        )
    assert [s["study_uid"] for s in expired_studies(settings, journal, today)] == ["1.2.0"]
    assert cutoff(1, dt.date(2024, 2, 29)) == dt.date(2023, 2, 28)


def test_the_worker_runs_retention_hourly_and_keeps_what_orthanc_cannot_delete(settings, ingest):
    queue = create_queue(settings)
    assert queue.retention.task_class().validate_datetime(dt.datetime(2026, 1, 1, 5, 17))
    assert not queue.retention.task_class().validate_datetime(dt.datetime(2026, 1, 1, 5, 18))
    receive(ingest, pydicom.dcmread(TEST_FILES / "CT_small.dcm"))  # StudyDate 20040119
    on = settings.with_values({"retention.years": 1})
    work = worker_work(on, ingest.journal)
    assert create_queue(on, work=work).retention.call_local() == 0  # Orthanc down
    assert ingest.journal.read(lambda db: db["studies"].count) == 1


# --- end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(appliance) -> dict[str, str]:
    """Access tokens of the admin and of a radiologist ``rad.del``."""
    added = run_cli(appliance, "user", "add", "rad.del", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    return {
        "admin": api_token(appliance, "admin", appliance.admin_password),
        "radiologist": api_token(appliance, "rad.del", PASSWORD),
    }


def push(appliance, directory: Path, slices: int = 3):
    series = write_series(directory, make_slices(slices))
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    return series


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_gone(appliance, token: str, series) -> None:
    """Orthanc, QIDO, the worklist, the journal and the frame files hold nothing of it."""
    assert OrthancStore(appliance.settings).fetch(series.sop_uids[0]) is None
    qido = requests.get(f"{appliance.url}/api/pacs/dicom-web/studies", headers=auth(token),
                        params={"StudyInstanceUID": series.study_uid}, timeout=10)  # fmt: skip
    assert qido.status_code in (200, 204) and (qido.content.strip() in (b"", b"[]"))
    worklist = requests.get(f"{appliance.url}/api/studies", headers=auth(token),
                            params={"q": series.study_uid}, timeout=10)  # fmt: skip
    assert worklist.json()["total"] == 0
    layout = appliance.settings.layout
    assert not (layout.frames_dir / series.study_uid).exists()
    db = open_database(layout.database_file)
    for table in ("instances", "series", "studies"):
        assert not db[table].count_where("study_uid = ?", [series.study_uid])
    db.close()


def deletion_audit(appliance, study_uid: str) -> list[dict]:
    db = open_database(appliance.settings.layout.database_file)
    rows = list(db.query("SELECT * FROM audit WHERE event = 'study_deleted' AND study_uid = ?",
                         [study_uid]))  # fmt: skip
    db.close()
    return rows


@pytest.mark.slow
def test_an_admin_deletes_a_study_through_the_api(appliance, tokens, tmp_path):
    series = push(appliance, tmp_path)
    url = f"{appliance.url}/api/studies/{series.study_uid}"
    resp = requests.delete(url, headers=auth(tokens["admin"]), timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["instances"] == 3 and body["patient_id"] == "NNBENCH0001"
    assert body["bytes_freed"] > 0
    assert_gone(appliance, tokens["admin"], series)
    [row] = deletion_audit(appliance, series.study_uid)
    assert row["username"] == "admin" and row["patient_id"] == "NNBENCH0001"
    assert json.loads(row["detail"])["instances"] == 3
    again = requests.delete(url, headers=auth(tokens["admin"]), timeout=60)
    assert again.status_code == 404 and again.json()["error"] == "not_found"


@pytest.mark.slow
def test_only_admins_delete_and_bad_uids_get_json_errors(appliance, tokens, tmp_path):
    series = push(appliance, tmp_path, slices=1)
    url = f"{appliance.url}/api/studies/{series.study_uid}"
    denied = requests.delete(url, headers=auth(tokens["radiologist"]), timeout=10)
    assert denied.status_code == 403 and denied.json()["error"] == "role_denied"
    unknown = requests.delete(f"{appliance.url}/api/studies/1.2.999", timeout=10,
                              headers=auth(tokens["admin"]))  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    invalid = requests.delete(f"{appliance.url}/api/studies/1.2.x", timeout=10,
                              headers=auth(tokens["admin"]))  # fmt: skip
    assert invalid.status_code == 400 and invalid.json()["error"] == "invalid_query"
    assert OrthancStore(appliance.settings).fetch(series.sop_uids[0]) is not None


@pytest.mark.slow
def test_the_cli_asks_before_deleting_a_study(appliance, tokens, tmp_path):
    series = push(appliance, tmp_path)
    refused = run_cli(appliance, "study", "delete", series.study_uid, stdin="n\n")
    assert refused.returncode == 1 and "BENCH^PHANTOM" in refused.stdout
    assert OrthancStore(appliance.settings).fetch(series.sop_uids[0]) is not None
    done = run_cli(appliance, "study", "delete", series.study_uid, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"Deleted study {series.study_uid} (patient ID 'NNBENCH0001'): 3 instances" in (
        done.stdout
    )
    assert_gone(appliance, tokens["admin"], series)
    [row] = deletion_audit(appliance, series.study_uid)
    assert row["username"].startswith("cli:")
    missing = run_cli(appliance, "study", "delete", series.study_uid, "--yes")
    assert missing.returncode == 1
    assert f"Error: no study {series.study_uid} in the archive" in missing.stderr


def retention_cli(appliance, *args: str) -> subprocess.CompletedProcess:
    """``neuronova retention`` on the appliance's home with a 100-year rule by StudyDate
    (studies of other test modules, pydicom's samples among them, are younger)."""
    env = {**appliance.env, "NEURONOVA_RETENTION_YEARS": "100"}
    command = [sys.executable, "-m", "appliance", "retention", *args,
               "--home", str(appliance.settings.home)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_retention_dry_run_lists_exactly_the_old_study_and_the_real_run_deletes_it(
    appliance, tokens, tmp_path
):
    old, young = push(appliance, tmp_path / "old"), push(appliance, tmp_path / "young")
    db = open_database(appliance.settings.layout.database_file)
    with db.conn:  # as if it had been sent with StudyDate 1901-01-01
        db.execute("UPDATE studies SET study_date = '19010101' WHERE study_uid = ?",
                   [old.study_uid])  # fmt: skip
    db.close()
    off = run_cli(appliance, "retention", "--dry-run")
    assert off.returncode == 1 and "Error: retention is off" in off.stderr
    dry = retention_cli(appliance, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("1 studies older than 100 years by study_date:")
    assert old.study_uid in dry.stdout and young.study_uid not in dry.stdout
    assert OrthancStore(appliance.settings).fetch(old.sop_uids[0]) is not None
    real = retention_cli(appliance, "--yes")
    assert real.returncode == 0 and "Deleted 1 of 1 studies." in real.stdout, real.stderr
    assert_gone(appliance, tokens["admin"], old)
    assert OrthancStore(appliance.settings).fetch(young.sop_uids[0]) is not None
    [row] = deletion_audit(appliance, old.study_uid)
    assert row["username"] == "retention"


@pytest.mark.slow
def test_a_jpeg_task_racing_a_deletion_writes_nothing_back(appliance, tokens, tmp_path):
    """The worst moment: a JPEG task fetched the instance from Orthanc, then the study is
    deleted (its files removed), then the task writes the JPEGs."""
    series = push(appliance, tmp_path, slices=2)
    sop = series.sop_uids[1]
    pipeline = Pipeline(appliance.settings)
    with pipeline.journal.transaction() as db:
        spool = db.execute(
            "UPDATE instances SET images_at = NULL WHERE sop_uid = ? RETURNING spool_path", [sop]
        ).fetchone()[0]
    fetch = pipeline.orthanc.fetch

    def fetch_then_delete(uid: str, keys: tuple[str, str, str] | None = None) -> bytes | None:
        data = fetch(uid, keys)
        delete_study(appliance.settings, pipeline.journal, series.study_uid, "admin")
        return data

    pipeline.orthanc.fetch = fetch_then_delete
    assert pipeline.write_images(sop, spool).state == "stored"
    assert not (appliance.settings.layout.frames_dir / series.study_uid).exists()


@pytest.mark.slow
def test_an_object_arriving_while_its_study_is_deleted_is_held_not_archived(appliance, tmp_path):
    series = write_series(tmp_path, make_slices(1))
    sop = series.sop_uids[0]
    db = open_database(appliance.settings.layout.database_file)
    with db.conn:  # what delete_study holds while it runs
        db.execute("INSERT INTO deleting (study_uid, username, started_at) VALUES (?, ?, ?)",
                   [series.study_uid, "admin", now_iso()])  # fmt: skip
    try:
        sent = storescu(appliance, series.files, "STORESCU", "-d")
    finally:
        with db.conn:
            db.execute("DELETE FROM deleting WHERE study_uid = ?", [series.study_uid])
    assert re.findall(r"DIMSE Status\s+: (0x[0-9A-F]{4})", sent.stderr) == ["0x0124"]
    assert "Refused: an admin is deleting this study" in sent.stderr
    [held] = list(db.query("SELECT id, reason FROM held WHERE sop_uid = ?", [sop]))
    assert "was being deleted by an admin" in held["reason"]
    assert not db["instances"].count_where("sop_uid = ?", [sop])
    db.close()
    assert OrthancStore(appliance.settings).fetch(sop) is None
    discarded = run_cli(appliance, "held", "discard", str(held["id"]))
    assert discarded.returncode == 0, discarded.stderr
