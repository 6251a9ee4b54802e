"""packaging/deploy.py against a "VM": Debian's openssh-server on a loopback port (its
own host key and sshd_config, key-only login as root), with podman and podman-compose as
its engine, as .github/workflows/deploy.yml runs it against the GCP VM.

Releases: the run's bundle built once into an image, tagged 1.0.0; 1.0.1 is the same
bundle with one more layer (a version label), so the two releases are the same code under
two version strings; 1.0.2 is broken on purpose (its app exits at start). Each goes to the
VM as an image archive (``podman save``), as when the VM cannot reach a registry.

In order: a deploy with a setting missing is refused naming it (no value printed); the
first deploy from nothing; the upgrade to 1.0.1 while storescu keeps sending (every
acknowledged object stored, the users and the study kept); 1.0.2 rolled back to 1.0.1 by
itself, data intact. The timings (deploy and rollback to healthy, the longest time the
DICOM port refused associations) go to ``test-artifacts/deploy/timings.json``, what each
deploy printed beside it.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from bench.cloud import (
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    VOLUMES,
    build_image,
    check_engine,
    ensure_base_images,
    podman,
)
from bench.synthetic import ct_file_dataset, make_slices, write_series
from tests.support.clients import HttpsClient
from tests.support.paths import REPO
from tests.support.ports import reserve_port
from tests.support.scripts import packaging_script
from tests.support.tools import require_tool, storescu_command
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

IMAGE = f"localhost/nndeploy{os.getpid()}/neuronova"  # one per run: runs may overlap
ARTIFACTS = REPO / "test-artifacts" / "deploy"
BROKEN_APP = """#!/bin/sh
case "$*" in *"service --init app"*) echo "this release is broken: the app exits" >&2; exit 3;; esac
exec /opt/neuronova/neuronova.real "$@"
"""
TIMINGS: dict[str, float] = {}


@dataclass
class Vm:
    """sshd on 127.0.0.1:``port``; log in as root with ``key``, trusting ``known_hosts``."""

    port: int
    key: Path
    known_hosts: Path
    folder: Path  # the deploy's folder on the "VM"

    def ssh(self, *options: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o",
                f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-p", str(self.port), *options, "root@127.0.0.1"]  # fmt: skip


def sshd_config(folder: Path, port: int) -> str:
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1",
        f"HostKey {folder}/host_ed25519", f"PidFile {folder}/sshd.pid",
        f"AuthorizedKeysFile {folder}/authorized_keys",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "Subsystem sftp internal-sftp", "MaxStartups 50:30:100",
        "LogLevel ERROR", "",
    ])  # fmt: skip


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def vm(tmp_path_factory) -> Iterator[Vm]:
    """openssh-server on a free loopback port with its own host key, key-only login."""
    sshd = require_tool("/usr/sbin/sshd", "openssh-server")
    require_tool("ssh", "openssh-client")
    folder = tmp_path_factory.mktemp("vm")
    host_key = keygen(folder / "host_ed25519")
    (folder / "authorized_keys").write_text(keygen(folder / "deploy_key") + "\n")
    port = reserve_port()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (folder / "sshd_config").write_text(sshd_config(folder, port))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")])
    machine = Vm(port, folder / "deploy_key", folder / "known_hosts", folder / "srv")
    machine.folder.mkdir()
    try:
        wait_for(lambda: subprocess.run([*machine.ssh(), "true"], capture_output=True,
                                        timeout=10).returncode == 0, 30, "sshd")  # fmt: skip
        yield machine
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def releases(bundle, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Version -> image archive: 1.0.0, 1.0.1 (same bundle, a label more), 1.0.2 broken."""
    for program, package in (("podman", "podman"), ("podman-compose", "podman-compose"),
                             ("debootstrap", "debootstrap")):  # fmt: skip
        require_tool(program, package)
    ensure_base_images()
    folder = tmp_path_factory.mktemp("releases")
    check_engine(folder)
    build_image(bundle, f"{IMAGE}:1.0.0")
    derived = {
        "1.0.1": f"FROM {IMAGE}:1.0.0\nLABEL org.opencontainers.image.version=1.0.1\n",
        "1.0.2": (f"FROM {IMAGE}:1.0.0\nUSER root\n"
                  "RUN mv /opt/neuronova/neuronova /opt/neuronova/neuronova.real\n"
                  "COPY broken-app /opt/neuronova/neuronova\nUSER neuronova\n"),
    }  # fmt: skip
    (folder / "broken-app").write_text(BROKEN_APP)
    (folder / "broken-app").chmod(0o755)
    for version, containerfile in derived.items():
        (folder / "Containerfile").write_text(containerfile)
        podman("build", "-q", "-t", f"{IMAGE}:{version}", str(folder), timeout=600)
    archives = {}
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        archives[version] = folder / f"neuronova-{version}.tar"
        podman("save", "-o", str(archives[version]), f"{IMAGE}:{version}", timeout=600)
    for version in reversed(archives):  # the VM gets each from its archive alone
        podman("rmi", f"{IMAGE}:{version}")
    yield archives
    for version in archives:
        podman("rmi", "-f", f"{IMAGE}:{version}", check=False)


