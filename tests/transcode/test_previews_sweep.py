"""JPEGs a stop left unwritten are written after the next start, by one task.

Real appliance: a series is stored with its JPEGs; with the appliance stopped, its queue
is lost and the journal says the JPEGs were never written (their files gone); the next
start queues a single ``write_pending_images`` task, which writes them all again.
"""

from __future__ import annotations

import sqlite3

import pytest

from appliance.db import converge_schema, open_database
from appliance.ingest.journal import Journal
from appliance.transcode.pipeline import Pipeline
from bench.synthetic import make_slices, write_series
from tests.support.running import storescu, wait_stored
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
SLICES = 12
JPEGS = ("rendered.jpg", "thumbnail.jpg")


def images_written(appliance, sops) -> bool:
    db = open_database(appliance.settings.layout.database_file)
    try:
        rows = {r["sop_uid"]: r["images_at"] for r in db["instances"].rows}
    finally:
        db.close()
    return all(rows.get(sop) for sop in sops)


def test_a_lost_queue_still_gets_every_jpeg_written(appliance_factory, tmp_path):
    appliance = appliance_factory()
    appliance.start()
    series = write_series(tmp_path / "ct", make_slices(SLICES))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
    wait_for(lambda: images_written(appliance, series.sop_uids), 120, "the JPEGs")
    appliance.stop()

    layout = appliance.settings.layout
    folder = layout.frames_dir / series.study_uid / series.series_uid
    for sop in series.sop_uids:
        for name in JPEGS:
            (folder / sop / name).unlink()
    with sqlite3.connect(layout.database_file) as db:
        db.execute("UPDATE instances SET images_at = NULL")
    with sqlite3.connect(layout.queue_file) as queue:  # the queue is lost (a new file)
        queue.execute("DELETE FROM task")

    appliance.start()
    wait_for(lambda: images_written(appliance, series.sop_uids), 120, "the JPEGs again")
    for sop in series.sop_uids:
        assert all((folder / sop / name).stat().st_size for name in JPEGS)
    log = (layout.log_dir / "worker.log").read_text()
    assert "queued the task writing them" in log


def test_the_sweep_asks_for_another_run_exactly_while_its_batch_comes_back_full(
    appliance, tmp_path
):
    """A sweep of ``limit`` reports more left when it wrote a full batch, and not once a
    batch comes back short. The instances are journal rows Orthanc (the shared
    appliance's, real) does not hold: their JPEGs are recorded as done without a file."""
    limit = 4
    path = tmp_path / "journal.db"
    converge_schema(open_database(path))
    journal = Journal(path)
    with journal.transaction() as db:
        db.conn.executemany(
            "INSERT INTO instances (sop_uid, spool_path, study_uid, series_uid, state, frames, "
            "received_at, updated_at) VALUES (?, ?, '1.2', '1.2.3', 'stored', 1, 't', 't')",
            [(f"1.2.3.4.{n}", f"1.2.3.4.{n}.{n:012}.dcm") for n in range(2 * limit + 1)],
        )
    pipeline = Pipeline(appliance.settings, journal=journal)
    outcomes = [pipeline.write_pending_images(limit) for _ in range(3)]
    assert [(o.state, o.more_left, o.retry_in) for o in outcomes] == [
        ("more", True, None),
        ("more", True, None),
        ("stored", False, None),
    ]
    assert journal.images_pending(limit) == []
