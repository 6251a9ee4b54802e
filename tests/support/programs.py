"""Every program the test suite starts, directly or through another program, and its package.

``bash scripts/setup.sh --test`` installs these packages. The suite checks the whole list
before the first test (``pytest_sessionstart`` in ``tests/conftest.py``), so a machine that
lacks one stops at once with the packages to install, never with an error deep inside a
fixture. The list
was taken from an ``strace -f -e trace=execve`` of a whole run (see issue 15's note);
programs of a Debian package's own dependencies (``dpkg-deb`` under ``debootstrap``, say)
are listed where a missing one would fail a test.

Run it as a script to check a machine or a bare root: ``python3 tests/support/programs.py``
prints each program with the package that provides it and exits 1 if any is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Program:
    """A program a test or fixture runs, the Debian package that ships it, and who runs it."""

    name: str  # a command looked up on PATH, or an absolute path
    package: str
    used_by: str
    at_least: tuple[int, ...] = ()  # the oldest version that works (``NAME --version``)

    def path(self) -> str | None:
        """Where a working one is on this machine (new enough), or ``None``."""
        if self.name.startswith("/"):
            return self.name if Path(self.name).exists() else None
        found = shutil.which(self.name)
        return found if found and self.version_ok(found) else None

    def version_ok(self, path: str) -> bool:
        """Whether ``path --version`` says at least :attr:`at_least`."""
        if not self.at_least:
            return True
        said = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"(\d+)\.(\d+)", said)
        return bool(found) and tuple(map(int, found.groups())) >= self.at_least


def _programs(package: str, used_by: str, *names: str) -> list[Program]:
    return [Program(name, package, used_by) for name in names]


REQUIRED: tuple[Program, ...] = (
    # The appliance's own services.
    *_programs("nginx-light", "the appliance's web server", "/usr/sbin/nginx"),
    *_programs(
        "libnginx-mod-http-brotli-static",
        "nginx sends the viewer's .br files",
        "/usr/lib/nginx/modules/ngx_http_brotli_static_module.so",
    ),
    *_programs("orthanc", "the archive", "/usr/sbin/Orthanc"),
    *_programs(
        "orthanc-dicomweb",
        "the archive's DICOMweb plugin",
        "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    ),
    *_programs(
        "orthanc-postgresql",
        "Orthanc's index in PostgreSQL ([orthanc] index)",
        "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",
    ),
    *_programs(
        "postgresql-15",
        "throwaway PostgreSQL clusters (bench/pg.py)",
        "/usr/lib/postgresql/15/bin/initdb",
        "/usr/lib/postgresql/15/bin/pg_ctl",
        "/usr/lib/postgresql/15/bin/postgres",
        "/usr/lib/postgresql/15/bin/psql",
    ),
    *_programs("rclone", "off-site backups (tests/backup/test_backup_schedule.py)", "rclone"),
    # Modalities and codecs.
    *_programs(
        "dcmtk",
        "the modality (storescu, echoscu) and reference codecs",
        "/usr/bin/storescu",
        "/usr/bin/echoscu",
        "dcmcjpeg",
        "dcmcjpls",
        "dcmdump",
    ),
    *_programs(
        "openjph-tools",
        "the reference HTJ2K encoder (tests/transcode/test_codec.py)",
        "ojph_compress",
    ),
    # Browser and front end.
    *_programs(
        "chromium", "browser tests (Playwright drives Debian's Chromium)", "/usr/bin/chromium"
    ),
    Program(
        "node",
        "nodejs",
        "the test OpenID provider, Vitest, the viewer's app-config",
        at_least=(20, 19),
    ),  # Debian 12's is 18: setup.sh --test installs 22 then
    *_programs("npm", "the OHIF dist, the front end and the test IdP", "npm"),
    # Queue, network and load.
    *_programs("redis-server", "the Redis queue (tests/jobs/test_redis_queue.py)", "redis-server"),
    *_programs("redis-tools", "the Redis queue's readiness check", "redis-cli"),
    *_programs("iproute2", "test hosts in network namespaces; listening sockets", "ip", "ss"),
    *_programs("curl", "requests from a network namespace", "curl"),
    *_programs("procps", "leftover processes (tests/supervise/test_run.py)", "pgrep"),
    *_programs("util-linux", "the bare-root package test's namespaces", "unshare", "setpriv"),
    # The package and its bare-system test.
    *_programs(
        "debootstrap", "bare bookworm roots (package test, container base image)", "debootstrap"
    ),
    *_programs("dpkg", "packaging/build.py makes the .deb", "dpkg-deb"),
    *_programs("lintian", "packaging/build.sh checks the .deb", "lintian"),
    *_programs("patchelf", "the bundle's library paths", "patchelf"),
    *_programs("binutils", "the bundle's libraries (readelf, strip)", "readelf", "strip"),
    *_programs("systemd", "the package's unit is checked (systemd-analyze)", "systemd-analyze"),
    # The release: signed apt repository and checksums (tests/packaging/test_release.py,
    # tests/packaging/test_apt_repository.py).
    *_programs("apt-utils", "the release's apt repository index", "apt-ftparchive"),
    *_programs("gnupg", "the release's signatures (throw-away keys)", "gpg", "gpgconf"),
    *_programs("gpgv", "the release's signatures checked as apt checks them", "gpgv"),
    *_programs("coreutils", "the release's checksums checked", "sha256sum"),
    *_programs("git", "versions from tags (tests/test_version.py)", "git"),
    # The cloud profile on a real container engine (design.md fact 12).
    *_programs("podman", "the cloud profile (tests/packaging/test_cloud_profile.py)", "podman"),
    *_programs("podman-compose", "compose.yaml brought up", "podman-compose"),
    *_programs("runc", "podman's runtime here (crun refuses this kernel)", "runc"),
    *_programs("conmon", "podman's container monitor", "conmon"),
    *_programs("netavark", "podman's networks", "/usr/lib/podman/netavark"),
    *_programs(
        "aardvark-dns",
        "service names on the profile's internal network",
        "/usr/lib/podman/aardvark-dns",
    ),
    *_programs("iptables", "netavark's firewall rules for every container network", "iptables"),
    # The deploy to a VM (tests/packaging/test_deploy.py): sshd stands in for the VM.
    *_programs("openssh-server", "the VM the deploy goes to", "/usr/sbin/sshd"),
    *_programs("openssh-client", "the deploy reaches the VM", "ssh", "scp", "ssh-keygen"),
)


def missing(programs: tuple[Program, ...] = REQUIRED) -> list[Program]:
    """The programs of ``programs`` this machine lacks."""
    return [program for program in programs if program.path() is None]


def install_hint(absent: list[Program]) -> str:
    """What to tell someone whose machine lacks ``absent``."""
    names = ", ".join(
        program.name + (" >= " + ".".join(map(str, program.at_least)) if program.at_least else "")
        for program in absent
    )
    packages = " ".join(sorted({program.package for program in absent}))
    return (f"the test suite needs programs this machine lacks: {names}. "
            f"Run `bash scripts/setup.sh --test`, or apt-get install {packages}")  # fmt: skip


def main() -> int:
    """Print every required program with its package and where it is; 1 if any is missing."""
    width = max(len(program.name) for program in REQUIRED)
    for program in REQUIRED:
        found = program.path() or "MISSING"
        print(f"{program.name:<{width}}  {program.package:<16}  {found}")
    absent = missing()
    if absent:
        print(install_hint(absent), file=sys.stderr)
    return 1 if absent else 0


if __name__ == "__main__":
    sys.exit(main())
