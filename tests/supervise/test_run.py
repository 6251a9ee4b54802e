"""The real appliance: nginx, Orthanc, app, queue and receiver under `neuronova run`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.support.clients import curl_status, http_get
from tests.support.running import run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def test_health_is_green_through_nginx(appliance):
    status, report = appliance.health()
    assert status == 200, report
    assert report["status"] == "ok"
    assert set(report["components"]) == {"nginx", "app", "orthanc", "queue", "receiver"}
    assert all(c["status"] == "ok" for c in report["components"].values())
    assert report["components"]["orthanc"]["version"] == "1.10.1"


def test_status_command_prints_the_same_health(appliance):
    result = run_cli(appliance, "status", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "NeuroNova: OK" in result.stdout
    for component in ("nginx", "app", "orthanc", "queue", "receiver"):
        assert component in result.stdout


def test_nginx_serves_the_main_app(appliance):
    status, headers, body = http_get(f"{appliance.url}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"<html" in body.lower()
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_client_routes_fall_back_to_the_main_app(appliance):
    status, headers, _ = http_get(f"{appliance.url}/admin/users")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_unknown_api_path_is_json_404(appliance):
    status, headers, body = http_get(f"{appliance.url}/api/no-such-thing")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert b'"error"' in body


def test_orthanc_requires_its_credentials(appliance):
    status, _, _ = http_get(f"http://127.0.0.1:{appliance.settings.internal.orthanc_port}/system")
    assert status == 401


def test_orthanc_refuses_a_client_not_on_127_0_0_1_even_with_credentials(appliance):
    from appliance.store.orthanc import orthanc_auth_header

    auth = orthanc_auth_header(appliance.settings)
    port = appliance.settings.internal.orthanc_port
    credentials = ("-H", f"Authorization: {auth}")
    local = subprocess.run(curl_status(f"http://127.0.0.1:{port}/system", *credentials),
                           capture_output=True, text=True, timeout=10)  # fmt: skip
    other = subprocess.run(curl_status(f"http://127.0.0.2:{port}/system", "--interface",
                                       "127.0.0.2", *credentials),
                           capture_output=True, text=True, timeout=10)  # fmt: skip
    assert local.stdout == "200"
    assert other.stdout in ("401", "403"), other.stdout


def test_killed_orthanc_is_restarted_and_healthy_again(appliance_factory):
    appliance = appliance_factory().start()
    old_pid = appliance.child_pid("orthanc")
    os.kill(old_pid, signal.SIGKILL)
    # Not asserted: /api/health reporting the ~1.5 s outage; its probes run every 2 s.
    wait_for(
        lambda: (
            appliance.state()["children"]["orthanc"]["state"] == "RUNNING"
            and appliance.child_pid("orthanc") not in (None, old_pid)
        ),
        30,
        "Orthanc to be restarted",
    )
    wait_for(appliance.healthy, 30, "health to be green again")
    assert appliance.state()["children"]["orthanc"]["restarts"] == 1
    log = (appliance.settings.home / "logs" / "neuronova.log").read_text()
    assert "orthanc: RUNNING -> EXITED" in log and "signal SIGKILL" in log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_everything_within_10_seconds(appliance_factory):
    appliance = appliance_factory().start()
    pids = [c["pid"] for c in appliance.state()["children"].values()]
    assert len(pids) == 6 and all(pids)  # orthanc, worker, app, app2, receiver, nginx
    started = time.monotonic()
    appliance.process.send_signal(signal.SIGTERM)
    assert appliance.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert not [pid for pid in pids if _alive(pid)]
    leftovers = subprocess.run(
        ["pgrep", "-f", str(appliance.settings.home)], capture_output=True, text=True
    )
    assert leftovers.stdout == ""


def test_second_run_on_the_same_home_is_refused(appliance):
    result = run_cli(appliance, "run", timeout=30)
    assert result.returncode == 1
    assert "Error: NeuroNova is already running on" in result.stderr
    assert f"(pid {appliance.process.pid})" in result.stderr
    assert "Traceback" not in result.stderr
    assert appliance.healthy()


def test_missing_nginx_is_a_clear_error(appliance_factory, tmp_path):
    appliance = appliance_factory()
    env = {**appliance.env, "NEURONOVA_BINARY_PATH": str(tmp_path / "empty")}
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--home", str(appliance.settings.home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Error: nginx was not found" in result.stderr
    assert "sudo apt-get install nginx-light" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("port", "what"), [("app_port", "web app"), ("gate_port", "frame gate")])
def test_a_taken_port_is_a_clear_error(appliance_factory, port, what):
    appliance = appliance_factory()
    number = getattr(appliance.settings.internal, port)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", number))
        squatter.listen()
        result = run_cli(appliance, "service", "app", timeout=30)
    assert result.returncode == 1
    assert f"Error: the {what} cannot listen on 127.0.0.1:{number}" in result.stderr
    assert f"set [internal] {port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("port", "setting"),
    [("web.http_port", "[web] http_port"), ("web.https_port", "[web] https_port"),
     ("dicom.port", "[dicom] port"), ("internal.app_port", "[internal] app_port"),
     ("internal.gate_port", "[internal] gate_port"),
     ("internal.orthanc_port", "[internal] orthanc_port")],
)  # fmt: skip
def test_run_stops_at_once_naming_a_taken_port_its_setting_and_holder(
    appliance_factory, port, setting
):
    appliance = appliance_factory()
    number = appliance.settings.value(port)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", number))
        squatter.listen()
        result = run_cli(appliance, "run", timeout=30)
    assert result.returncode == 1
    assert f"Error: port {number} on 127.0.0.1 ({setting}) is already in use by " in result.stderr
    assert f"(pid {os.getpid()})" in result.stderr  # this test process holds it
    assert "to a free port" in result.stderr and "Traceback" not in result.stderr
    assert not (appliance.settings.home / "run" / "supervisor.json").exists()  # nothing started


def test_two_homes_run_side_by_side_on_the_default_internal_ports(appliance_factory):
    """The second appliance finds 18081, 18083 and 18042 taken by the first (or by
    anything else) and moves its internal ports; its CLI and doctor find them."""
    defaults = {"app_port": 18081, "gate_port": 18083, "orthanc_port": 18042}
    chosen = {f"internal.{key}": port for key, port in defaults.items()}
    first, second = appliance_factory(chosen), appliance_factory(chosen)
    first.start()
    second.start()
    moved = json.loads((second.settings.home / "run" / "ports.json").read_text())
    assert set(moved.values()).isdisjoint(defaults.values())
    log = (second.settings.home / "logs" / "neuronova.log").read_text()
    assert "internal port 18042 ([internal] orthanc_port) is in use by Orthanc (pid" in log
    for appliance in (first, second):
        status = run_cli(appliance, "status", timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
    doctor = run_cli(second, "doctor", timeout=120)  # checks the ports its own services hold
    assert "OK   services           nginx, receiver, app, frame gate and Orthanc are listening" in (
        doctor.stdout
    )
    shown = run_cli(second, "config", "show", timeout=60).stdout
    assert f"orthanc_port = {moved['orthanc_port']}" in shown, shown
    assert first.healthy() and second.healthy()


def test_secret_files_are_0600_and_never_logged(appliance):
    layout = appliance.settings.layout
    private = [
        layout.jwt_key_file,
        layout.orthanc_password_file,
        layout.nginx_conf,
        layout.orthanc_conf,
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(layout.secrets_dir.stat().st_mode) == 0o700
    secrets = [
        layout.jwt_key_file.read_text().strip(),
        layout.orthanc_password_file.read_text().strip(),
        appliance.admin_password,
    ]
    http_get(f"{appliance.url}/api/health")  # make sure something was logged
    logs = list(layout.log_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"neuronova.log", "orthanc.log", "app.log", "nginx-access.log"}
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret appears in {path}"


def test_run_shows_a_new_backup_key_once_and_never_logs_it(appliance_factory):
    """A home without a backup key (made before snapshots were signed) gets one at start:
    printed on run's output, like the first admin password, never in HOME/logs."""
    appliance = appliance_factory()
    layout = appliance.settings.layout
    layout.backup_key_file.unlink()
    appliance.start()
    key = layout.backup_key_file.read_text().strip()
    assert stat.S_IMODE(layout.backup_key_file.stat().st_mode) == 0o600
    assert f"    {key}\n" in appliance.output.read_text()
    http_get(f"{appliance.url}/api/health")  # make sure something was logged
    logs = list(layout.log_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"neuronova.log", "orthanc.log", "app.log"}
    for path in logs:
        assert key not in path.read_text(errors="replace"), f"the backup key appears in {path}"


def test_https_serves_the_generated_certificate_and_http_redirects(appliance_factory):
    import ssl
    import urllib.request

    appliance = appliance_factory({"web.redirect_to_https": True}).start(wait=False)
    port = appliance.settings.web.https_port
    unverified = ssl._create_unverified_context()  # the served certificate is compared below

    def https_health() -> int:
        try:
            url = f"https://127.0.0.1:{port}/api/health"
            with urllib.request.urlopen(url, context=unverified) as resp:
                return resp.status
        except OSError:
            return 0

    wait_for(lambda: https_health() == 200, 60, "HTTPS health to be green")
    served = ssl.get_server_certificate(("127.0.0.1", port))
    on_disk = (appliance.settings.home / "tls" / "server.crt").read_text()
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(on_disk)
    plain = http.client.HTTPConnection("127.0.0.1", appliance.settings.web.http_port, timeout=10)
    plain.request("GET", "/worklist?x=1")
    redirect = plain.getresponse()
    assert redirect.status == 301
    assert redirect.getheader("Location") == f"https://127.0.0.1:{port}/worklist?x=1"