@dataclass
class Site:
    """The appliance's settings on the VM (``.env``) and what the test needs to reach it."""

    vm: Vm
    project: str
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)

    def write_env(self, **changes: str | None) -> None:
        """``.env`` from .env.example's settings, with ``changes`` (None: line left out)."""
        values = {**self.env, **changes}
        lines = [f"{k}={v}" for k, v in values.items() if v is not None]
        path = self.vm.folder / ".env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def volume(self, name: str = "home") -> Path:
        mount = podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                       f"{self.project}_{name}")  # fmt: skip
        return Path(mount.strip())

    def containers(self, service: str) -> list[str]:
        label = f"label=io.podman.compose.project={self.project}"
        names = podman("ps", "--filter", label, "--format", "{{.Names}}").split()
        return sorted(n for n in names if n.startswith(f"{self.project}_{service}_"))

    def running_image(self, service: str = "app") -> str:
        return podman("inspect", "--format", "{{.ImageName}}",
                      self.containers(service)[0]).strip()  # fmt: skip

    def current_version(self) -> str:
        return (self.vm.folder / "current-version").read_text().strip()


def example_settings() -> dict[str, str]:
    """The settings .env.example names, with its values."""
    found = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            found[name.strip()] = value.strip()
    return found


@pytest.fixture(scope="module")
def site(vm, releases) -> Iterator[Site]:
    """The VM's .env (every setting of .env.example); the project removed at the end
    (before the releases' images)."""
    ports = {name: reserve_port() for name in ("HTTP_PORT", "HTTPS_PORT", "DICOM_PORT")}
    project = f"nndeploy{os.getpid()}"
    env = {**example_settings(), "REDIS_IMAGE": REDIS_IMAGE, "POSTGRES_IMAGE": POSTGRES_IMAGE,
           "REDIS_PASSWORD": os.urandom(12).hex(), "BIND": "127.0.0.1",
           **{k: str(v) for k, v in ports.items()}}  # fmt: skip
    made = Site(vm, project, ports, env)
    made.write_env()
    yield made
    for release in sorted((vm.folder / "releases").glob("*")):
        subprocess.run(["podman-compose", "-p", project, "-f", "compose.yaml", "down", "-t", "5"],
                       cwd=release, capture_output=True, timeout=300)  # fmt: skip
    podman("rm", "-f", "-t", "0", *(podman("ps", "-aq", "--filter",
           f"label=io.podman.compose.project={project}").split()), check=False)  # fmt: skip
    for name in ("internal", "public"):
        podman("network", "rm", "-f", f"{project}_{name}", check=False)
    for name in VOLUMES:
        podman("volume", "rm", "-f", f"{project}_{name}", check=False)


