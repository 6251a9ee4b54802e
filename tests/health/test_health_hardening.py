"""Hardening of health, processes and clients: what ``/api/health`` tells whom and how
often it probes, leftover processes after a reboot, nginx's workers' user, loopback calls
and proxies, and log rotation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from appliance.config import default_home, load_settings
from appliance.errors import ConfigError
from appliance.health.report import PROBE_INTERVAL, STATUS_KEY_HEADER
from appliance.home import init_home
from appliance.supervise.leftovers import boot_id, process_start_ticks, reap_leftovers
from appliance.supervise.logs import MIB
from appliance.supervise.nginx import render_nginx_conf
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.supervisor import ChildSpec, LogLimits, Supervisor
from tests.support.clients import api_token, http_get
from tests.support.running import run_cli, storescu, wait_stored
from tests.support.samples import native_dataset
from tests.support.waiting import wait_for

PASSWORD = "a long enough password 1"


def _health_as(appliance, headers: dict[str, str]) -> tuple[int, dict]:
    status, _, body = http_get(f"{appliance.url}/api/health", headers=headers)
    return status, json.loads(body)


@pytest.mark.slow
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
    port = appliance.settings.dicom.port
    out = subprocess.run(
        ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return len(out.splitlines())


@pytest.mark.slow
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
    processes = appliance.settings.internal.app_processes
    assert calls >= 50
    assert opened <= processes * (elapsed // PROBE_INTERVAL + 1)


class ProxyTrap:
    """A listening socket on loopback standing in for a clinic's proxy; it records what
    anyone sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(65536) or b"(connected)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.mark.slow
def test_loopback_calls_never_go_through_a_proxy(appliance_factory, monkeypatch, tmp_path):
    trap = ProxyTrap()
    try:
        for name in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, trap.url)
            monkeypatch.setenv(name.upper(), trap.url)
        appliance = appliance_factory().start()  # the children inherit the proxy settings
        ds = native_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
        assert storescu(appliance, [tmp_path / "ct.dcm"]).returncode == 0
        wait_stored(appliance, [ds.SOPInstanceUID])  # the worker stored it in Orthanc
        status = run_cli(appliance, "status")
        assert status.returncode == 0 and "orthanc" in status.stdout, status.stdout
    finally:
        trap.close()
    assert trap.received == []


@pytest.fixture
def left_session() -> Iterator[subprocess.Popen]:
    """A session leader with a child of its own, as a crashed run leaves nginx behind."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    wait_until_members(leader.pid, 2)
    yield leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of ``/proc/PID/stat`` from field 3 on) of every process."""
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            yield int(entry.parent.name), entry.read_text().rsplit(")", 1)[1].split()


def session_members(session: int) -> list[int]:
    """Live (not zombie) processes whose session id (field 6) is ``session``."""
    return [pid for pid, f in processes() if int(f[3]) == session and f[0] != "Z"]


