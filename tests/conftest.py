"""Fixtures every folder's tests share: temporary homes, the real appliance started as a
subprocess, the session's PyInstaller bundle and headless Chromium; and the run's hooks.

Helpers live in :mod:`tests.support`; fixtures used by one folder's tests live in the
``conftest.py`` of that folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli as neuronova_cli
from appliance.config import Settings, load_settings
from appliance.db import open_database
from appliance.home import init_home
from appliance.layout import HomeLayout
from appliance.security.users import create_user
from appliance.web.app import create_app
from tests.support import programs
from tests.support.auth import PASSWORD
from tests.support.running import Appliance, make_appliance
from tests.support.tools import require_tool


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


# ------------------------------------------------------------------- the web app alone


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A home made by ``init_home`` (nothing running) with users ``rad`` (radiologist),
    ``tech`` (technologist) and ``boss`` (admin), all with :data:`tests.support.auth.PASSWORD`."""
    settings = load_settings(tmp_path / "home", environ={})
    init_home(settings)
    db = open_database(HomeLayout(settings.home).database_file)
    for name, role in (("rad", "radiologist"), ("tech", "technologist"), ("boss", "admin")):
        create_user(db, name, role, PASSWORD)
    db.close()
    return settings


@pytest.fixture
async def client(aiohttp_client, settings: Settings):
    """The web app on that home, under aiohttp's test client (no nginx, no Orthanc)."""
    return await aiohttp_client(create_app(settings))