def deploy(site: Site, version: str, archive: Path, report: Path) -> subprocess.CompletedProcess:
    """``packaging/deploy.py`` of ``version`` to the VM, podman and podman-compose as engine."""
    vm = site.vm
    command = [
        sys.executable, str(REPO / "packaging" / "deploy.py"),
        "--host", "127.0.0.1", "--port", str(vm.port), "--user", "root",
        "--key", str(vm.key), "--known-hosts", str(vm.known_hosts),
        "--version", version, "--image", IMAGE, "--image-archive", str(archive),
        "--dir", str(vm.folder), "--engine", "podman", "--compose", "podman-compose",
        "--project", site.project, "--healthy-timeout", "240", "--report", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    said = f"exit status {done.returncode}\n{done.stderr}"
    (ARTIFACTS / f"deploy-{version}.txt").write_text(said)
    return done


def client_of(site: Site) -> HttpsClient:
    """A user of the appliance, over HTTPS on the published port."""
    return HttpsClient(site.ports["HTTPS_PORT"], site.volume() / "tls" / "server.crt")


def reader_sees(site: Site, series) -> int:
    """How many instances of ``series`` the reader added after the first deploy sees."""
    client = client_of(site)
    token = client.login("reader", "reader-pass-1234")
    return len(client.instances(token, series.study_uid, series.series_uid))


def admin_password(site: Site) -> str:
    return (site.volume() / "secrets" / "first-admin-password").read_text().strip()


def journal_states(site: Site, sop_uids: list[str]) -> dict[str, str]:
    database = site.volume() / "db" / "appliance.db"
    marks = ",".join("?" * len(sop_uids))
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute(f"SELECT sop_uid, state FROM instances WHERE sop_uid IN ({marks})",
                          sop_uids).fetchall()  # fmt: skip
    return dict(rows)


def wait_stored(site: Site, sop_uids: list[str], timeout: float) -> None:
    def stored() -> bool:
        states = journal_states(site, sop_uids)
        return len(states) == len(sop_uids) and set(states.values()) == {"stored"}

    wait_for(stored, timeout, f"{len(sop_uids)} acknowledged objects stored")


def test_only_the_key_logs_in(vm):
    """The VM refuses a login without the key (no password is ever asked)."""
    tried = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                            "-o", f"UserKnownHostsFile={vm.known_hosts}", "-p", str(vm.port),
                            "root@127.0.0.1", "true"], capture_output=True, text=True,
                           timeout=30)  # fmt: skip
    assert tried.returncode == 255
    assert "Permission denied (publickey)" in tried.stderr


def test_missing_settings_are_named_and_no_value_is_printed(site, releases, tmp_path):
    site.write_env(REDIS_PASSWORD="", AE_TITLE=None, SERVER_NAMES="canary-value.example")
    try:
        done = deploy(site, "1.0.0", releases["1.0.0"], tmp_path / "report.json")
    finally:
        site.write_env()
    assert done.returncode == 1, done.stderr
    assert "missing from" in done.stderr and "AE_TITLE" in done.stderr, done.stderr
    assert "empty in" in done.stderr and "REDIS_PASSWORD" in done.stderr, done.stderr
    assert "canary-value" not in done.stdout + done.stderr
    assert site.env["REDIS_PASSWORD"] not in done.stdout + done.stderr
    assert not (site.vm.folder / "current-version").exists()
    assert podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={site.project}") == ""


