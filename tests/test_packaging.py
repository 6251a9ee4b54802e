"""The package on a bare system: build the bundle and the .deb, install it with dpkg in a
``debootstrap --variant=minbase bookworm`` root (no Python, nginx or Orthanc there), start
the appliance inside that root as its systemd unit would, use it from outside over
loopback, then upgrade to a second build, remove and purge.

The pristine root is made once and kept in ``/var/cache/neuronova-test/`` (debootstrap
takes about 90 s); each run works on a copy. systemd is not PID 1 here, so the appliance
is started with the unit's user, environment and command in its own PID and mount
namespaces (``unshare --root``), sharing the host's loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import requests
from conftest import free_port, require_tool, storescu_command, wait_for

from appliance.config import load_settings, render_toml
from appliance.transcode.codestream import RPCL_SYNTAX
from bench.cloud import bookworm_root
from bench.harness import ACCEPT, split_multipart
from bench.packaging import load_build
from bench.synthetic import make_slices, write_series

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DATA = "var/lib/neuronova"
UNIT = "lib/systemd/system/neuronova.service"
HTJ2K = "1.2.840.10008.1.2.4.201"
SLICES = 6
# Shared objects a bundled program may take from the system: glibc's (and libcrypt).
GLIBC = {"libc", "libm", "libdl", "librt", "libpthread", "libresolv", "libutil",
         "ld-linux-x86-64", "libnss_files", "libnss_dns", "libcrypt", "libgcc_s"}  # fmt: skip


FIRST = load_build().source_version()  # the app's; the second package wraps the same bundle
SECOND = f"{FIRST}+rebuild1"


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


def mapped_libraries(pid: int) -> set[str]:
    """Paths of the shared objects mapped by process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in maps if ".so" in line and len(line.split()) == 6}


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
        self.http_port, self.https_port, self.dicom_port = free_port(), free_port(), free_port()
        ports = {"app_port": free_port(), "gate_port": free_port(), "orthanc_port": free_port()}
        values = {"bind": "127.0.0.1", "http_port": self.http_port, **ports,
                  "https_port": self.https_port, "dicom_port": self.dicom_port}  # fmt: skip
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

    def session(self) -> requests.Session:
        """A session that trusts the appliance's self-signed certificate (made for localhost)."""
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.home / "tls" / "server.crt")
        return session

    def login(self, username: str, password: str) -> tuple[requests.Session, str]:
        session = self.session()
        resp = session.post(f"{self.https}/api/auth/login", timeout=10,
                            json={"username": username, "password": password})  # fmt: skip
        assert resp.status_code == 200, resp.text
        return session, resp.json()["access_token"]

    def dpkg_install(self, deb: Path) -> str:
        shutil.copy(deb, self.root / "tmp" / deb.name)
        return in_root(self.root, "dpkg", "-i", f"/tmp/{deb.name}")


@pytest.fixture(scope="module")
def built(bundle, tmp_path_factory) -> Iterator[tuple[object, Path]]:
    """The first build (tarball, .deb, lintian) of the run's bundle; its output folder."""
    for program, package in (("dpkg-deb", "dpkg"), ("lintian", "lintian"),
                             ("patchelf", "patchelf"), ("unshare", "util-linux")):  # fmt: skip
        require_tool(program, package)
    out = tmp_path_factory.mktemp("dist")
    build = load_build()
    try:
        report = build.build(FIRST, out, bundle=bundle)
    except build.BuildError as exc:
        pytest.fail(f"packaging/build.py: {exc}", pytrace=False)
    yield report, out
    shutil.rmtree(out, ignore_errors=True)  # about 800 MB


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Iterator[Installed]:
    """A fresh copy of the bare root with the first .deb installed and started."""
    report, _ = built
    work = tmp_path_factory.mktemp("bare")
    root = work / "root"
    copied = subprocess.run(["cp", "-a", str(pristine_root()), str(root)], capture_output=True)
    assert copied.returncode == 0, copied.stderr
    look = "for p in python3 nginx Orthanc rclone; do command -v $p; done; ls -d /usr/lib/python3*"
    missing = in_root(root, "sh", "-c", f"({look}) 2>/dev/null || true")
    assert missing.strip() == "", f"the bare root is not bare: {missing}"
    output = Installed(root, work / "run.log", "").dpkg_install(Path(report.deb))
    password_file = root / DATA / "initial-admin-password"
    assert f"/{DATA}/initial-admin-password" in output  # the admin is told where it is
    password = re.search(r"password:\s+(\S+)", password_file.read_text())
    assert password, password_file.read_text()
    appliance = Installed(root, work / "run.log", password.group(1))
    appliance.configure()
    appliance.first_start = appliance.start()
    yield appliance
    appliance.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pushed(installed, tmp_path_factory):
    """A CT series sent with dcmtk's storescu and stored (QIDO lists every instance)."""
    slices = make_slices(SLICES)
    series = write_series(tmp_path_factory.mktemp("series"), slices)
    command = storescu_command(installed.dicom_port, series.files, "CT_SCANNER")
    sent = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    session, token = installed.login("admin", installed.password)

    def listed() -> bool:
        return len(qido_instances(installed, session, token, series)) == SLICES

    wait_for(listed, 120, f"{SLICES} instances to be listed by QIDO")
    return series, slices


