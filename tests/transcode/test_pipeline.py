"""The pipeline's failure paths on a real home and journal, with Orthanc really absent."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from appliance.config import load_settings
from appliance.db import converge_schema, open_database
from appliance.home import init_home
from appliance.ingest.intake import SETTLE_SECONDS, Ingest
from appliance.ingest.journal import Journal
from appliance.ingest.spool import STALE_PARTIAL
from appliance.jobs.queue import create_queue
from appliance.transcode import pipeline as pipeline_module
from appliance.transcode.pipeline import Pipeline
from tests.support.ports import reserve_port
from tests.support.waiting import wait_for


@pytest.fixture
def settings_home(tmp_path):
    """The settings of a home made by ``init_home`` whose Orthanc port has nothing behind
    it (named apart from the root ``home`` fixture, a path made by ``neuronova init``)."""
    settings = load_settings(
        tmp_path / "home", {"internal.orthanc_port": reserve_port()}, environ={}
    )
    init_home(settings)
    return settings


def accept_ct(settings) -> tuple[str, str]:
    """Spool and journal CT_small the way the receiver does; (sop_uid, spool_path)."""
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    ingest = Ingest(settings, queue=create_queue(settings, immediate=False))
    ingest.accept(path.read_bytes(), ds, source="test")
    row = ingest.journal.db["instances"].get(str(ds.SOPInstanceUID))
    return row["sop_uid"], row["spool_path"]


def test_orthanc_down_means_a_retry_with_backoff(settings_home):
    sop, spool = accept_ct(settings_home)
    outcome = Pipeline(settings_home).process(sop, spool)
    assert outcome.state == "retry" and outcome.retry_in == 2.0
    row = Journal(settings_home.layout.database_file).db["instances"].get(sop)
    assert row["state"] == "received" and "unreachable" in row["error"]
    assert settings_home.layout.spool_file(spool).exists()  # nothing is lost while Orthanc is away
    frames = settings_home.layout.frames_dir
    assert list(frames.rglob("frames/1"))  # frame files are ready before the store


def test_previews_wait_while_an_object_is_ingested(tmp_path):
    """A JPEG task that finds the worker ingesting is put off (ingest comes first on 2
    cores); once nothing is ingested it runs. Orthanc here is a port that accepts the
    connection and never answers, so the ingest stays in its store call until the port
    closes."""
    silent = socket.create_server(("127.0.0.1", 0))
    settings = load_settings(tmp_path / "home", {"internal.orthanc_port": silent.getsockname()[1]},
                             environ={})  # fmt: skip
    init_home(settings)
    sop, spool = accept_ct(settings)
    pipeline = Pipeline(settings)
    outcomes: list = []
    ingest = threading.Thread(target=lambda: outcomes.append(pipeline.process(sop, spool)))
    ingest.start()
    journal = Journal(settings.layout.database_file)
    wait_for(lambda: journal.db["instances"].get(sop)["state"] == "processing", 30, "the claim")
    later = pipeline.write_images(sop, spool)
    assert later.state == "later" and later.retry_in == pipeline_module.IMAGES_AFTER_INGEST
    silent.close()  # the store fails: the ingest ends (to be retried)
    ingest.join(60)
    assert outcomes[0].state == "retry"
    assert pipeline.write_images(sop, spool).state == "skipped"  # runs: nothing stored yet


def test_an_outage_never_fails_an_object_it_waits(settings_home, monkeypatch):
    """Orthanc really absent past MAX_ATTEMPTS: the object stays queued (retried every
    BACKOFF_CAP seconds at most), to go on by itself when Orthanc is back."""
    monkeypatch.setattr(pipeline_module, "MAX_ATTEMPTS", 2)
    sop, spool = accept_ct(settings_home)
    pipeline = Pipeline(settings_home)
    for _ in range(3):
        outcome = pipeline.process(sop, spool)
        assert outcome.state == "retry" and outcome.retry_in <= pipeline_module.BACKOFF_CAP
    row = pipeline.journal.db["instances"].get(sop)
    assert row["state"] == "received" and "unreachable" in row["error"]


@pytest.mark.slow
def test_too_many_retries_while_orthanc_answers_become_a_visible_failure(
    appliance, tmp_path, monkeypatch
):
    """A real Orthanc that answers but will not take the object (here: this home's
    credentials are not its own, HTTP 401) fails the object after MAX_ATTEMPTS."""
    monkeypatch.setattr(pipeline_module, "MAX_ATTEMPTS", 2)
    port = {"internal.orthanc_port": appliance.settings.internal.orthanc_port}
    settings = load_settings(tmp_path / "home", port, environ={})
    init_home(settings)
    sop, spool = accept_ct(settings)
    pipeline = Pipeline(settings)
    assert pipeline.process(sop, spool).state == "retry"
    assert pipeline.process(sop, spool).state == "failed"
    row = pipeline.journal.db["instances"].get(sop)
    assert row["state"] == "failed" and row["error"].startswith("gave up after 2 attempts")
    assert "HTTP 401" in row["error"]
    assert settings.layout.spool_file(spool).exists()  # kept for `neuronova ingest retry`


def test_an_older_copy_is_skipped_and_its_spool_file_removed(settings_home):
    first_sop, first_spool = accept_ct(settings_home)
    second_sop, second_spool = accept_ct(settings_home)
    assert first_sop == second_sop and first_spool != second_spool
    assert Pipeline(settings_home).process(first_sop, first_spool).state == "skipped"
    spooled = settings_home.layout.spool_file
    assert not spooled(first_spool).exists() and spooled(second_spool).exists()


def test_a_second_task_for_the_same_file_does_nothing(settings_home):
    sop, spool = accept_ct(settings_home)
    pipeline = Pipeline(settings_home)
    assert pipeline.journal.claim(sop, spool)
    assert pipeline.process(sop, spool).state == "skipped"
    assert settings_home.layout.spool_file(spool).exists()


def test_codec_warm_up_round_trips_grey_and_colour(monkeypatch):
    encoded = []
    real_encode = pipeline_module.imagecodecs.htj2k_encode

    def encode(image, **options):
        encoded.append((image.shape, image.dtype, options.get("rgb")))
        return real_encode(image, **options)

    monkeypatch.setattr(pipeline_module.imagecodecs, "htj2k_encode", encode)
    pipeline_module.warm_up_codec()
    assert encoded == [((16, 16), np.uint16, False), ((16, 16, 3), np.uint8, True)]


def test_codec_warm_up_refuses_a_codec_that_changes_pixels(monkeypatch):
    real_decode = pipeline_module.imagecodecs.htj2k_decode
    monkeypatch.setattr(pipeline_module.imagecodecs, "htj2k_decode",
                        lambda data, **options: real_decode(data, **options) ^ 1)  # fmt: skip
    with pytest.raises(RuntimeError, match="does not round-trip"):
        pipeline_module.warm_up_codec()


def test_an_older_database_gets_images_at_and_its_stored_rows_count_as_done(tmp_path):
    """Migration 1 (appliance.migrations) brings an older database up to date."""
    path = tmp_path / "app.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, "
                "series_uid TEXT NOT NULL, state TEXT NOT NULL, received_at TEXT NOT NULL, "
                "stored_at TEXT, frames INTEGER)")  # fmt: skip
    old.execute("INSERT INTO instances VALUES ('1.1', '1', '2', 'stored', 't0', 't1', 1)")
    old.execute("INSERT INTO instances VALUES ('1.2', '1', '2', 'received', 't0', NULL, NULL)")
    old.commit()
    old.close()
    db = open_database(path)
    assert "images_at" not in db["instances"].columns_dict  # opening changes nothing
    converge_schema(db)
    rows = {r["sop_uid"]: r for r in db["instances"].rows}
    assert rows["1.1"]["images_at"] == "t1" and rows["1.2"]["images_at"] is None


def test_recover_queues_one_task_for_the_jpegs_stored_instances_lack(settings_home):
    """One task for them all, whatever their number: a task each made a start with
    35,000 missing previews take seconds (issue 20), and queued them twice."""
    sop, spool = accept_ct(settings_home)
    journal = Journal(settings_home.layout.database_file)
    rows = [(f"{sop}.{n}", f"/spool/{n}.dcm") for n in range(200)]
    with journal.transaction() as db:
        db.execute("UPDATE instances SET state = 'stored', frames = 1 WHERE sop_uid = ?", [sop])
        db.conn.executemany(
            "INSERT INTO instances (sop_uid, spool_path, study_uid, series_uid, state, frames, "
            "received_at, updated_at) VALUES (?, ?, '1.2', '1.2.3', 'stored', 1, 't', 't')",
            rows,
        )
    queue = create_queue(settings_home)
    queue.huey.flush()
    Ingest(settings_home, queue=queue).recover()
    assert [task.name for task in queue.huey.pending()] == ["write_pending_images"]
    assert journal.images_written(sop, spool)
    for row in rows:
        journal.images_written(*row)
    queue.huey.flush()
    Ingest(settings_home, queue=queue).recover()
    assert queue.huey.pending() == []


def test_recover_drops_an_older_copy_instead_of_letting_it_win(settings_home):
    """Two copies, a crash before the older was processed: the journaled (newer) one wins,
    at this restart and every later one."""
    sop, older = accept_ct(settings_home)
    _, newer = accept_ct(settings_home)
    settled = time.time() - 2 * SETTLE_SECONDS
    os.utime(settings_home.layout.spool_file(older), (settled, settled))
    queue = create_queue(settings_home)
    for _ in range(2):
        queue.huey.flush()
        Ingest(settings_home, queue=queue).recover()
        row = Journal(settings_home.layout.database_file).db["instances"].get(sop)
        assert row["spool_path"] == newer and row["state"] == "received"
        spooled = settings_home.layout.spool_file
        assert not spooled(older).exists() and spooled(newer).exists()
        assert len(queue.huey.pending()) == 1


def test_recover_leaves_a_fresh_unjournaled_copy_to_the_receiver(settings_home):
    """A file younger than SETTLE_SECONDS may be a live receiver's, not yet journaled."""
    sop, journaled = accept_ct(settings_home)
    fresh = settings_home.layout.spool_file(journaled).with_name(f"{sop}.fresh0000000.dcm")
    fresh.write_bytes(settings_home.layout.spool_file(journaled).read_bytes())
    Ingest(settings_home, queue=create_queue(settings_home, immediate=False)).recover()
    assert fresh.exists()
    row = Journal(settings_home.layout.database_file).db["instances"].get(sop)
    assert row["spool_path"] == journaled


