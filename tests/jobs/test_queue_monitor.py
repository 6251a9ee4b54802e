"""The queue monitor (appliance.jobs.monitor): tasks by kind from Huey, the journal
and the workers' activity; ``/api/admin/queue`` and its retry; the slow test fails an
object for real in the running appliance, fixes it and retries it from the API."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from io import BytesIO

import pydicom
import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from appliance.cli import cli
from appliance.config import Settings, load_settings
from appliance.db import open_database
from appliance.ingest.intake import Ingest
from appliance.ingest.journal import Journal
from appliance.jobs import monitor as monitor_module
from appliance.jobs.activity import (
    LIVE_FOR_S,
    TaskActivity,
    activity_dir,
    forget_stopped_workers,
)
from appliance.jobs.monitor import QueueMonitor, on
from appliance.jobs.queue import Queue, create_queue
from appliance.jobs.work import worker_work
from appliance.security import audit
from appliance.web.app import create_app
from appliance.web.queue import MAX_RETRY_UIDS
from tests.support.auth import PASSWORD, bearer
from tests.support.clients import api_token
from tests.support.ports import reserve_port
from tests.support.running import run_cli, wait_stored
from tests.support.samples import TEST_FILES, renamed_copy
from tests.support.waiting import wait_for

CT = TEST_FILES / "CT_small.dcm"


def accept(settings: Settings, queue: Queue) -> tuple[str, str]:
    """Spool, journal and queue a fresh copy of CT_small as the receiver does; returns
    (sop_uid, spool_path)."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ingest = Ingest(settings, queue=queue)
    ingest.accept(_bytes(ds), ds, source="test")
    sop = str(ds.SOPInstanceUID)
    return sop, ingest.journal.db["instances"].get(sop)["spool_path"]


def journal(settings: Settings) -> Journal:
    """The home's ingest journal."""
    return Journal(settings.layout.database_file)


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


def snapshot(settings: Settings, queue: Queue):
    db = open_database(settings.layout.database_file)
    try:
        return QueueMonitor(settings, queue).snapshot(on(db))
    finally:
        db.close()


# ---------------------------------------------------------------------- the monitor


def test_tasks_by_kind_from_huey_and_the_journal(settings: Settings) -> None:
    queue = create_queue(settings)
    objects = [accept(settings, queue) for _ in range(3)]
    queue.enqueue_ingest(*objects[0], delay=600)  # a retry waiting for its time
    queue.enqueue_images(*objects[1])
    ingest = Ingest(settings, queue=queue)
    ingest.journal.fail(*objects[2], "Orthanc refused it: 400 Bad Request")
    ingest.journal.db.execute(
        "UPDATE instances SET state = 'stored', frames = 1, images_at = NULL, stored_at = "
        "received_at WHERE sop_uid = ?",
        [objects[1][0]],
    )
    ingest.journal.db.conn.commit()

    state = snapshot(settings, queue)
    kinds = {k.kind: k for k in state.kinds}
    assert list(kinds)[:3] == ["ingest", "previews", "retention"] and "backups" in kinds
    assert (kinds["ingest"].pending, kinds["ingest"].scheduled) == (3, 1)
    assert (kinds["ingest"].waiting, kinds["ingest"].failed) == (1, 1)
    assert kinds["ingest"].oldest_pending_age_s is not None
    assert (kinds["previews"].pending, kinds["previews"].waiting) == (1, 1)
    assert kinds["previews"].oldest_pending_age_s is not None
    assert kinds["retention"].periodic and kinds["backups"].periodic
    assert (state.pending, state.scheduled, state.unclassified) == (4, 1, 0)
    assert state.failed_total == 1
    [failed] = state.failed
    assert failed["sop_uid"] == objects[2][0]
    assert failed["error"] == "Orthanc refused it: 400 Bad Request"
    json.dumps(state.to_json())  # the API's answer


def test_tasks_beyond_the_scan_limit_are_counted_not_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_module, "SCAN_LIMIT", 2)
    queue = create_queue(settings)
    for n in range(5):
        queue.enqueue_ingest(f"1.2.3.{n}", f"/nowhere/{n}.dcm")
    state = snapshot(settings, queue)
    assert (state.pending, state.unclassified, state.kind("ingest").pending) == (5, 3, 2)


class BrokenWork:
    """The worker's work, with a retention rule that fails as a full disk would."""

    def __init__(self, activity: TaskActivity) -> None:
        self.activity = activity
        self.running_seen: dict[str, int] = {}

    def apply_retention(self) -> int:
        self.running_seen = dict(self.activity.running)
        raise OSError(28, "No space left on device")


