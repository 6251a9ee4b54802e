"""The package on a bare system: build the bundle and the .deb, install it with dpkg in a
``debootstrap --variant=minbase bookworm`` root (no Python, nginx or Orthanc there), start
the appliance inside that root as its systemd unit would, use it from outside over
loopback, then upgrade to a second build, remove and purge. The bare root and the
appliance in it: tests/support/bare_root.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import requests

from appliance.transcode.codestream import RPCL_SYNTAX
from appliance.version import debian_version
from bench.harness import ACCEPT, split_multipart
from bench.packaging import load_build
from bench.synthetic import make_slices, write_series
from tests.support.bare_root import (
    DATA,
    UNIT,
    Installed,
    copy_of_pristine_root,
    descendants,
    in_root,
    initial_password,
)
from tests.support.paths import REPO
from tests.support.tools import require_tool, storescu_command
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

HTJ2K = "1.2.840.10008.1.2.4.201"
SLICES = 6
# Shared objects a bundled program may take from the system: glibc's (and libcrypt).
GLIBC = {"libc", "libm", "libdl", "librt", "libpthread", "libresolv", "libutil",
         "ld-linux-x86-64", "libnss_files", "libnss_dns", "libcrypt", "libgcc_s"}  # fmt: skip


FIRST = load_build().source_version()  # this checkout's; the second package wraps the same bundle
SECOND = f"{FIRST}+rebuild1"


def mapped_libraries(pid: int) -> set[str]:
    """Paths of the shared objects mapped by process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in maps if ".so" in line and len(line.split()) == 6}


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
    root = copy_of_pristine_root(work)
    output = Installed(root, work / "run.log", "").dpkg_install(Path(report.deb))
    assert f"/{DATA}/initial-admin-password" in output  # the admin is told where it is
    appliance = Installed(root, work / "run.log", initial_password(root))
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
    client, token = installed.login("admin", installed.password)

    def listed() -> bool:
        return len(client.instances(token, series.study_uid, series.series_uid)) == SLICES

    wait_for(listed, 120, f"{SLICES} instances to be listed by QIDO")
    return series, slices


def test_build_writes_the_tarball_and_a_lintian_clean_deb(built):
    report, out = built
    assert Path(report.tarball) == out / f"neuronova-{FIRST}-linux-x86_64.tar.gz"
    assert Path(report.deb) == out / f"neuronova_{debian_version(FIRST)}_amd64.deb"
    assert report.lintian == []
    assert report.sizes["tarball"] <= 150e6, report.sizes
    with tarfile.open(report.tarball) as tar:
        top = tar.getmember(f"neuronova-{FIRST}/neuronova")
        assert top.isfile() and top.mode & 0o111
        for part in ("bin/nginx", "bin/Orthanc", "bin/rclone",
                     "nginx-modules/ngx_http_brotli_static_module.so",
                     "orthanc-plugins/libOrthancDicomWeb.so",
                     "orthanc-plugins/libOrthancPostgreSQLIndex.so",
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
    client, token = installed.login("admin", installed.password)
    found = client.instances(token, series.study_uid, series.series_uid)
    assert {i["00080018"]["Value"][0] for i in found} == set(series.sop_uids)
    url = (f"{installed.https}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[2]}/frames/1")  # fmt: skip
    resp = client.session.get(url, headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
                              timeout=10)  # fmt: skip
    assert resp.status_code == 200, resp.text
    part_type, codestream = split_multipart(resp.headers["Content-Type"], resp.content)
    assert f"transfer-syntax={RPCL_SYNTAX}" in part_type
    assert np.array_equal(imagecodecs.htj2k_decode(codestream).astype(np.int16), slices[2])


def test_the_viewer_is_served_after_login(installed):
    session = installed.login("admin", installed.password)[0].session
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
    assert version == debian_version(SECOND)
    assert (installed.home / "neuronova.toml").read_text() == settings_before
    installed.start()
    users = in_root(installed.root, "neuronova", "user", "list")
    assert "admin" in users and "reader" in users
    client, token = installed.login("reader", "reader-pass-1234")
    assert len(client.instances(token, series.study_uid, series.series_uid)) == SLICES


def test_remove_keeps_the_data_and_purge_deletes_it(installed):
    installed.stop()
    in_root(installed.root, "dpkg", "--remove", "neuronova")
    assert not (installed.root / "opt/neuronova").exists()
    assert (installed.home / "neuronova.toml").exists()
    in_root(installed.root, "dpkg", "--purge", "neuronova")
    assert not installed.home.exists()
