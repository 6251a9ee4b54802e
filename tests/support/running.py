"""The real appliance as a subprocess (``neuronova run``) on a temporary home, and what the
end-to-end tests do with it: its CLI, dcmtk's storescu as a modality, its ingest journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Settings, load_settings, settings_environment
from appliance.db import open_database
from appliance.health.report import STATUS_KEY_HEADER, status_key
from appliance.home import init_home
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.ports import PORT_SETTINGS
from tests.support.clients import http_get
from tests.support.ports import reserve_port
from tests.support.tools import storescu_command
from tests.support.waiting import wait_for

START_TIMEOUT = 60.0
PORT_TRIES = 3  # starts on fresh ports when another program took one meanwhile


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
        return f"http://{self.settings.network.probe_host}:{self.settings.web.http_port}"

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
                ports = {p: reserve_port() for p in self.own_ports}
                self.settings = self.settings.with_values(ports)
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


def make_appliance(tmp_path: Path, overrides: dict[str, object] | None = None) -> Appliance:
    """An initialized home on free ports, not started yet; ``overrides`` by ``section.key``."""
    overrides = overrides or {}
    home = tmp_path / "home"
    chosen = [port for port in PORT_SETTINGS if port not in overrides]
    values = {
        "network.bind": "127.0.0.1",
        "web.redirect_to_https": False,  # tests talk plain HTTP; the default is checked apart
        **{port: reserve_port() for port in chosen},
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


@contextmanager
def running_appliance(
    folder: Path, overrides: dict[str, object] | None = None
) -> Iterator[Appliance]:
    """An appliance on a new home in ``folder`` (see :func:`make_appliance`), started and
    healthy; stopped on the way out."""
    appliance = make_appliance(folder, overrides).start()
    try:
        yield appliance
    finally:
        appliance.stop()


def run_cli(
    appliance: Appliance, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run a ``neuronova`` command on the appliance's home, in a process of its own."""
    command = [sys.executable, "-m", "appliance", *args, "--home", str(appliance.settings.home)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True,
                          env=appliance.env, timeout=timeout)  # fmt: skip


def storescu(
    appliance: Appliance, files, aet: str = "STORESCU", *extra: str
) -> subprocess.CompletedProcess:
    """Send files to the appliance with dcmtk's storescu, as a modality would."""
    command = storescu_command(appliance.settings.dicom.port, files, aet, *extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def journal_states(appliance: Appliance, sop_uids) -> dict[str, str]:
    """SOP Instance UID -> ingest state, for those of ``sop_uids`` the journal holds."""
    db = open_database(appliance.settings.layout.database_file)
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
