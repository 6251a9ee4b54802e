#!/usr/bin/env python3
"""Build the NeuroNova bundle, its tarball and its Debian package.

    bash packaging/build.sh [--version V] [--out DIR] [--bundle DIR] [--no-lintian]

1. PyInstaller (``packaging/neuronova.spec``) makes the one-folder bundle
   ``OUT/bundle/neuronova/``: a ``neuronova`` executable at its top, and in ``_internal/``
   Python, the appliance and its dependencies, Debian's nginx and Orthanc (+ DICOMweb
   plugin) with their libraries, DCMTK's dictionaries, the nginx templates, the main app
   and the OHIF viewer. The programs' rpath is set to the bundle's library folder, so
   they use its libraries and nothing of the host but the kernel and glibc. The bundle
   is stamped with this checkout's version (``_internal/VERSION``, from the git tags:
   :mod:`appliance.version`).
2. ``OUT/stamped/neuronova``: the bundle stamped with version V (``--version``, default
   the checkout's), its files hard links; the tarball, the .deb and the container image
   (``packaging/release.py image``) are made from it.
3. ``OUT/neuronova-V-linux-x86_64.tar.gz``: that folder as ``neuronova-V/``.
4. ``OUT/neuronova_V_amd64.deb`` (dpkg-deb, V in Debian's form: ``~dev`` between tags):
   the bundle in ``/opt/neuronova``, the
   ``neuronova`` command, the systemd unit and maintainer scripts of ``packaging/deb/``;
   lintian must report no errors (the tags a self-contained bundle in /opt cannot avoid are
   overridden, with the reason, in ``packaging/deb/lintian-overrides``).

``--bundle DIR`` packages an existing bundle again (another version of the same build)
without running PyInstaller. Prints what it made, with sizes and times.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.version import UNKNOWN, VERSION_FILE, debian_version, from_git  # noqa: E402

PACKAGING = REPO / "packaging"
DEB_FILES = PACKAGING / "deb"
PACKAGE = "neuronova"
MAINTAINER = "NeuroNova Packaging <packaging@neuronova.example.com>"
INSTALL_DIR = Path("opt/neuronova")
# Programs and libraries the spec takes from Debian, by the bundle path they get.
SYSTEM_SOURCES = {
    "bin/nginx": "/usr/sbin/nginx",
    "nginx-modules/ngx_http_brotli_static_module.so": (
        "/usr/lib/nginx/modules/ngx_http_brotli_static_module.so"
    ),
    "bin/Orthanc": "/usr/sbin/Orthanc",
    "orthanc-plugins/libOrthancDicomWeb.so": "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
    "orthanc-plugins/libOrthancPostgreSQLIndex.so": (
        "/usr/lib/orthanc/libOrthancPostgreSQLIndex.so.4.0"
    ),
}
# Programs that need nothing but glibc (Go): no rpath to set, and they stay executable.
SELF_CONTAINED_PROGRAMS = {"bin/rclone": "/usr/bin/rclone"}
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
# Tools the build runs, and the Debian package of each.
TOOLS = {
    "dpkg-deb": "dpkg",
    "patchelf": "patchelf",
    "lintian": "lintian",
    "gzip": "gzip",
    "strip": "binutils",
    "readelf": "binutils",
}


class BuildError(Exception):
    """A step of the build failed; the message says which and what to do."""


@dataclass
class BuildReport:
    """What a build made: paths, sizes (bytes) and the time of each step (seconds)."""

    version: str
    bundle: str = ""
    tarball: str = ""
    deb: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    lintian: list[str] = field(default_factory=list)


def source_version() -> str:
    """This checkout's version from its git tags (:mod:`appliance.version`)."""
    return from_git(REPO) or UNKNOWN


def require_tools(names: list[str]) -> None:
    """Stop with the Debian packages to install when a build tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = " ".join(sorted({TOOLS[name] for name in missing}))
        raise BuildError(
            f"missing {', '.join(missing)}: apt-get install {packages} "
            "(bash scripts/setup.sh --test installs them)"
        )


def run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run one build command; :class:`BuildError` with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{output}")
    return result


def du_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (symlinks not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_bundle(work: Path) -> Path:
    """Run PyInstaller on the spec; the bundle folder ``work/dist/neuronova``."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise BuildError(
            "PyInstaller is not installed: .venv/bin/pip install -e '.[bundle]' "
            "(bash scripts/setup.sh --test installs it)"
        ) from None
    dist, build = work / "dist", work / "pyinstaller"
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean",
               "--log-level", "WARN", "--distpath", str(dist), "--workpath", str(build),
               str(PACKAGING / "neuronova.spec")]  # fmt: skip
    run(command, "PyInstaller", cwd=REPO)
    bundle = dist / PACKAGE
    strip_binaries(bundle)
    patch_rpaths(bundle)
    stamp(bundle, source_version())
    return bundle


