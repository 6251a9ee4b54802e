"""Fixtures every folder's tests share, and the run's hooks: temporary homes (made by the
CLI, or with users for the web app alone), the real appliance started as a subprocess,
and headless Chromium (the browser tests and single sign-on use it).

Helpers live in the :mod:`tests.support` package, never imported from a conftest. A
fixture that several modules of one folder use lives in that folder's ``conftest.py``
(``tests/packaging/``: the bundle; ``tests/jobs/``: a Redis server; ``tests/browser/``:
a pushed study); one that a single module uses stays in that module, beside its tests.
"""

from __future__ import annotations

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
from appliance.security.users import create_user
from appliance.web.app import create_app
from tests.support import programs
from tests.support.auth import PASSWORD
from tests.support.running import Appliance, make_appliance, running_appliance
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

    def make(overrides: dict[str, object] | None = None) -> Appliance:
        appliance = make_appliance(tmp_path_factory.mktemp("appliance"), overrides)
        made.append(appliance)
        return appliance

    yield make
    for appliance in made:
        appliance.stop()


@pytest.fixture(scope="session")
def appliance(tmp_path_factory) -> Iterator[Appliance]:
    """One running appliance shared by the tests that do not disturb it."""
    with running_appliance(tmp_path_factory.mktemp("shared")) as running:
        yield running


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
    db = open_database(settings.layout.database_file)
    for name, role in (("rad", "radiologist"), ("tech", "technologist"), ("boss", "admin")):
        create_user(db, name, role, PASSWORD)
    db.close()
    return settings


@pytest.fixture
async def client(aiohttp_client, settings: Settings):
    """The web app on that home, under aiohttp's test client (no nginx, no Orthanc)."""
    return await aiohttp_client(create_app(settings))
