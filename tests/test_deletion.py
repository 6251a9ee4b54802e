"""Deleting a study: the frame files' removal and the ``deleting`` mark at unit level, then
the real appliance: a study pushed with storescu and deleted through the API and the CLI
is gone from Orthanc, QIDO, the worklist and the disk, with an audit row."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
import requests
from conftest import api_token, free_port, run_cli, storescu, wait_stored
from samples import TEST_FILES

from appliance.config import load_settings
from appliance.db import now_iso, open_database
from appliance.home import init_home
from appliance.ingest.intake import Ingest
from appliance.layout import HomeLayout
from appliance.store.deletion import StudyDeletionError, delete_study
from appliance.store.frame_files import remove_study_files
from appliance.store.orthanc import OrthancStore
from bench.synthetic import make_slices, write_series

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
    settings = load_settings(tmp_path / "home", {"orthanc_port": free_port()}, environ={})
    init_home(settings)
    return settings


@pytest.fixture
def ingest(settings) -> Ingest:
    return Ingest(settings)


def receive(ingest: Ingest, ds: pydicom.Dataset):
    path = ingest.spool.incoming / f"{pydicom.uid.generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ingest.receive(path, ds, "dicom:CT", "always")


def test_while_a_study_is_deleted_new_objects_are_held_and_waiting_ones_not_claimed(ingest):
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert receive(ingest, ds) is None
    sop, spool = ingest.journal.pending()[0]
    ingest.journal.read(lambda db: db.execute(
        "INSERT INTO deleting (study_uid, username, started_at) VALUES (?, 'admin', ?)",
        [str(ds.StudyInstanceUID), now_iso()]))  # fmt: skip
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
    assert Path(ingest.journal.pending()[0][1]).exists()


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
    layout = HomeLayout(appliance.settings.home)
    assert not (layout.frames_dir / series.study_uid).exists()
    db = open_database(layout.database_file)
    for table in ("instances", "series", "studies"):
        assert not db[table].count_where("study_uid = ?", [series.study_uid])
    db.close()


def deletion_audit(appliance, study_uid: str) -> list[dict]:
    db = open_database(HomeLayout(appliance.settings.home).database_file)
    rows = list(db.query("SELECT * FROM audit WHERE event = 'study_deleted' AND study_uid = ?",
                         [study_uid]))  # fmt: skip
    db.close()
    return rows


@pytest.mark.slow
def test_an_admin_deletes_a_study_through_the_api(appliance, tokens, tmp_path):
    series = push(appliance, tmp_path)
    url = f"{appliance.url}/api/studies/{series.study_uid}"
    started = time.monotonic()
    resp = requests.delete(url, headers=auth(tokens["admin"]), timeout=60)
    elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["instances"] == 3 and body["patient_id"] == "NNBENCH0001"
    assert body["bytes_freed"] > 0
    assert_gone(appliance, tokens["admin"], series)
    [row] = deletion_audit(appliance, series.study_uid)
    assert row["username"] == "admin" and row["patient_id"] == "NNBENCH0001"
    assert json.loads(row["detail"])["instances"] == 3
    assert elapsed < 10
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
