"""Fixtures: free ports, temporary homes, and the real appliance started as a subprocess.

Also the helpers the end-to-end tests share: the ``neuronova`` command, dcmtk's storescu,
the ingest journal and a login through the gateway.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import programs
import pytest
import requests
from click.testing import CliRunner
from ports import reserve_port

from appliance import loopback
from appliance.cli import cli as neuronova_cli
from appliance.config import Settings, load_settings
from appliance.db import open_database
from appliance.health.report import STATUS_KEY_HEADER, status_key
from appliance.home import init_home
from appliance.layout import HomeLayout
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.runner import settings_environment

START_TIMEOUT = 60.0
PORT_TRIES = 3  # starts on fresh ports when another program took one meanwhile
PORT_SETTINGS = ("http_port", "https_port", "dicom_port", "app_port", "gate_port", "orthanc_port")
DCMTK_STORESCU = "/usr/bin/storescu"  # the venv's `storescu` is pynetdicom's, other options


def require_tool(program: str, package: str) -> str:
    """The path of ``program``; fail the test (never skip) naming the Debian package.

    A test that skipped for a missing program would pass unseen in CI; ``bash
    scripts/setup.sh --test`` installs every package the suite needs.
    """
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: apt-get install {package} "
                    "(bash scripts/setup.sh --test installs what the tests need)",
                    pytrace=False)  # fmt: skip
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Temporary homes under a folder of this run's own.

    nginx's workers reach the homes through group permissions set on the way
    (:func:`let_workers_reach`); pytest resets its shared ``/tmp/pytest-of-USER`` to 0700
    whenever another pytest run starts, which cut a running appliance's nginx off its
    frame files (403). Kept after a failed run, for its logs.
    """
    if config.option.basetemp is None:
        config.option.basetemp = str(Path(tempfile.gettempdir()) / f"neuronova-tests-{os.getpid()}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop before the first test when a program the suite runs is missing."""
    absent = programs.missing()
    if absent:
        pytest.exit(programs.install_hint(absent), returncode=pytest.ExitCode.TESTS_FAILED)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's temporary homes when every test passed."""
    basetemp = session.config.option.basetemp
    if exitstatus == 0 and basetemp and Path(basetemp).name.startswith("neuronova-tests-"):
        shutil.rmtree(basetemp, ignore_errors=True)


def free_port() -> int:
    """A port for a service the test starts, reserved for this run (see ``ports``)."""
    return reserve_port()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s until true; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
    """GET ``url``; returns (status, headers, body) also for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with loopback.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@dataclass
class Appliance:
    """A ``neuronova run`` subprocess on a temporary home with free ports."""

    settings: Settings
    admin_password: str
    process: subprocess.Popen | None = None
    output: Path = field(default=Path("/dev/null"))
    prefix: list[str] = field(default_factory=list)
    own_ports: tuple[str, ...] = ()  # port settings the fixture chose, renewed on a clash
    _output_start: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.probe_host}:{self.settings.http_port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **settings_environment(self.settings)}

    def start(self, wait: bool = True) -> Appliance:
        """Run the appliance; with ``wait``, until healthy, on new ports if one was taken."""
        self._launch()
        if not wait:
            return self
        for attempt in range(1, PORT_TRIES + 1):
            try:
                wait_for(self.healthy, START_TIMEOUT, f"the appliance healthy ({self.output})")
                break
            except AssertionError:
                if attempt == PORT_TRIES or not self._lost_a_port():
                    raise
                self.stop()
                self.settings = replace(self.settings, **{p: free_port() for p in self.own_ports})
                self._launch()
        wait_for(self.all_running, 10, "every child to be RUNNING")
        return self

    def _launch(self) -> None:
        command = [*self.prefix, sys.executable, "-m", "appliance", "run",
                   "--home", str(self.settings.home)]  # fmt: skip
        self._output_start = self.output.stat().st_size if self.output.exists() else 0
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def _lost_a_port(self) -> bool:
        """Whether this start failed because a port was taken between reserving and binding."""
        with open(self.output, "rb") as out:
            out.seek(self._output_start)
            said = out.read().decode(errors="replace")
        return "already in use" in said

    def health(self) -> tuple[int, dict]:
        """The full health report, as ``neuronova status`` reads it (with the status key)."""
        key = {STATUS_KEY_HEADER: status_key(self.settings)}
        status, _, body = http_get(f"{self.url}/api/health", headers=key)
        return status, json.loads(body)

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"appliance exited early: {self.output.read_text()[-3000:]}")
        try:
            return self.health()[0] == 200
        except (OSError, ValueError):
            return False

    def all_running(self) -> bool:
        children = self.state()["children"].values()
        return all(c["state"] == "RUNNING" for c in children)

    def state(self) -> dict:
        return json.loads((self.settings.home / "run" / "supervisor.json").read_text())

    def child_pid(self, name: str) -> int:
        return self.state()["children"][name]["pid"]

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def make_appliance(tmp_path: Path, **overrides: object) -> Appliance:
    """An initialized home on free ports, not started yet."""
    home = tmp_path / "home"
    chosen = [port for port in PORT_SETTINGS if port not in overrides]
    values = {
        "bind": "127.0.0.1",
        "redirect_to_https": False,  # tests talk plain HTTP; the default is checked apart
        **{port: free_port() for port in chosen},
        **overrides,
    }
    settings = load_settings(home, values, environ={})
    result = init_home(settings)
    assert result.admin_password
    # As an administrator would open the folders above a home: pytest's are 0700, and
    # nginx's workers run as [internal] nginx_user when the tests run as root.
    let_workers_reach(worker_user(settings), Path(tempfile.gettempdir()), [home])
    return Appliance(settings, result.admin_password, output=tmp_path / "run.out",
                     own_ports=tuple(chosen))  # fmt: skip


@pytest.fixture
def appliance_factory(tmp_path_factory) -> Iterator[Callable[..., Appliance]]:
    """Make appliances in fresh homes; every one started is stopped at teardown."""
    made: list[Appliance] = []

    def make(**overrides: object) -> Appliance:
        appliance = make_appliance(tmp_path_factory.mktemp("appliance"), **overrides)
        made.append(appliance)
        return appliance

    yield make
    for appliance in made:
        appliance.stop()


@pytest.fixture(scope="session")
def appliance(tmp_path_factory) -> Iterator[Appliance]:
    """One running appliance shared by the tests that do not disturb it."""
    running = make_appliance(tmp_path_factory.mktemp("shared")).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """One PyInstaller bundle of this checkout per run: the package test and the cloud
    profile's image both wrap it (PyInstaller is the longest step of either). With
    pytest-xdist, the first worker that needs it builds it under a lock in the run's
    shared folder, and another worker waits for it and takes it."""
    from bench.packaging import load_build

    shared = run_folder(tmp_path_factory)
    done = shared / "bundle.done"
    with open(shared / "bundle.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return Path(done.read_text())
        build = load_build()
        try:
            made = build.build_bundle(shared / "bundle")
        except build.BuildError as exc:
            pytest.fail(f"packaging/build.py: {exc}", pytrace=False)
        done.write_text(str(made))
        return made


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this run shares: pytest-xdist gives each worker a folder
    of its own inside it (``popen-gwN``); without xdist, the run's own folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# --------------------------------------------------------------------------- CLI homes


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def home(tmp_path: Path, runner: CliRunner) -> Path:
    """A home made by ``neuronova init`` (through CliRunner); nothing running."""
    home = tmp_path / "home"
    result = runner.invoke(neuronova_cli, ["init", "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home


# --------------------------------------------------------------- end-to-end helpers


def run_cli(
    appliance: Appliance, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run a ``neuronova`` command on the appliance's home, in a process of its own."""
    command = [sys.executable, "-m", "appliance", *args, "--home", str(appliance.settings.home)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True,
                          env=appliance.env, timeout=timeout)  # fmt: skip


def storescu_command(port: int, files, aet: str = "STORESCU", *extra: str) -> list[str]:
    """dcmtk's storescu sending ``files`` to AE NEURONOVA on 127.0.0.1:``port``."""
    program = require_tool(DCMTK_STORESCU, "dcmtk")
    return [program, *extra, "-aet", aet, "-aec", "NEURONOVA", "127.0.0.1", str(port),
            *map(str, files)]  # fmt: skip


def storescu(
    appliance: Appliance, files, aet: str = "STORESCU", *extra: str
) -> subprocess.CompletedProcess:
    """Send files to the appliance with dcmtk's storescu, as a modality would."""
    command = storescu_command(appliance.settings.dicom_port, files, aet, *extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def journal_states(appliance: Appliance, sop_uids) -> dict[str, str]:
    """SOP Instance UID -> ingest state, for those of ``sop_uids`` the journal holds."""
    db = open_database(HomeLayout(appliance.settings.home).database_file)
    marks = ",".join("?" for _ in sop_uids)
    rows = db.execute(f"SELECT sop_uid, state FROM instances WHERE sop_uid IN ({marks})",
                      list(sop_uids)).fetchall()  # fmt: skip
    db.close()
    return dict(rows)


def wait_stored(appliance: Appliance, sop_uids, timeout: float = 120) -> None:
    """Wait until every one of ``sop_uids`` is journaled as stored."""

    def all_stored() -> bool:
        states = journal_states(appliance, sop_uids)
        return len(states) == len(sop_uids) and set(states.values()) == {"stored"}

    wait_for(all_stored, timeout, f"{len(sop_uids)} objects to be stored")


def api_token(appliance: Appliance, username: str, password: str) -> str:
    """An access token from the gateway's login API."""
    resp = requests.post(f"{appliance.url}/api/auth/login", timeout=10,
                         json={"username": username, "password": password})  # fmt: skip
    resp.raise_for_status()
    return resp.json()["access_token"]


# --------------------------------------------------------------------------- browser

DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium (Debian's), driven by Playwright; one per test module."""
    import playwright.sync_api as playwright_api

    from bench.browser import CHROMIUM, CHROMIUM_ARGS

    executable = require_tool(str(CHROMIUM), "chromium")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def new_context(browser) -> Iterator[Callable[..., object]]:
    """Fresh browser contexts (no cookies, no storage); all closed at teardown."""
    made = []

    def make(viewport: dict[str, int] = DESKTOP):
        context = browser.new_context(viewport=viewport, device_scale_factor=1)
        context.set_default_timeout(30_000)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()
