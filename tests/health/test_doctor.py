"""``neuronova doctor`` and ``/api/admin/doctor`` against the real appliance."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from appliance.backup.status import write_status
from appliance.config import load_settings
from appliance.health.doctor import (
    CHECKS,
    Context,
    check_backup,
    check_disk,
    check_exposure,
    check_queue,
)
from appliance.health.probes import WORKER_HEARTBEAT_MAX_AGE
from appliance.health.sockets import listeners
from appliance.jobs.queue import create_queue
from appliance.layout import HomeLayout
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.ports import reserve_port
from tests.support.running import run_cli, storescu, wait_stored

PASSWORD = "doctor-test-pass-1"
KNOWN_WARNINGS = {"backup"}  # a new home has no backup yet
NAMES = {fn.__name__.removeprefix("check_") for fn in CHECKS}


def _doctor_json(appliance) -> tuple[int, dict]:
    done = run_cli(appliance, "doctor", "--json", timeout=60)
    return done.returncode, json.loads(done.stdout)


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_listeners_tell_loopback_from_beyond():
    with socket.socket() as inner, socket.socket() as outer:
        inner.bind(("127.0.0.1", 0))
        outer.bind(("0.0.0.0", 0))
        inner.listen()
        outer.listen()
        found = {x.port: x for x in listeners()}
        assert found[inner.getsockname()[1]].loopback
        assert not found[outer.getsockname()[1]].loopback


def test_backup_check_reads_the_backup_status(home):
    ctx = Context(load_settings(home, {}, environ={}), db=None, http=None, queue=None)
    first = asyncio.run(check_backup(ctx))
    assert (first.status, first.fix) == ("WARN", "run `neuronova backup DEST`")
    write_status(HomeLayout(home), ok=False, dest="/mnt/nas", error="No space left on device")
    failed = asyncio.run(check_backup(ctx))
    assert failed.status == "FAIL" and "No space left on device" in failed.message
    write_status(HomeLayout(home), ok=True, dest="/mnt/nas")
    assert asyncio.run(check_backup(ctx)).status == "OK"


def test_disk_check_warns_where_status_does_and_fails_where_objects_are_refused(home):
    """WARN below ``[dicom] warn_free_mb`` (the health report's margin), FAIL below
    ``min_free_mb``, where the receiver refuses new objects."""
    HomeLayout(home).orthanc_dir.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(HomeLayout(home).orthanc_dir).free // 1024**2

    def disk(min_free_mb: int, warn_free_mb: int = 2048) -> str:
        values = {"dicom.min_free_mb": min_free_mb, "dicom.warn_free_mb": warn_free_mb}
        ctx = Context(load_settings(home, values, environ={}), db=None, http=None, queue=None)
        return asyncio.run(check_disk(ctx)).status

    assert disk(min_free_mb=1, warn_free_mb=2) == "OK"
    assert disk(min_free_mb=1, warn_free_mb=free_mb + 1024) == "WARN"
    assert disk(min_free_mb=free_mb + 1024) == "FAIL"


STRAY = (
    "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); "
    "print(s.getsockname()[1], flush=True); time.sleep(60)"
)


def test_a_socket_of_ours_beyond_loopback_fails(home):
    """A recorded child of the supervisor listening beyond loopback (a process of its own:
    the test process and its other children may hold sockets of their own)."""
    settings = load_settings(home, {}, environ={})
    state = HomeLayout(home).state_file
    state.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings, db=None, http=None, queue=None)
    stray = subprocess.Popen([sys.executable, "-c", STRAY], stdout=subprocess.PIPE, text=True)
    try:
        assert stray.stdout is not None
        port = int(stray.stdout.readline())
        state.write_text(json.dumps({"children": {"stray": {"pid": stray.pid}}}))
        found = asyncio.run(check_exposure(ctx))
    finally:
        stray.kill()
        stray.wait()
    assert found.status == "FAIL"
    assert f"another process of ours on 0.0.0.0:{port}" in found.message
    assert "[internal] listen = 127.0.0.1" in found.fix
    assert asyncio.run(check_exposure(ctx)).status == "OK"


def test_an_unreachable_queue_fails(home):
    nothing_there = f"redis://127.0.0.1:{reserve_port()}/0"
    settings = load_settings(home, {"queue.redis_url": nothing_there}, environ={})
    ctx = Context(settings, db=None, http=None, queue=create_queue(settings))
    found = asyncio.run(check_queue(ctx))
    assert found.status == "FAIL" and "queue storage unreachable" in found.message
    assert found.fix == "check [queue] redis_url"


def test_stopped_appliance_fails_with_fixes(appliance_factory):
    stopped = appliance_factory()  # initialized, never started
    done = run_cli(stopped, "doctor")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "FAIL services" in done.stdout and "not listening" in done.stdout
    assert "fix: see" in done.stdout
    assert "FAIL worker" in done.stdout and "the worker has not started" in done.stdout


@pytest.mark.slow
def test_healthy_appliance_is_ok_but_for_the_backup(appliance_factory, tmp_path):
    """An appliance of its own: the session's shared one carries other tests' traces (a
    flood of bad tokens is a WARN of its own)."""
    appliance = appliance_factory().start()
    series = write_series(tmp_path / "ct", make_slices(2))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
    code, report = _doctor_json(appliance)
    checks = _by_name(report)
    assert set(checks) == NAMES
    bad = {n: c for n, c in checks.items() if c["status"] != "OK"}
    assert set(bad) <= KNOWN_WARNINGS, bad
    assert checks["backup"]["fix"] == "run `neuronova backup DEST`"
    assert code == (1 if bad else 0)
    assert "frame 1 of the newest stored image" in checks["token_frame"]["message"]
    assert "the newest stored series" in checks["orthanc_via_nginx"]["message"]  # by its UID
    took = {name: check["took_ms"] for name, check in checks.items()}
    assert all(isinstance(ms, int) and 0 <= ms <= report["took_ms"] + 1 for ms in took.values())
    print(f"doctor --json took {report['took_ms']} ms: {took}")


@pytest.mark.slow
def test_system_page_api_runs_the_same_checks_for_admins_only(appliance):
    admin = api_token(appliance, "admin", appliance.admin_password)
    resp = requests.get(f"{appliance.url}/api/admin/doctor", timeout=60,
                        headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert set(_by_name(resp.json())) == NAMES
    assert resp.json()["status"] in ("OK", "WARN")
    added = run_cli(appliance, "user", "add", "rad.doctor", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    reader = api_token(appliance, "rad.doctor", PASSWORD)
    denied = requests.get(f"{appliance.url}/api/admin/doctor", timeout=10,
                          headers={"Authorization": f"Bearer {reader}"})  # fmt: skip
    assert denied.status_code == 403
    assert denied.json()["error"] == "role_denied"


@pytest.mark.slow
def test_frozen_orthanc_and_worker_fail_with_the_fix(appliance_factory):
    running = appliance_factory().start()
    frozen = [running.child_pid("orthanc"), running.child_pid("worker")]
    for pid in frozen:  # up but not answering: the supervisor keeps them
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(WORKER_HEARTBEAT_MAX_AGE + 1)
        code, report = _doctor_json(running)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    checks = _by_name(report)
    assert checks["worker"]["status"] == "FAIL", checks["worker"]
    assert "worker.log" in checks["worker"]["fix"]
    print(f"doctor --json with Orthanc frozen took {report['took_ms']} ms")
    assert code == 2
    assert checks["orthanc_via_nginx"]["status"] == "FAIL"
    assert "orthanc.log" in checks["orthanc_via_nginx"]["fix"]
    assert checks["services"]["status"] == "OK"  # still listening, just not answering


@pytest.mark.slow
def test_doctor_goes_through_https_when_plain_http_only_redirects(appliance_factory):
    running = appliance_factory({"web.redirect_to_https": True}).start()
    code, report = _doctor_json(running)
    bad = {c["name"]: c for c in report["checks"] if c["status"] != "OK"}
    assert set(bad) <= KNOWN_WARNINGS, bad
    assert code == 1