def stamp(bundle: Path, version: str) -> None:
    """Write ``version`` into the bundle (``_internal/VERSION``, what
    :func:`appliance.version.current` reads), replacing the file rather than writing
    into it, so that a hard-linked copy's stamp leaves the original's alone."""
    target = bundle / "_internal" / VERSION_FILE
    target.unlink(missing_ok=True)
    target.write_text(version + "\n")
    os.chmod(target, 0o644)


@contextlib.contextmanager
def linking_lock(bundle: Path) -> Iterator[None]:
    """Held while a stamped copy of ``bundle`` is made and archived. Making hard links to
    the bundle's files changes their ctime, which ``tar`` in another build archiving its
    own copy of the same bundle at that moment reports as a file changed while it read
    it (exit 1); two builds from one bundle (the test suite's) therefore take turns."""
    try:
        lock = open(bundle.parent / f".{bundle.name}.lock", "a")  # noqa: SIM115
    except OSError:  # a bundle in a folder we may not write: nobody else links it here
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stamped_copy(bundle: Path, version: str, work: Path) -> Path:
    """``work/neuronova``: ``bundle`` stamped with ``version``; its files are hard links
    (the same build, no copy of its 300 MB) where ``work`` is on the same file system."""
    copy = work / PACKAGE
    shutil.rmtree(copy, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    linked = subprocess.run(["cp", "-al", str(bundle), str(copy)], capture_output=True)
    if linked.returncode != 0:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy, symlinks=True)
    stamp(copy, version)
    return copy