def qido_instances(installed: Installed, session, token: str, series) -> list[dict]:
    url = (f"{installed.https}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances")  # fmt: skip
    resp = session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code in (200, 204), resp.text
    return resp.json() if resp.status_code == 200 else []


def test_build_writes_the_tarball_and_a_lintian_clean_deb(built):
    report, out = built
    assert Path(report.tarball) == out / f"neuronova-{FIRST}-linux-x86_64.tar.gz"
    assert Path(report.deb) == out / f"neuronova_{FIRST}_amd64.deb"
    assert report.lintian == []
    assert report.sizes["tarball"] <= 150e6, report.sizes
    with tarfile.open(report.tarball) as tar:
        top = tar.getmember(f"neuronova-{FIRST}/neuronova")
        assert top.isfile() and top.mode & 0o111
        for part in ("bin/nginx", "bin/Orthanc", "bin/rclone",
                     "nginx-modules/ngx_http_brotli_static_module.so",
                     "orthanc-plugins/libOrthancDicomWeb.so",
                     "dcmtk/dicom.dic", "spa_dist/pacs-viewer/index.html",
                     "spa_dist/main/index.html", "bundled_nginx/nginx.conf.template"):  # fmt: skip
            tar.getmember(f"neuronova-{FIRST}/_internal/{part}")