def test_recover_leaves_an_object_still_arriving_to_the_receiver(settings_home):
    """A worker (re)starting while a modality sends must not delete the file pynetdicom
    is writing in ``incoming/`` (the C-STORE would then fail); a file nothing wrote to
    for longer than an association may stay idle was interrupted and goes."""
    incoming = settings_home.layout.spool_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    arriving, interrupted = incoming / "arriving.dcm", incoming / "interrupted.dcm"
    for path in (arriving, interrupted):
        path.write_bytes(b"\0" * 1024)
    stale = time.time() - 2 * STALE_PARTIAL
    os.utime(interrupted, (stale, stale))
    Ingest(settings_home, queue=create_queue(settings_home, immediate=False)).recover()
    assert arriving.exists() and not interrupted.exists()


def test_a_task_queued_before_the_home_moved_is_still_done(settings_home):
    """A queued task names its spool file by the absolute path it had in the home's
    earlier place (queued before migration 5, then the home moved): it claims the file
    journaled in the spool folder now, and removes nothing."""
    sop, name = accept_ct(settings_home)
    outcome = Pipeline(settings_home).process(sop, f"/old/place/spool/{name}")
    assert outcome.state == "retry"  # claimed and tried; no Orthanc runs in this test
    assert settings_home.layout.spool_file(name).exists()


def test_recover_never_removes_a_file_the_journal_names_in_another_folder(settings_home):
    """Whatever path the journal recorded, a spool file of the same name is the object it
    still needs: recovery keeps it and queues it, even long after it was written."""
    sop, name = accept_ct(settings_home)
    Journal(settings_home.layout.database_file).db.execute(
        "UPDATE instances SET spool_path = ? WHERE sop_uid = ?", [f"/elsewhere/{name}", sop]
    ).connection.commit()
    path = settings_home.layout.spool_file(name)
    settled = time.time() - 2 * SETTLE_SECONDS
    os.utime(path, (settled, settled))
    queue = create_queue(settings_home, immediate=False)
    queue.huey.flush()  # the task accept_ct queued
    Ingest(settings_home, queue=queue).recover()
    assert path.exists()
    row = Journal(settings_home.layout.database_file).db["instances"].get(sop)
    assert row["spool_path"] == name and row["state"] == "received"
    assert len(queue.huey.pending()) == 1