def is_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF file (a program or a shared library)."""
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def load_segments_aligned(path: Path) -> bool:
    """Whether every PT_LOAD of ``path`` has offset and address congruent modulo its
    alignment (the loader refuses the file otherwise)."""
    headers = run(["readelf", "-lW", str(path)], f"readelf {path.name}").stdout
    for line in headers.splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"]:
            offset, address, align = int(fields[1], 16), int(fields[2], 16), int(fields[-1], 16)
            if align > 1 and offset % align != address % align:
                return False
    return True


def strip_binaries(bundle: Path) -> None:
    """Strip symbols from the bundle's libraries and extension modules (lintian's rule, and
    smaller). Libraries that wheels vendor in ``*.libs/`` are left as they are: auditwheel
    rewrote them with patchelf and strip breaks that layout; a file that still comes out
    misaligned is put back unstripped."""
    for path in (bundle / "_internal").rglob("*"):
        if not path.is_file() or path.is_symlink() or path.parent.name.endswith(".libs"):
            continue
        if not is_elf(path):
            continue
        original = path.read_bytes()
        run(["strip", "--strip-unneeded", str(path)], f"strip {path.name}")
        if not load_segments_aligned(path):
            path.write_bytes(original)


def patch_rpaths(bundle: Path) -> None:
    """Make the bundle's programs and libraries find their libraries in the bundle only.

    The programs and plugin taken from Debian get the rpath ``$ORIGIN/..`` (the library
    folder): DT_RPATH (not RUNPATH) of a program also covers the libraries it loads and
    the plugin Orthanc opens, so no LD_LIBRARY_PATH is needed. Search paths of the build
    machine (e.g. the Python build's own lib folder) are removed from every other file;
    ``$ORIGIN``-relative ones, as wheels ship them, stay. Libraries lose the execute bit
    they never needed.
    """
    internal = bundle / "_internal"
    for relative in SYSTEM_SOURCES:
        run(["patchelf", "--force-rpath", "--set-rpath", "$ORIGIN/..", str(internal / relative)],
            f"patchelf {relative}")  # fmt: skip
        if relative.endswith(".so"):
            os.chmod(internal / relative, 0o644)
    programs = {internal / relative for relative in [*SYSTEM_SOURCES, *SELF_CONTAINED_PROGRAMS]}
    for path in internal.rglob("*"):
        if path in programs or not path.is_file() or path.is_symlink() or not is_elf(path):
            continue
        rpath = run(["patchelf", "--print-rpath", str(path)], f"patchelf {path.name}").stdout
        entries = [e for e in rpath.strip().split(":") if e]
        kept = [e for e in entries if e.startswith("$ORIGIN")]
        if kept != entries:
            command = ["--set-rpath", ":".join(kept)] if kept else ["--remove-rpath"]
            run(["patchelf", *command, str(path)], f"patchelf {path.name}")
        os.chmod(path, 0o644)


def tar_succeeded(status: int, said: str) -> bool:
    """Whether ``tar -c`` wrote every file whole. Status 1 with only "file changed as we
    read it" means a file's ctime moved while tar read it: the bundle's files are never
    rewritten, but a hard link made to them elsewhere (another build's stamped copy, the
    test suite's parallel workers) moves it; their content is what tar read."""
    lines = [line for line in said.splitlines() if line.strip()]
    return status == 0 or (
        status == 1 and bool(lines) and all(line.endswith("file changed as we read it")
                                            for line in lines)
    )  # fmt: skip


def write_tarball(bundle: Path, version: str, out: Path) -> Path:
    """``out/neuronova-VERSION-linux-x86_64.tar.gz``: the bundle as ``neuronova-VERSION/``."""
    name = f"{PACKAGE}-{version}"
    tarball = out / f"{name}-linux-x86_64.tar.gz"
    transform = f"s,^{PACKAGE},{name},"
    with open(tarball, "wb") as sink, tempfile.TemporaryFile() as errors:
        tar = subprocess.Popen(
            ["tar", "-C", str(bundle.parent), "--owner=0", "--group=0",
             f"--transform={transform}", "-cf", "-", bundle.name],
            stdout=subprocess.PIPE, stderr=errors,
        )  # fmt: skip
        assert tar.stdout is not None
        gz = subprocess.run(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=sink)
        tar.stdout.close()
        tar.wait()
        errors.seek(0)
        said = errors.read().decode(errors="replace")
        if not tar_succeeded(tar.returncode, said) or gz.returncode != 0:
            codes = f"tar {tar.returncode}, gzip {gz.returncode}"
            raise BuildError(f"writing {tarball.name} failed ({codes}): {said.strip()}")
    return tarball


def _control(version: str, installed_kib: int) -> str:
    return f"""\
Package: {PACKAGE}
Version: {version}
Architecture: amd64
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Depends: libc6 (>= 2.36), passwd
Section: science
Priority: optional
Description: on-premises medical imaging appliance (DICOM archive and viewer)
 NeuroNova receives images from modalities (DICOM C-STORE), stores them as
 lossless HTJ2K in an Orthanc archive, and serves a worklist and the OHIF viewer
 through nginx, behind logins, roles and an audit trail.
 .
 Self-contained: Python, nginx and Orthanc come in /opt/neuronova. The service
 runs as the neuronova user and keeps its data in /var/lib/neuronova.
"""


def _changelog(version: str) -> bytes:
    text = f"""\
{PACKAGE} ({version}) stable; urgency=medium

  * NeuroNova {version}.

 -- {MAINTAINER}  {formatdate(usegmt=True).replace("GMT", "+0000")}
"""
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _install(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, mode)


def debian_packages(bundle: Path) -> set[str]:
    """The Debian packages the bundle took programs and libraries from (``dpkg -S``)."""
    internal = bundle / "_internal"
    sources = [*SYSTEM_SOURCES.values(), *SELF_CONTAINED_PROGRAMS.values()]
    for lib in internal.glob("lib*.so*"):
        sources += [f"{d}/{lib.name}" for d in LIB_DIRS if os.path.exists(f"{d}/{lib.name}")]
    result = subprocess.run(["dpkg", "-S", *sources], capture_output=True, text=True)
    return {line.split(":", 1)[0].split(",")[0] for line in result.stdout.splitlines()}


def third_party_copyrights(bundle: Path, doc: Path) -> None:
    """Copy the Debian copyright file of every package the bundle took files from."""
    for package in sorted(debian_packages(bundle)):
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        if copyright_file.exists():
            _install(copyright_file, doc / "third-party" / package, 0o644)


def stage_deb(bundle: Path, version: str, root: Path) -> None:
    """Lay out the package's files and control area under ``root``."""
    shutil.copytree(bundle, root / INSTALL_DIR, symlinks=True)
    _install(DEB_FILES / "neuronova.sh", root / "usr/bin/neuronova", 0o755)
    _install(DEB_FILES / "neuronova.service", root / "lib/systemd/system/neuronova.service", 0o644)
    doc = root / "usr/share/doc" / PACKAGE
    _install(DEB_FILES / "copyright", doc / "copyright", 0o644)
    _install(REPO / "README.md", doc / "README.md", 0o644)
    (doc / "changelog.gz").write_bytes(_changelog(version))
    third_party_copyrights(bundle, doc)
    _install(DEB_FILES / "lintian-overrides", root / "usr/share/lintian/overrides" / PACKAGE, 0o644)
    control = root / "DEBIAN"
    control.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        _install(DEB_FILES / script, control / script, 0o755)
    sums = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and control not in path.parents:
            digest = hashlib.md5(path.read_bytes()).hexdigest()  # dpkg's md5sums format
            sums.append(f"{digest}  {path.relative_to(root)}\n")
    (control / "md5sums").write_text("".join(sums))
    installed_kib = (du_bytes(root) - du_bytes(control)) // 1024 + 1
    (control / "control").write_text(_control(version, installed_kib))


def build_deb(bundle: Path, version: str, out: Path) -> Path:
    """``out/neuronova_VERSION_amd64.deb`` from the bundle and ``packaging/deb/``;
    ``version`` is the Debian form (:func:`appliance.version.debian_version`)."""
    deb = out / f"{PACKAGE}_{version}_amd64.deb"
    with tempfile.TemporaryDirectory(prefix="neuronova-deb-", dir=out) as staging:
        root = Path(staging) / "root"
        root.mkdir()
        stage_deb(bundle, version, root)
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(root), str(deb)],
            "dpkg-deb --build")  # fmt: skip
    return deb


