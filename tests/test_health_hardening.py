"""Hardening of health, processes and clients: what ``/api/health`` tells whom and how
often it probes, leftover processes after a reboot, nginx's workers' user, loopback calls
and proxies, and log rotation."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import api_token, http_get, run_cli

from appliance.health import PROBE_INTERVAL, STATUS_KEY_HEADER

pytestmark = pytest.mark.slow
PASSWORD = "a long enough password 1"


def _health_as(appliance, headers: dict[str, str]) -> tuple[int, dict]:
    status, _, body = http_get(f"{appliance.url}/api/health", headers=headers)
    return status, json.loads(body)


def test_health_shows_only_the_status_to_anyone_but_admins(appliance):
    result = run_cli(appliance, "user", "add", "dr.quinn", "--role", "radiologist",
                     "--password-stdin", stdin=f"{PASSWORD}\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    radiologist = api_token(appliance, "dr.quinn", PASSWORD)
    admin = api_token(appliance, "admin", appliance.admin_password)

    assert _health_as(appliance, {}) == (200, {"status": "ok"})
    assert _health_as(appliance, {"Authorization": f"Bearer {radiologist}"}) == (
        200,
        {"status": "ok"},
    )
    assert _health_as(appliance, {"Authorization": "Bearer not-a-token"}) == (200, {"status": "ok"})
    assert _health_as(appliance, {STATUS_KEY_HEADER: "guessed"}) == (200, {"status": "ok"})
    _, report = _health_as(appliance, {"Authorization": f"Bearer {admin}"})
    assert report["components"]["receiver"]["ae_title"] == "NEURONOVA"
    assert report["components"]["app"]["pid"] > 0
    _, report = appliance.health()  # the status key, as `neuronova status` sends it
    assert set(report["components"]) == {"nginx", "app", "orthanc", "queue", "receiver"}


def _dicom_connections(appliance) -> int:
    """Closed TCP connections to the DICOM port still in TIME-WAIT (they last 60 s)."""
    port = appliance.settings.dicom_port
    out = subprocess.run(
        ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return len(out.splitlines())


def test_health_polled_in_a_loop_opens_few_dicom_associations(appliance_factory):
    appliance = appliance_factory().start()
    before = _dicom_connections(appliance)
    calls, started = 0, time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() - started < 3.0 and calls < 400:
            statuses = list(pool.map(lambda _: _health_as(appliance, {})[0], range(8)))
            assert statuses == [200] * 8
            calls += 8
    elapsed = time.monotonic() - started
    opened = _dicom_connections(appliance) - before
    print(f"{calls} health calls in {elapsed:.1f} s opened {opened} DICOM associations")
    processes = appliance.settings.app_processes
    assert calls >= 50
    assert opened <= processes * (elapsed // PROBE_INTERVAL + 1)