def test_running_tasks_and_last_outcomes_come_from_the_workers(settings: Settings) -> None:
    layout = settings.layout
    activity = TaskActivity.for_this_process(layout)
    work = BrokenWork(activity)
    failing = replace(worker_work(settings), apply_retention=work.apply_retention)
    queue = create_queue(settings, work=failing)
    activity.attach(queue.huey)
    queue.huey.execute(queue.retention.task_class())  # as the consumer runs a periodic task
    assert work.running_seen == {"retention": 1}
    activity.write()

    state = snapshot(settings, queue)
    retention = state.kind("retention")
    assert state.workers == 1 and retention.running == 0
    assert retention.last is not None and not retention.last["ok"]
    assert retention.last["error"] == "OSError: [Errno 28] No space left on device"

    stale = time.time() - LIVE_FOR_S - 1  # a worker that stopped without removing its file
    os.utime(activity.path, (stale, stale))
    assert snapshot(settings, queue).workers == 0
    forget_stopped_workers(layout)  # as the next worker to start does
    assert not list(activity_dir(layout).iterdir())


def test_a_redis_queue_is_read_through_the_same_api(
    settings: Settings,
    redis_url: str,
) -> None:
    on_redis = load_settings(settings.home, {"queue.redis_url": redis_url}, environ={})
    queue = create_queue(on_redis)
    queue.enqueue_ingest("1.2.3.1", "/nowhere/1.dcm")
    queue.enqueue_ingest("1.2.3.2", "/nowhere/2.dcm", delay=600)
    queue.enqueue_images("1.2.3.3", "/nowhere/3.dcm")
    state = snapshot(on_redis, queue)
    assert (state.backend, state.error, state.pending, state.scheduled) == ("redis", None, 2, 1)
    ingest, previews = state.kind("ingest"), state.kind("previews")
    assert (ingest.pending, ingest.scheduled, previews.pending) == (1, 1, 1)


def test_an_unreachable_queue_still_shows_the_failed_objects(settings: Settings) -> None:
    sop, spool = accept(settings, create_queue(settings))
    journal(settings).fail(sop, spool, "cannot read the spooled object")
    nothing_there = load_settings(
        settings.home, {"queue.redis_url": f"redis://127.0.0.1:{reserve_port()}/0"}, environ={}
    )
    state = snapshot(nothing_there, create_queue(nothing_there))
    assert state.error is not None and state.error.startswith("queue storage unreachable")
    assert state.pending is None and state.kind("ingest").pending is None
    assert [f["sop_uid"] for f in state.failed] == [sop]


def test_ingest_status_prints_the_queue_by_kind_and_retry_is_audited(settings: Settings) -> None:
    sop, spool = accept(settings, create_queue(settings))
    journal(settings).fail(sop, spool, "Orthanc refused it")
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    shown = runner.invoke(cli, ["ingest", "status", *home])
    assert shown.exit_code == 0, shown.output
    assert "Queue (sqlite, no worker running):" in shown.output
    rows = {line.split()[0]: line.split()[1:] for line in shown.output.splitlines()
            if line.startswith("  ") and line.split()[0] in ("ingest", "retention")}  # fmt: skip
    assert rows["ingest"][:6] == ["1", "0", "0", "0", "-", "1"]  # pending ... failed
    assert rows["retention"][-3:] == ["no", "run", "recorded"]
    assert "Orthanc refused it" in shown.output
    data = json.loads(runner.invoke(cli, ["ingest", "status", "--json", *home]).output)
    assert data["queue"]["kinds"][0]["failed"] == 1 and "failed" not in data["queue"]
    assert [f["sop_uid"] for f in data["failed"]] == [sop]

    assert runner.invoke(cli, ["ingest", "retry", *home]).exit_code == 0
    [row] = audit.recent(open_database(settings.layout.database_file),
                         event=audit.ADMIN_CHANGE)  # fmt: skip
    assert row["username"].startswith("cli:")
    assert row["detail"] == {"action": "ingest_retried", "all": True, "count": 1,
                             "sop_uids": [sop]}  # fmt: skip


# --------------------------------------------------------------------- the admin API


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "Send either 'sop_uids' (a list of UIDs) or 'all': true."),
        ({"all": True, "sop_uids": ["1.2"]}, "Send either 'sop_uids'"),
        ({"all": False}, "Send either 'sop_uids'"),
        ({"sop_uids": []}, f"'sop_uids' must hold 1 to {MAX_RETRY_UIDS} UIDs"),
        ({"sop_uids": ["1.2"] * (MAX_RETRY_UIDS + 1)}, "use 'all': true for more"),
        ({"sop_uids": ["1.2", "../etc/passwd"]}, "not a UID (digits and dots, at most 64)"),
        ({"sop_uids": [12]}, "not a UID"),
        ({"sop_uids": "1.2"}, "'sop_uids' has the wrong type."),
    ],
)
async def test_retry_refuses_bad_input_with_a_json_reason(client, body, error) -> None:
    resp = await client.post(
        "/api/admin/queue/retry", json=body, headers=await bearer(client, "boss")
    )
    assert resp.status == 400
    assert error in (await resp.json())["message"]