def test_install_makes_the_user_home_unit_and_command(installed):
    root = installed.root
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("neuronova:"))
    uid = int(entry.split(":")[2])
    assert uid < 1000 and entry.endswith(":/usr/sbin/nologin")  # a system user
    home = installed.home.stat()
    assert home.st_uid == uid and home.st_mode & 0o007 == 0
    secret = (installed.home / "initial-admin-password").stat()
    assert secret.st_uid == uid and secret.st_mode & 0o077 == 0
    assert os.access(root / "usr/bin/neuronova", os.X_OK)
    unit = (root / UNIT).read_text()
    for line in ("User=neuronova", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/neuronova", "PrivateTmp=yes"):  # fmt: skip
        assert line in unit.splitlines()
    assert f"neuronova {FIRST}" in in_root(root, "neuronova", "version")  # as root, via setpriv
    other = subprocess.run(["chroot", "--userspec=65534:65534", str(root), "neuronova", "user",
                            "list"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert other.stderr.startswith("Error: /var/lib/neuronova belongs to the neuronova user")


def test_the_services_use_only_the_bundle_and_glibc(installed):
    """Every process runs as the neuronova user from /opt/neuronova, and maps no shared
    object from outside the bundle but glibc's own (and libcrypt, which glibc's users get
    from Debian's essential set)."""
    assert installed.process is not None
    uid = (installed.home).stat().st_uid
    bundle = str(installed.root / "opt/neuronova") + "/"
    processes = descendants(installed.process.pid)[2:]  # past unshare and setpriv's exec
    names = set()
    for pid in processes:
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
        exe = os.readlink(f"/proc/{pid}/exe")
        assert exe.startswith(bundle), exe
        names.add(Path(exe).name)
        for lib in mapped_libraries(pid):
            if not lib.startswith(bundle) and "/gconv/" not in lib:  # glibc's iconv modules
                assert Path(lib).name.split(".so")[0] in GLIBC, f"{exe} maps {lib}"
    assert {"neuronova", "nginx", "Orthanc"} <= names


def test_the_bundled_rclone_runs_for_off_site_backups(installed):
    """Off-site copies need rclone; the bare root has none, the bundle brings it."""
    version = in_root(installed.root, "/opt/neuronova/_internal/bin/rclone", "version")
    assert version.startswith("rclone v"), version


def test_the_unit_verifies_and_is_hardened(tmp_path):
    """systemd's own checks (systemd is not PID 1 here, so the unit is not run)."""
    analyze = require_tool("systemd-analyze", "systemd")
    unit = (REPO / "packaging" / "deb" / "neuronova.service").read_text()
    check = tmp_path / "neuronova.service"  # verify wants ExecStart= to exist
    check.write_text(unit.replace("/opt/neuronova/neuronova", "/bin/true"))
    verify = subprocess.run([analyze, "verify", str(check)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", str(check)],
                              capture_output=True, text=True)  # fmt: skip
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 3.5, security.stdout[-2000:]


def test_c_echo_is_answered(installed):
    echoscu = require_tool("/usr/bin/echoscu", "dcmtk")
    echo = subprocess.run([echoscu, "-aec", "NEURONOVA", "127.0.0.1", str(installed.dicom_port)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert echo.returncode == 0, echo.stderr


def test_a_ct_series_comes_back_as_pixel_identical_htj2k_frames(installed, pushed):
    series, slices = pushed
    session, token = installed.login("admin", installed.password)
    found = qido_instances(installed, session, token, series)
    assert {i["00080018"]["Value"][0] for i in found} == set(series.sop_uids)
    url = (f"{installed.https}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[2]}/frames/1")  # fmt: skip
    resp = session.get(url, headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
                       timeout=10)  # fmt: skip
    assert resp.status_code == 200, resp.text
    part_type, codestream = split_multipart(resp.headers["Content-Type"], resp.content)
    assert f"transfer-syntax={RPCL_SYNTAX}" in part_type
    assert np.array_equal(imagecodecs.htj2k_decode(codestream).astype(np.int16), slices[2])


def test_the_viewer_is_served_after_login(installed):
    session, _ = installed.login("admin", installed.password)
    page = session.get(f"{installed.https}/pacs-viewer/", timeout=10)
    assert page.status_code == 200 and "app-config.js" in page.text
    config = session.get(f"{installed.https}/pacs-viewer/app-config.js", timeout=10)
    assert config.status_code == 200 and "/api/pacs/dicom-web" in config.text
    # The bundled brotli module sends the precompressed main bundle (no Python brotli
    # here to decode it: its size against the file's says it is the .br one).
    bundle = re.search(r'src="/pacs-viewer/(app\.bundle\.[0-9a-f]+\.js)"', page.text)
    assert bundle, page.text[:500]
    packed = session.get(f"{installed.https}/pacs-viewer/{bundle[1]}", timeout=30, stream=True,
                         headers={"Accept-Encoding": "br"})  # fmt: skip
    assert packed.status_code == 200 and packed.headers["Content-Encoding"] == "br"
    sibling = REPO / "spa_dist" / "pacs-viewer" / f"{bundle[1]}.br"
    assert int(packed.headers["Content-Length"]) == sibling.stat().st_size
    packed.close()
    plain = requests.get(f"http://127.0.0.1:{installed.http_port}/", allow_redirects=False,
                         timeout=10)  # fmt: skip
    assert plain.status_code in (301, 302, 308)  # plain HTTP only redirects to HTTPS


def test_upgrade_keeps_the_study_the_users_and_the_settings(built, installed, pushed):
    report, out = built
    series, _ = pushed
    in_root(installed.root, "neuronova", "user", "add", "reader", "--role", "radiologist",
            "--password-stdin", stdin="reader-pass-1234\n")  # fmt: skip
    settings_before = (installed.home / "neuronova.toml").read_text()
    second = load_build().build(SECOND, out / "second", bundle=Path(report.bundle), lint=False)
    installed.stop()  # what the unit's prerm does before the files are replaced
    output = installed.dpkg_install(Path(second.deb))
    assert "initial-admin-password" not in output  # the first admin is made once
    version = in_root(installed.root, "dpkg-query", "-W", "-f=${Version}", "neuronova")
    assert version == SECOND
    assert (installed.home / "neuronova.toml").read_text() == settings_before
    installed.start()
    users = in_root(installed.root, "neuronova", "user", "list")
    assert "admin" in users and "reader" in users
    session, token = installed.login("reader", "reader-pass-1234")
    assert len(qido_instances(installed, session, token, series)) == SLICES


def test_remove_keeps_the_data_and_purge_deletes_it(installed):
    installed.stop()
    in_root(installed.root, "dpkg", "--remove", "neuronova")
    assert not (installed.root / "opt/neuronova").exists()
    assert (installed.home / "neuronova.toml").exists()
    in_root(installed.root, "dpkg", "--purge", "neuronova")
    assert not installed.home.exists()
