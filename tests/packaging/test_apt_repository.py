"""The signed apt repository a clinic adds once (docs/install-clinic.md), proved in a bare
Debian minbase root (tests/support/bare_root.py) against the repository served from a loopback
HTTP server, made by the release's own step (``packaging/release.py apt-repo``) and signed
with a throw-away key:

- ``apt-get install neuronova`` from it, with only the key and the source line added;
- an unsigned index, an index changed after signing, one signed by a key the source line
  does not name, and a package changed after the index was signed: apt refuses each, and
  the installed version stays;
- ``apt-get upgrade`` to the next version while a modality sends (storescu, one object
  per association, each retried until acknowledged as a modality does): every
  acknowledged object is stored; settings, users and studies are kept.

The two versions are two builds of the run's one bundle stamped 1.0.0 and 1.0.1
(``packaging/build.py``): the same code, so the upgrade proves the package and apt side,
not a change of code. systemd is not PID 1 in this root, so the test stops the appliance
where the package's prerm would (``systemctl stop``) and starts it where its postinst would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.migrations import MIGRATIONS
from bench.packaging import load_build
from bench.synthetic import make_slices, write_series
from tests.support.bare_root import (
    DATA,
    Installed,
    copy_of_pristine_root,
    in_root,
    initial_password,
)
from tests.support.signing import SigningKey, release, served, throwaway_key
from tests.support.tools import require_tool, storescu_command
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

V1, V2 = "1.0.0", "1.0.1"
KEYRING = "usr/share/keyrings/neuronova-archive-keyring.gpg"
SOURCE_LINE = "deb [signed-by=/{keyring}] {url}/ ./\n"
SLICES = 30


@dataclass
class Site:
    """The static site the repositories are served from (one folder per repository)."""

    folder: Path
    url: str
    key: SigningKey

    def add(self, name: str, *debs: Path, key: SigningKey | None = None) -> Path:
        """Add ``debs`` to repository ``name`` with the release's step, signed by ``key``."""
        signer = key or self.key
        made = release("apt-repo", "--repo", str(self.folder / name), "--key", signer.fingerprint,
                       *map(str, debs), env=signer.env)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        return self.folder / name

    def copy(self, source: str, name: str) -> Path:
        """Repository ``name`` as a copy of ``source`` (hard links: change by replacing)."""
        target = self.folder / name
        shutil.copytree(self.folder / source, target, copy_function=os.link)
        return target


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` anew (never through a hard link shared with another repository)."""
    path.unlink()
    path.write_bytes(data)


def apt(root: Path, *args: str, repository: str | None = None) -> subprocess.CompletedProcess:
    """apt-get in the root; ``repository`` uses that source list and lists folder only."""
    options = []
    if repository is not None:
        options = ["-o", f"Dir::Etc::SourceList=/etc/apt/{repository}.list",
                   "-o", "Dir::Etc::SourceParts=/etc/apt/no-parts.d",
                   "-o", f"Dir::State::Lists=/var/lib/apt/lists-{repository}"]  # fmt: skip
        lists = root / "var/lib/apt" / f"lists-{repository}"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (root / "etc/apt/no-parts.d").mkdir(exist_ok=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["chroot", str(root), "apt-get", "-q", *options, *args], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def installed_version(root: Path) -> str:
    return in_root(root, "dpkg-query", "-W", "-f=${Version}", "neuronova")


@pytest.fixture(scope="module")
def debs(bundle, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The .deb of each version: the run's bundle stamped 1.0.0, then 1.0.1."""
    require_tool("apt-ftparchive", "apt-utils")
    out = tmp_path_factory.mktemp("apt-builds")
    build = load_build()
    made = {v: Path(build.build(v, out / v, bundle=bundle, lint=False).deb) for v in (V1, V2)}
    yield made
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def site(key, debs, tmp_path_factory) -> Iterator[Site]:
    """The clinic's repository ``apt`` (1.0.0 for now), served on loopback."""
    folder = tmp_path_factory.mktemp("site")
    with served(folder) as url:
        made = Site(folder, url, key)
        made.add("apt", debs[V1])
        yield made


@pytest.fixture(scope="module")
def clinic(site, tmp_path_factory) -> Iterator[Installed]:
    """A bare root that installed NeuroNova as docs/install-clinic.md says, started."""
    work = tmp_path_factory.mktemp("clinic")
    root = copy_of_pristine_root(work)
    (root / "etc/apt/sources.list").write_text("")  # the package needs nothing more
    shutil.copyfile(site.folder / "apt" / "neuronova-archive-keyring.gpg", root / KEYRING)
    (root / "etc/apt/sources.list.d/neuronova.list").write_text(
        SOURCE_LINE.format(keyring=KEYRING, url=f"{site.url}/apt")
    )
    updated = apt(root, "update")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    installed = apt(root, "install", "-y", "neuronova")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"/{DATA}/initial-admin-password" in installed.stdout
    appliance = Installed(root, work / "run.log", initial_password(root))
    appliance.configure()
    appliance.start()
    yield appliance
    appliance.stop()
    shutil.rmtree(root, ignore_errors=True)


def try_repository(clinic: Installed, site: Site, name: str, *commands: list[str],
                   keyring: str = KEYRING) -> subprocess.CompletedProcess:  # fmt: skip
    """``apt-get update`` against repository ``name`` alone, then ``commands``; the first
    that fails (or the last)."""
    line = SOURCE_LINE.format(keyring=keyring, url=f"{site.url}/{name}")
    (clinic.root / "etc/apt" / f"{name}.list").write_text(line)
    for command in (["update"], *commands):
        result = apt(clinic.root, *command, repository=name)
        if result.returncode != 0:
            return result
    return result


def test_apt_installs_neuronova_from_the_signed_repository(clinic):
    assert installed_version(clinic.root) == V1
    assert in_root(clinic.root, "neuronova", "version") == f"neuronova {V1}\n"
    client, token = clinic.login("admin", clinic.password)
    health = client.session.get(f"{clinic.https}/api/health", timeout=10,
                                headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    assert health["components"]["app"]["version"] == V1


def test_an_unsigned_index_is_refused(clinic, site):
    unsigned = site.copy("apt", "unsigned")
    (unsigned / "InRelease").unlink()
    (unsigned / "Release.gpg").unlink()
    result = try_repository(clinic, site, "unsigned")
    assert result.returncode != 0
    assert "is not signed" in result.stdout + result.stderr


def test_an_index_changed_after_signing_is_refused(clinic, site):
    changed = site.copy("apt", "changed-release")
    text = (changed / "InRelease").read_text()
    replace_file(changed / "InRelease", text.replace("Label: NeuroNova", "Label: Other").encode())
    result = try_repository(clinic, site, "changed-release")
    assert result.returncode != 0
    assert "BADSIG" in result.stdout + result.stderr


def test_a_package_list_changed_after_signing_is_refused(clinic, site):
    import gzip

    changed = site.copy("apt", "changed-packages")
    packages = (changed / "Packages").read_bytes().replace(b"Priority: optional",
                                                           b"Priority: required")  # fmt: skip
    replace_file(changed / "Packages", packages)
    replace_file(changed / "Packages.gz", gzip.compress(packages))
    result = try_repository(clinic, site, "changed-packages")
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "Hash Sum mismatch" in said or "unexpected size" in said, said


def test_an_index_signed_by_another_key_is_refused(clinic, site, debs):
    with throwaway_key("Someone Else") as other:
        site.add("other-key", debs[V2], key=other)
    result = try_repository(clinic, site, "other-key")
    assert result.returncode != 0
    assert "NO_PUBKEY" in result.stdout + result.stderr
    assert installed_version(clinic.root) == V1


def test_a_package_changed_after_signing_is_refused(clinic, site, debs):
    repository = site.copy("apt", "changed-deb")
    site.add("changed-deb", debs[V2])
    deb = repository / debs[V2].name
    data = bytearray(deb.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    replace_file(deb, bytes(data))
    result = try_repository(clinic, site, "changed-deb", ["install", "-y", "neuronova"])
    assert result.returncode != 0
    assert "Hash Sum mismatch" in result.stdout + result.stderr
    assert installed_version(clinic.root) == V1
    assert clinic.healthy()


@dataclass
class Modality:
    """storescu sending one object per association, each retried (every 0.2 s) until it
    is acknowledged, as a modality's queue does; the acknowledged SOP Instance UIDs."""

    port: int
    files: list[Path]
    sop_uids: list[str]
    acknowledged: list[str] = field(default_factory=list)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for path, sop_uid in zip(self.files, self.sop_uids, strict=True):
            while not self.stop.is_set():
                command = storescu_command(self.port, [path], "CT_SCANNER")
                if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
                    self.acknowledged.append(sop_uid)
                    break
                self.refused += 1
                self.stop.wait(0.2)


def test_apt_upgrade_while_a_modality_sends_keeps_everything(clinic, site, debs,
                                                             tmp_path_factory):  # fmt: skip
    root = clinic.root
    in_root(root, "neuronova", "user", "add", "reader", "--role", "radiologist",
            "--password-stdin", stdin="reader-pass-1234\n")  # fmt: skip
    settings_before = (clinic.home / "neuronova.toml").read_text()
    site.add("apt", debs[V2])  # the release of 1.0.1
    updated = apt(root, "update")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    series = write_series(tmp_path_factory.mktemp("upgrade-series"), make_slices(SLICES))
    modality = Modality(clinic.dicom_port, list(series.files), list(series.sop_uids))
    sender = threading.Thread(target=modality.run)
    sender.start()
    try:
        wait_for(lambda: len(modality.acknowledged) >= 3, 120, "3 objects acknowledged")
        before = len(modality.acknowledged)
        started = time.monotonic()
        clinic.stop()  # the package's prerm: systemctl stop neuronova
        upgraded = apt(root, "upgrade", "-y")
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        clinic.start()  # its postinst: systemctl restart neuronova
        down = time.monotonic() - started
        wait_for(lambda: len(modality.acknowledged) >= min(SLICES, before + 3), 120,
                 "objects acknowledged by the new version")  # fmt: skip
    finally:
        modality.stop.set()
        sender.join(120)
    assert modality.refused > 0, "the modality never met the upgrade"
    print(
        f"upgrade: {down:.1f} s from stop to healthy; {before} objects acknowledged "
        f"before, {len(modality.acknowledged)} in all, {modality.refused} refused tries"
    )
    assert installed_version(root) == V2
    assert in_root(root, "neuronova", "version") == f"neuronova {V2}\n"
    assert (clinic.home / "neuronova.toml").read_text() == settings_before
    assert "reader" in in_root(root, "neuronova", "user", "list")
    client, token = clinic.login("reader", "reader-pass-1234")

    def all_stored() -> bool:
        listed = client.instances(token, series.study_uid, series.series_uid)
        return set(modality.acknowledged) <= {i["00080018"]["Value"][0] for i in listed}

    wait_for(all_stored, 180, "every acknowledged object to be stored")
    admin, admin_token = clinic.login("admin", clinic.password)
    system = admin.session.get(f"{clinic.https}/api/admin/system", timeout=10,
                       headers={"Authorization": f"Bearer {admin_token}"}).json()  # fmt: skip
    assert system["version"] == V2
    assert system["home"]["version"] == V2  # the record: 1.0.1 started last,
    ran = [(m["number"], m["version"]) for m in system["home"]["migrations"]]
    assert ran == [(m.number, V1) for m in MIGRATIONS]  # each by the version that ran it
