"""A data home moved to another folder keeps every object it had acknowledged but not yet
stored: the journal names spool files by their place in the home, not by absolute path.

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
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token, dicomweb
from tests.support.running import Appliance, journal_states, storescu
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


def test_a_moved_home_stores_every_object_it_had_pending(appliance_factory, tmp_path):
    appliance = appliance_factory().start()
    worker = appliance.child_pid("worker")
    os.kill(worker, signal.SIGSTOP)  # objects are received and journaled, none stored
    series = write_series(tmp_path / "series", make_slices(SLICES))
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    assert journal_states(appliance, series.sop_uids) == dict.fromkeys(series.sop_uids, "received")
    appliance.stop()  # the stopped worker is killed after its stop timeout: nothing stored

    old_home = appliance.settings.home
    spooled = sorted(path.name for path in (old_home / "spool").glob("*.dcm"))
    assert len(spooled) == SLICES
    aged = time.time() - STOPPED_FOR
    for name in spooled:
        os.utime(old_home / "spool" / name, (aged, aged))
    new_home = tmp_path / "moved" / "neuronova"
    new_home.parent.mkdir()
    shutil.move(old_home, new_home)
    appliance.settings = dataclasses.replace(appliance.settings, home=new_home)
    let_workers_reach(worker_user(appliance.settings), Path(tempfile.gettempdir()), [new_home])

    appliance.start()
    wait_for(lambda: settled(appliance, series.sop_uids), 180, "every object to settle")
    assert journal_states(appliance, series.sop_uids) == dict.fromkeys(series.sop_uids, "stored"), (
        errors(appliance)
    )
    log = (new_home / "logs" / "worker.log").read_text()
    assert "another copy of it is journaled" not in log  # no spool file taken for a stray
    wait_for(lambda: not list((new_home / "spool").glob("*.dcm")), 30, "the spool emptied")
    assert not old_home.exists()  # nothing was written back to the old place
    client = dicomweb(appliance, api_token(appliance, "admin", appliance.admin_password))
    found = client.search_for_instances(study_instance_uid=series.study_uid)
    assert sorted(f["00080018"]["Value"][0] for f in found) == sorted(series.sop_uids)
    slices = make_slices(SLICES)
    for index, sop in enumerate(series.sop_uids):
        ds = client.retrieve_instance(series.study_uid, series.series_uid, sop)
        assert ds.file_meta.TransferSyntaxUID == HTJ2K
        assert np.array_equal(ds.pixel_array, slices[index])