@pytest.fixture(scope="module")
def first(site, releases, tmp_path_factory):
    """The first deploy, from nothing: 1.0.0. Then a reader and a CT study are added."""
    report = tmp_path_factory.mktemp("first") / "report.json"
    done = deploy(site, "1.0.0", releases["1.0.0"], report)
    assert done.returncode == 0, done.stderr
    TIMINGS["first_deploy_to_healthy_s"] = json.loads(report.read_text())["seconds"][
        "deploy_to_healthy"]  # fmt: skip
    app = site.containers("app")[0]
    added = subprocess.run(["podman", "exec", "-i", app, "neuronova", "user", "add", "reader",
                            "--role", "radiologist", "--password-stdin"],
                           input="reader-pass-1234\n", capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert added.returncode == 0, added.stderr
    series = write_series(tmp_path_factory.mktemp("series"), make_slices(6))
    sent = subprocess.run(storescu_command(site.ports["DICOM_PORT"], series.files, "CT_SCANNER"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    wait_stored(site, series.sop_uids, 180)
    return done, series


def test_the_first_deploy_runs_and_records_its_version(site, first):
    done, series = first
    assert site.current_version() == "1.0.0"
    assert site.running_image() == f"{IMAGE}:1.0.0"
    assert "check passed: login page" in done.stderr
    assert "check passed: C-ECHO" in done.stderr
    assert "check passed: /api/health" in done.stderr
    assert reader_sees(site, series) == 6


class Modality:
    """storescu sending one new CT object per association, until told to stop (bounded)."""

    def __init__(self, port: int, folder: Path, limit: int = 2000) -> None:
        self.port, self.folder, self.limit = port, folder, limit
        self.slices = make_slices(4)
        self.study, self.series, self.frame = generate_uid(), generate_uid(), generate_uid()
        self.acknowledged: list[str] = []
        self.attempts: list[tuple[float, float, bool]] = []  # start, end, acknowledged
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send_all, daemon=True)

    def _send_all(self) -> None:
        for index in range(self.limit):
            if self.stop.is_set():
                return
            ds = ct_file_dataset(self.slices[index % 4], index, self.study, self.series,
                                 self.frame)  # fmt: skip
            path = self.folder / f"{index:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            started = time.monotonic()
            sent = subprocess.run(storescu_command(self.port, [path], "CT_SCANNER", "-v"),
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            ok = "Received Store Response (Success)" in sent.stdout + sent.stderr
            self.attempts.append((started, time.monotonic(), ok))
            if ok:
                self.acknowledged.append(str(ds.SOPInstanceUID))
            else:
                time.sleep(0.05)  # pace the retries of a refused association

    def successes_after(self, moment: float) -> int:
        return sum(1 for start, _, ok in self.attempts if ok and start > moment)

    def longest_refusal(self) -> float:
        """The longest time from a failed attempt's start to the next acknowledged one's."""
        longest, first_failure = 0.0, None
        for start, _, ok in self.attempts:
            if not ok and first_failure is None:
                first_failure = start
            elif ok and first_failure is not None:
                longest, first_failure = max(longest, start - first_failure), None
        return longest


def test_an_upgrade_while_a_modality_sends_loses_nothing(site, first, releases, tmp_path):
    _, series = first
    modality = Modality(site.ports["DICOM_PORT"], tmp_path)
    modality.thread.start()
    try:
        wait_for(lambda: len(modality.acknowledged) >= 5, 60, "the modality sending")
        done = deploy(site, "1.0.1", releases["1.0.1"], tmp_path / "report.json")
        ended = time.monotonic()
        wait_for(lambda: modality.successes_after(ended) >= 3, 60, "the new receiver accepting")
    finally:
        modality.stop.set()
        modality.thread.join(timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    TIMINGS["upgrade_to_healthy_s"] = report["seconds"]["deploy_to_healthy"]
    TIMINGS["upgrade_stop_previous_s"] = report["seconds"]["stop_previous"]
    TIMINGS["upgrade_dicom_refused_longest_s"] = round(modality.longest_refusal(), 1)
    TIMINGS["upgrade_objects_acknowledged"] = len(modality.acknowledged)
    TIMINGS["upgrade_attempts_refused"] = sum(1 for *_, ok in modality.attempts if not ok)
    assert site.current_version() == "1.0.1"
    assert site.running_image() == f"{IMAGE}:1.0.1"
    wait_stored(site, modality.acknowledged, 300)
    assert reader_sees(site, series) == 6
    client = client_of(site)
    token = client.login("reader", "reader-pass-1234")
    listed = client.instances(token, modality.study, modality.series)
    assert len(listed) == len(modality.acknowledged)


def test_a_broken_release_is_rolled_back_to_the_previous_one(site, first, releases, tmp_path):
    _, series = first
    done = deploy(site, "1.0.2", releases["1.0.2"], tmp_path / "report.json")
    assert done.returncode == 1, done.stderr
    assert "Error: 1.0.2 failed the check 'healthy'" in done.stderr, done.stderr
    assert "rolled back to 1.0.1, which runs and passes every check" in done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["deployed"], report["rolled_back"]) == (False, True)
    TIMINGS["broken_detected_s"] = report["seconds"]["deploy_to_healthy"]
    TIMINGS["rollback_to_healthy_s"] = report["seconds"]["rollback_to_healthy"]
    assert site.current_version() == "1.0.1"
    assert site.running_image() == f"{IMAGE}:1.0.1"
    assert reader_sees(site, series) == 6
    client_of(site).login("admin", admin_password(site))
    history = (site.vm.folder / "deployed-versions").read_text().split()
    assert history == ["1.0.0", "1.0.1"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="module")
def deploy_module():
    """packaging/deploy.py as a module."""
    return packaging_script("deploy")


def test_the_last_three_versions_are_kept(vm, deploy_module):
    """record() names the running version and drops releases (folder and image) beyond the
    last three: on the VM over SSH, without containers."""
    folder = vm.folder / "history-check"
    for version in ("0.1", "0.2", "0.3"):
        (folder / "releases" / version).mkdir(parents=True)
    (folder / "deployed-versions").write_text("0.1\n0.2\n0.3\n")
    (folder / "releases" / "0.4").mkdir()
    remote = deploy_module.Remote("127.0.0.1", "root", vm.port, vm.key, vm.known_hosts)
    target = deploy_module.Target(remote, str(folder), "podman", ["podman-compose"],
                                  "nnhistory", "localhost/nn-absent")  # fmt: skip
    assert deploy_module.record(target, "0.4") == ["0.1"]
    assert (folder / "deployed-versions").read_text().split() == ["0.2", "0.3", "0.4"]
    assert (folder / "current-version").read_text() == "0.4\n"
    assert sorted(p.name for p in (folder / "releases").iterdir()) == ["0.2", "0.3", "0.4"]


def test_the_workflow_runs_the_deploy_with_options_it_knows(tmp_path, monkeypatch, deploy_module):
    """.github/workflows/deploy.yml installs the script's two libraries and runs the script;
    its command line parses (the options exist, the required ones are there)."""
    steps = yaml.safe_load((REPO / ".github" / "workflows" / "deploy.yml").read_text())[
        "jobs"]["deploy"]["steps"]  # fmt: skip
    runs = [" ".join(step["run"].split()) for step in steps if "run" in step]
    assert runs[0] == 'python -m pip install "click>=8.1" "pynetdicom>=2.1"'
    assert len(runs) == 2 and runs[1].startswith("python packaging/deploy.py ")
    key = tmp_path / "key"
    key.write_text("not used")
    env = {"DEPLOY_HOST": "vm.example", "DEPLOY_USER": "deploy", "VERSION": "v1.4.0",
           "NEURONOVA_IMAGE": "europe-docker.pkg.dev/p/neuronova/neuronova"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    words = [os.path.expandvars(word) for word in shlex.split(runs[1])[2:]]
    context = deploy_module.main.make_context("deploy.py", [*words, "--key", str(key),
                                                            "--known-hosts", str(key)])  # fmt: skip
    assert context.params["host"] == "vm.example"
    assert context.params["version"] == "v1.4.0"
    assert context.params["engine"] == "docker"