async def test_queue_api_is_for_admins_and_retry_is_audited(client, settings: Settings) -> None:
    sop, spool = accept(settings, create_queue(settings))
    journal(settings).fail(sop, spool, "Orthanc refused it")
    reader = await bearer(client, "rad")
    assert (await client.get("/api/admin/queue", headers=reader)).status == 403
    denied = await client.post("/api/admin/queue/retry", json={"all": True}, headers=reader)
    assert denied.status == 403

    boss = await bearer(client, "boss")
    state = await (await client.get("/api/admin/queue", headers=boss)).json()
    assert [(f["sop_uid"], f["error"]) for f in state["failed"]] == [(sop, "Orthanc refused it")]
    retried = await client.post(
        "/api/admin/queue/retry", json={"sop_uids": [sop, "1.2.3"]}, headers=boss
    )
    assert await retried.json() == {"queued": [sop], "not_failed": ["1.2.3"]}
    after = await (await client.get("/api/admin/queue", headers=boss)).json()
    assert after["failed"] == [] and after["kinds"][0]["waiting"] == 1
    [row] = audit.recent(open_database(settings.layout.database_file),
                         event=audit.ADMIN_CHANGE)  # fmt: skip
    assert row["username"] == "boss"
    assert row["detail"] == {"action": "ingest_retried", "all": False, "count": 1,
                             "sop_uids": [sop]}  # fmt: skip
    system = await (await client.get("/api/admin/system", headers=boss)).json()
    assert system["ingest"]["failed"] == 0 and system["queue"]["pending"] == after["pending"]


async def test_retry_with_the_queue_storage_down_is_a_503(aiohttp_client, settings) -> None:
    sop, spool = accept(settings, create_queue(settings))
    journal(settings).fail(sop, spool, "Orthanc refused it")
    down = load_settings(
        settings.home, {"queue.redis_url": f"redis://127.0.0.1:{reserve_port()}/0"}, environ={}
    )
    client = await aiohttp_client(create_app(down))
    boss = await bearer(client, "boss")
    resp = await client.post("/api/admin/queue/retry", json={"all": True}, headers=boss)
    assert resp.status == 503
    assert (await resp.json())["error"] == "queue_unavailable"
    state = await (await client.get("/api/admin/queue", headers=boss)).json()
    assert state["error"].startswith("queue storage unreachable") and state["pending"] is None


# ----------------------------------------------------------- the running appliance


@pytest.mark.slow
def test_a_failed_object_shows_with_its_reason_and_comes_back_on_retry(appliance, tmp_path):
    """An object whose spooled copy is damaged fails in the real worker; once the file is
    repaired, the System page's retry stores it."""
    ds = renamed_copy(CT, tmp_path / "ct.dcm")
    settings = appliance.settings
    ingest = Ingest(settings, create_queue(settings))
    ingest.accept(b"DICM but not really", ds, source="test")
    sop = ds.SOPInstanceUID

    def failed() -> bool:
        row = ingest.journal.db["instances"].get(sop)
        return row["state"] == "failed"

    wait_for(failed, 60, "the damaged object to fail")
    admin = {"Authorization": f"Bearer {api_token(appliance, 'admin', appliance.admin_password)}"}

    def gauges() -> dict:
        scrape = requests.get(f"{appliance.url}/api/metrics", headers=admin, timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(scrape) for s in f.samples}  # fmt: skip

    pending_ingest = ("neuronova_queue_tasks", (("kind", "ingest"), ("state", "pending")))
    wait_for(lambda: gauges()[pending_ingest] == 0, 30, "the ingest queue's gauge to read 0")
    assert gauges()[("neuronova_ingest_objects", (("state", "failed"),))] >= 1
    resp = requests.get(f"{appliance.url}/api/admin/queue", headers=admin, timeout=30)
    assert resp.status_code == 200, resp.text
    state = resp.json()
    mine = next(f for f in state["failed"] if f["sop_uid"] == sop)
    assert mine["error"].startswith("cannot read the spooled object")
    assert state["workers"] >= 1 and state["kinds"][0]["failed"] >= 1
    assert "ingest status" not in resp.text  # data, not CLI hints

    added = run_cli(appliance, "user", "add", "rad.queue", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    reader = {"Authorization": f"Bearer {api_token(appliance, 'rad.queue', PASSWORD)}"}
    for method, path in (("get", ""), ("post", "/retry")):
        denied = requests.request(method, f"{appliance.url}/api/admin/queue{path}",
                                  json={"all": True}, headers=reader, timeout=10)  # fmt: skip
        assert denied.status_code == 403 and denied.json()["error"] == "role_denied"

    spool = settings.layout.spool_file(ingest.journal.db["instances"].get(sop)["spool_path"])
    spool.write_bytes((tmp_path / "ct.dcm").read_bytes())  # the cause fixed
    retried = requests.post(f"{appliance.url}/api/admin/queue/retry", headers=admin,
                            json={"sop_uids": [sop]}, timeout=30)  # fmt: skip
    assert retried.status_code == 200 and retried.json()["queued"] == [sop]
    wait_stored(appliance, [sop], timeout=60)
    after = requests.get(f"{appliance.url}/api/admin/queue", headers=admin, timeout=30).json()
    assert sop not in {f["sop_uid"] for f in after["failed"]}
    status = run_cli(appliance, "ingest", "status")
    assert status.returncode == 0 and "Queue (sqlite, 1 worker(s) running)" in status.stdout
