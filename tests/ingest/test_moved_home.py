"""A data home moved to another folder, or restored from a backup to another path, keeps
every object it had acknowledged but not yet stored: the journal names spool files by
their name in the home's spool folder, not by absolute path.

Last session a bench home with 3,103 objects still queued was renamed; at its next start
recovery took the spool files under the new path for unknown copies, removed them, and
failed every object with "cannot read the spooled object" (issue 20's bench notes).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.db import open_database
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from bench.synthetic import Series, make_slices, write_series
from tests.support.backups import neuronova
from tests.support.clients import api_token, dicomweb
from tests.support.running import Appliance, journal_states, run_cli, storescu
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
SLICES = 12
HTJ2K = "1.2.840.10008.1.2.4.201"
# Recovery leaves spool files younger than a minute to a receiver that may be journaling
# them (intake.SETTLE_SECONDS); a home is moved after it has been stopped for longer.
STOPPED_FOR = 600


def settled(appliance: Appliance, sop_uids: list[str]) -> bool:
    """Whether every one of ``sop_uids`` is stored or failed."""
    states = journal_states(appliance, sop_uids)
    return len(states) == len(sop_uids) and set(states.values()) <= {"stored", "failed"}


def errors(appliance: Appliance) -> list[str]:
    """The distinct errors of the journal's failed objects."""
    db = open_database(appliance.settings.layout.database_file)
    found = db.execute("SELECT DISTINCT error FROM instances WHERE state = 'failed'").fetchall()
    db.close()
    return [row[0] for row in found]


def hold_pending(appliance: Appliance, folder: Path) -> Series:
    """Send a CT series to the running ``appliance`` while its worker is frozen, then stop
    it: every object acknowledged and journaled, none stored (the frozen worker is killed
    after its stop timeout)."""
    os.kill(appliance.child_pid("worker"), signal.SIGSTOP)
    series = write_series(folder / "series", make_slices(SLICES))
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    assert journal_states(appliance, series.sop_uids) == dict.fromkeys(series.sop_uids, "received")
    return series


def start_in(appliance: Appliance, home: Path) -> None:
    """Start ``appliance`` on the home now at ``home``, with the same settings."""
    appliance.settings = dataclasses.replace(appliance.settings, home=home)
    let_workers_reach(worker_user(appliance.settings), Path(tempfile.gettempdir()), [home])
    appliance.start()


def assert_all_stored(appliance: Appliance, series: Series) -> None:
    """Every instance of ``series`` stored, in Orthanc with its pixels, the spool emptied,
    and no spool file taken for a stray copy on the way."""
    sop_uids = series.sop_uids
    wait_for(lambda: settled(appliance, sop_uids), 180, "every object to settle")
    states = journal_states(appliance, sop_uids)
    assert states == dict.fromkeys(sop_uids, "stored"), errors(appliance)
    home = appliance.settings.home
    assert "another copy of it is journaled" not in (home / "logs" / "worker.log").read_text()
    wait_for(lambda: not list((home / "spool").glob("*.dcm")), 30, "the spool emptied")
    client = dicomweb(appliance, api_token(appliance, "admin", appliance.admin_password))
    found = client.search_for_instances(study_instance_uid=series.study_uid)
    assert sorted(f["00080018"]["Value"][0] for f in found) == sorted(sop_uids)
    slices = make_slices(SLICES)
    for index, sop in enumerate(sop_uids):
        ds = client.retrieve_instance(series.study_uid, series.series_uid, sop)
        assert ds.file_meta.TransferSyntaxUID == HTJ2K
        assert np.array_equal(ds.pixel_array, slices[index])


def test_a_moved_home_stores_every_object_it_had_pending(appliance_factory, tmp_path):
    appliance = appliance_factory().start()
    series = hold_pending(appliance, tmp_path)
    appliance.stop()
    old_home = appliance.settings.home
    spooled = list((old_home / "spool").glob("*.dcm"))
    assert len(spooled) == SLICES
    aged = time.time() - STOPPED_FOR
    for path in spooled:
        os.utime(path, (aged, aged))
    new_home = tmp_path / "moved" / "neuronova"
    new_home.parent.mkdir()
    shutil.move(old_home, new_home)
    start_in(appliance, new_home)
    assert_all_stored(appliance, series)
    assert not old_home.exists()  # nothing was written back to the old place


def test_a_home_restored_elsewhere_stores_what_its_backup_had_pending(appliance_factory, tmp_path):
    """The backup holds the spool and the journal; the restored home stores the pending
    objects from its own spool and leaves the original home's files alone."""
    appliance = appliance_factory().start()
    series = hold_pending(appliance, tmp_path)
    backed = run_cli(appliance, "backup", str(tmp_path / "backup"))
    assert backed.returncode == 0, backed.stderr
    appliance.stop()
    original = appliance.settings.home
    kept = sorted(original.glob("spool/*.dcm"))
    assert len(kept) == SLICES
    restored = tmp_path / "restored" / "home"
    key = appliance.settings.layout.backup_key_file
    done = neuronova("restore", str(tmp_path / "backup"), "--home", str(restored),
                     "--key-file", str(key))  # fmt: skip
    assert done.returncode == 0, done.stderr
    start_in(appliance, restored)
    assert_all_stored(appliance, series)
    assert sorted(original.glob("spool/*.dcm")) == kept