def lintian_errors(deb: Path) -> list[str]:
    """lintian's error lines for ``deb`` (overridden tags are not errors)."""
    result = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)],
                            capture_output=True, text=True)  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("E:")]


def build(version: str, out: Path, bundle: Path | None = None, lint: bool = True) -> BuildReport:
    """Every step; ``bundle`` reuses an existing bundle instead of running PyInstaller.
    The tarball and the .deb hold a copy of the bundle stamped with ``version``
    (``out/stamped/neuronova``, the report's ``bundle``: the image is built from it too)."""
    require_tools([tool for tool in TOOLS if lint or tool != "lintian"])
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport(version)
    started = time.monotonic()
    if bundle is None:
        bundle = build_bundle(out / "bundle")
        report.seconds["bundle"] = time.monotonic() - started
    with linking_lock(bundle):
        bundle = stamped_copy(bundle, version, out / "stamped")
        report.bundle, report.sizes["bundle"] = str(bundle), du_bytes(bundle)
        step = time.monotonic()
        tarball = write_tarball(bundle, version, out)
        report.seconds["tarball"] = time.monotonic() - step
        report.tarball, report.sizes["tarball"] = str(tarball), tarball.stat().st_size
        step = time.monotonic()
        deb = build_deb(bundle, debian_version(version), out)
        report.seconds["deb"] = time.monotonic() - step
    report.deb, report.sizes["deb"] = str(deb), deb.stat().st_size
    report.seconds["build"] = time.monotonic() - started
    if lint:
        step = time.monotonic()
        report.lintian = lintian_errors(deb)
        report.seconds["lintian"] = time.monotonic() - step
        if report.lintian:
            raise BuildError("lintian reports errors:\n" + "\n".join(report.lintian))
    return report


def _summary(report: BuildReport) -> str:
    mb = {name: f"{size / 1e6:.1f} MB" for name, size in report.sizes.items()}
    times = ", ".join(f"{name} {s:.1f} s" for name, s in report.seconds.items())
    return (f"bundle   {report.bundle} ({mb['bundle']})\n"
            f"tarball  {report.tarball} ({mb['tarball']})\n"
            f"deb      {report.deb} ({mb['deb']})\n"
            f"times    {times}\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: build, print the summary (``--json`` prints the report instead)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        default=None,
        help="version to stamp (default: this checkout's, from its git tags)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder")
    parser.add_argument("--bundle", type=Path, default=None, help="package this bundle again")
    parser.add_argument("--no-lintian", dest="lint", action="store_false", help="skip lintian")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = build(args.version or source_version(), args.out.resolve(), args.bundle, args.lint)
    except BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2) if args.json else _summary(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