def wait_until_members(session: int, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(session_members(session)) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(session_members(session)) == count


def write_state(path: Path, pid: int, start_ticks: int | None, boot: str) -> Path:
    children = {"nginx": {"state": "RUNNING", "pid": pid, "start_ticks": start_ticks}}
    path.write_text(json.dumps({"pid": 1, "boot_id": boot, "children": children}))
    return path


def test_leftovers_of_this_boot_are_reaped(left_session, tmp_path):
    pid = left_session.pid
    state = write_state(tmp_path / "s.json", pid, process_start_ticks(pid), boot_id())
    assert reap_leftovers(state) == 2
    wait_until_members(pid, 0)


@pytest.mark.parametrize(
    "boot, ticks_offset",
    [("another-boot", 0), (None, 1)],
    ids=["state-from-before-a-reboot", "pid-reused-by-another-process"],
)
def test_processes_that_are_not_leftovers_are_left_alone(
    left_session, tmp_path, boot, ticks_offset
):
    pid = left_session.pid
    started = process_start_ticks(pid)
    assert started is not None
    state = write_state(tmp_path / "s.json", pid, started - ticks_offset, boot or boot_id())
    assert reap_leftovers(state) == 0
    assert len(session_members(pid)) == 2


LIMITS = LogLimits(max_bytes=1 * MIB, keep=2)
WRITE_10_MIB = (
    "import sys\n"
    "for n in range(10 * 1024):\n"
    "    sys.stdout.write(f'{n:07d} ' + 'x' * 1015 + '\\n')\n"
    "print('DONE', flush=True)\n"
)


def log_sizes(path: Path) -> dict[str, int]:
    """Sizes of ``path`` and its rotated copies."""
    return {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}


async def _supervise_briefly(spec: ChildSpec, state_file: Path, until: Callable[[], bool]) -> None:
    supervisor = Supervisor([spec], state_file, limits=LIMITS)
    await supervisor.start()
    deadline = time.monotonic() + 30
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await supervisor.stop()


def test_a_childs_output_is_rotated(tmp_path):
    log_file = tmp_path / "logs" / "child.log"

    async def ready() -> bool:
        return True

    command = [sys.executable, "-c", WRITE_10_MIB + "import time; time.sleep(30)"]
    spec = ChildSpec("chatty", command, log_file, ready)
    done = lambda: log_file.exists() and b"DONE" in log_file.read_bytes()  # noqa: E731
    asyncio.run(_supervise_briefly(spec, tmp_path / "state.json", done))
    sizes = log_sizes(log_file)
    print(f"10 MiB of output, rotation at 1 MiB keeping 2: {sizes}")
    assert done() and set(sizes) == {"child.log", "child.log.1", "child.log.2"}
    assert all(size <= MIB for size in sizes.values())


def test_the_appliances_own_log_is_rotated(tmp_path):
    log_file = tmp_path / "neuronova.log"
    script = (
        "import logging, pathlib, sys\n"
        "from appliance.supervise.logs import configure_logging\n"
        f"configure_logging(log_file=pathlib.Path(sys.argv[1]), max_bytes={MIB}, keep=2)\n"
        "for n in range(10 * 1024):\n"
        "    logging.getLogger('t').info('%07d %s', n, 'x' * 950)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(log_file)], check=True,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    sizes = log_sizes(log_file)
    print(f"10 MiB logged, rotation at 1 MiB keeping 2: {sizes}")
    assert set(sizes) == {"neuronova.log", "neuronova.log.1", "neuronova.log.2"}
    assert all(size <= MIB for size in sizes.values())
    assert b"0010239 " in log_file.read_bytes()


@pytest.mark.slow
def test_nginx_logs_are_rotated_and_reopened(appliance_factory):
    appliance = appliance_factory({"logs.max_mb": 1, "logs.keep": 2}).start()
    access = appliance.settings.layout.log_dir / "nginx-access.log"
    with access.open("ab") as out:  # as if a busy day had filled it
        out.write(b"filler\n" * (3 * MIB // 7))
    wait_for(lambda: access.with_name("nginx-access.log.1").exists(), 15, "the rotation")
    http_get(f"{appliance.url}/api/health/live")
    wait_for(lambda: b"/api/health/live" in access.read_bytes(), 10, "nginx to reopen its log")
    sizes = log_sizes(access)
    print(f"3 MiB access log, rotation at 1 MiB keeping 2: {sizes}")
    assert set(sizes) == {"nginx-access.log", "nginx-access.log.1"}
    assert sizes["nginx-access.log"] < 10_000


def children_of(parent: int) -> list[int]:
    """Pids whose parent (field 4 of ``/proc/PID/stat``) is ``parent``."""
    return [pid for pid, fields in processes() if int(fields[1]) == parent]


def effective_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[2])


@pytest.mark.slow
def test_nginx_workers_are_not_root_and_still_serve_frames_and_the_viewer(appliance, tmp_path):
    assert os.geteuid() == 0, "this test checks what happens when the appliance runs as root"
    master = appliance.child_pid("nginx")
    workers = children_of(master)
    assert workers and effective_uid(master) == 0
    assert {effective_uid(pid) for pid in workers} == {pwd.getpwnam("nobody").pw_uid}
    home_mode = stat.S_IMODE(appliance.settings.home.stat().st_mode)
    assert home_mode & 0o007 == 0, f"others may enter the home ({home_mode:04o})"

    ds = native_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    assert storescu(appliance, [tmp_path / "ct.dcm"]).returncode == 0
    wait_stored(appliance, [ds.SOPInstanceUID])
    frame = (f"{appliance.url}/api/pacs/dicom-web/studies/{ds.StudyInstanceUID}/series/"
             f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1")  # fmt: skip
    token = api_token(appliance, "admin", appliance.admin_password)
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    status, headers, body = http_get(
        frame, headers={"Authorization": f"Bearer {token}", "Accept": accept}
    )
    assert status == 200 and headers["Content-Type"].startswith("multipart/related")
    assert b"transfer-syntax=1.2.840.10008.1.2.4.202" in body[:300]  # RPCL: progressive

    browser = requests.Session()
    credentials = {"username": "admin", "password": appliance.admin_password}
    login = browser.post(f"{appliance.url}/api/auth/login", json=credentials, timeout=10)
    assert login.status_code == 200
    viewer = browser.get(f"{appliance.url}/pacs-viewer/", timeout=10)
    assert viewer.status_code == 200 and "app-config.js" in viewer.text
    assert browser.get(f"{appliance.url}/", timeout=10).status_code == 200


def test_a_folder_that_keeps_nginx_workers_out_is_a_clear_error(tmp_path):
    assert os.geteuid() == 0, "this test checks what happens when the appliance runs as root"
    settings = load_settings(
        tmp_path / "locked" / "home", {"network.bind": "127.0.0.1"}, environ={}
    )
    init_home(settings)
    let_workers_reach(worker_user(settings), Path(tempfile.gettempdir()), [tmp_path])
    (tmp_path / "locked").chmod(0o700)
    with pytest.raises(ConfigError) as refused:
        render_nginx_conf(settings)
    assert str(refused.value) == (
        f"nginx's worker processes run as 'nobody' ([internal] nginx_user) and cannot enter "
        f"{tmp_path / 'locked'} (mode 0700) on the way to {settings.home / 'frames'}. Let "
        f"them in with `chmod o+x {tmp_path / 'locked'}` (enter only, not list), or put the "
        "data home where they can reach it (--home)."
    )


@pytest.mark.parametrize("existing", [False, True], ids=["new", "already-in-root-data-dir"])
def test_roots_default_home_is_one_nginx_workers_can_reach(monkeypatch, tmp_path, existing):
    assert os.geteuid() == 0, "this test checks what happens when the appliance runs as root"
    monkeypatch.delenv("NEURONOVA_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if existing:
        (tmp_path / "neuronova").mkdir()
        (tmp_path / "neuronova" / "neuronova.toml").write_text("")
    expected = tmp_path / "neuronova" if existing else Path("/var/lib/neuronova")
    assert default_home() == expected
