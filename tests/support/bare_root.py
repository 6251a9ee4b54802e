"""A bare Debian system for package tests: a copy of the cached ``debootstrap
--variant=minbase bookworm`` root (no Python, nginx or Orthanc in it), commands run in it
with chroot, and the installed appliance started there as its systemd unit would start it.

The pristine root is made once and kept in ``/var/cache/neuronova-test/`` (debootstrap
takes about 90 s); each test works on a copy. systemd is not PID 1 here, so the appliance
is started with the unit's user, environment and command in its own PID and mount
namespaces (``unshare --root``), sharing the host's loopback. Used by test_packaging (the
.deb installed with dpkg) and test_apt_repository (installed with apt from a signed
repository).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from appliance.config import load_settings, render_toml
from appliance.supervise.ports import INTERNAL_PORTS
from bench.cloud import bookworm_root
from tests.support.clients import HttpsClient
from tests.support.ports import reserve_port
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

DATA = "var/lib/neuronova"
UNIT = "lib/systemd/system/neuronova.service"


def in_root(root: Path, *command: str, stdin: str | None = None) -> str:
    """Run ``command`` chrooted in ``root`` as root; its output (fails the test on error)."""
    result = subprocess.run(["chroot", str(root), *command], input=stdin, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return result.stdout


def pristine_root() -> Path:
    """The cached minimal bookworm root (the cloud profile's base image is made from the
    same one), made with debootstrap the first time."""
    require_tool("debootstrap", "debootstrap")
    try:
        return bookworm_root("minbase")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += descendants(int(child))
    return found


def unit_settings(root: Path) -> tuple[str, dict[str, str], list[str]]:
    """(User=, Environment=, ExecStart=) of the installed systemd unit."""
    text = (root / UNIT).read_text()
    user = re.search(r"^User=(\S+)$", text, re.M)
    start = re.search(r"^ExecStart=(.+)$", text, re.M)
    assert user and start, f"the unit lacks User= or ExecStart=:\n{text}"
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(\S+)$", text, re.M))
    return user.group(1), env, start.group(1).split()


@dataclass
class Installed:
    """The appliance installed in a bare root, with loopback ports chosen for this test."""

    root: Path
    log: Path
    password: str
    http_port: int = 0
    https_port: int = 0
    dicom_port: int = 0
    first_start: float = 0.0
    process: subprocess.Popen | None = None

    @property
    def home(self) -> Path:
        return self.root / DATA

    @property
    def https(self) -> str:
        return f"https://localhost:{self.https_port}"

    def configure(self) -> None:
        """Bind to loopback on free ports (as an admin edits neuronova.toml)."""
        self.http_port, self.https_port, self.dicom_port = (reserve_port() for _ in range(3))
        ports = {f"internal.{name}": reserve_port() for name in INTERNAL_PORTS}
        values = {"network.bind": "127.0.0.1", "web.http_port": self.http_port, **ports,
                  "web.https_port": self.https_port, "dicom.port": self.dicom_port}  # fmt: skip
        settings = load_settings(self.home, values, environ={})
        with open(self.home / "neuronova.toml", "w") as f:  # keeps its owner and mode
            f.write(render_toml(settings))

    def start(self) -> float:
        """Start as the unit would; seconds until /api/health answers 200."""
        user, env, command = unit_settings(self.root)
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["unshare", "--fork", "--pid", "--mount", "--mount-proc", f"--root={self.root}",
                 "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                 *(f"{k}={v}" for k, v in env.items()),
                 "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *command],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self.healthy, 60, f"the installed appliance to be healthy ({self.log})")
        return time.monotonic() - started

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the appliance exited: {self.log.read_text()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.http_port}/api/health"
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM to ``neuronova run``, PID 1 of its namespace; when it exits, every process
        left in the namespace is killed. (unshare passes no signal on, and its
        ``--kill-child`` would not reach it: setpriv's change of user clears that.)"""
        if self.process is None or self.process.poll() is not None:
            return
        pid = self.process.pid
        run = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for child in run:
            os.kill(child, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for child in run:
                os.kill(child, signal.SIGKILL)
            self.process.wait(timeout=10)

    def login(self, username: str, password: str) -> tuple[HttpsClient, str]:
        """A client trusting the appliance's self-signed certificate (made for localhost),
        and an access token of ``username``."""
        client = HttpsClient(self.https_port, self.home / "tls" / "server.crt", host="localhost")
        return client, client.login(username, password)

    def dpkg_install(self, deb: Path) -> str:
        shutil.copy(deb, self.root / "tmp" / deb.name)
        return in_root(self.root, "dpkg", "-i", f"/tmp/{deb.name}")


def copy_of_pristine_root(work: Path) -> Path:
    """``work/root``: a fresh copy of the pristine root, checked to be bare."""
    root = work / "root"
    copied = subprocess.run(["cp", "-a", str(pristine_root()), str(root)], capture_output=True)
    assert copied.returncode == 0, copied.stderr
    look = "for p in python3 nginx Orthanc rclone; do command -v $p; done; ls -d /usr/lib/python3*"
    missing = in_root(root, "sh", "-c", f"({look}) 2>/dev/null || true")
    assert missing.strip() == "", f"the bare root is not bare: {missing}"
    return root


def initial_password(root: Path) -> str:
    """The first admin's password the package's postinst left for the administrator."""
    password_file = root / DATA / "initial-admin-password"
    password = re.search(r"password:\s+(\S+)", password_file.read_text())
    assert password, password_file.read_text()
    return password.group(1)
