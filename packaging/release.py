#!/usr/bin/env python3
"""The release's steps, one subcommand each; ``.github/workflows/release.yml`` only strings
them together, and ``tests/packaging/test_release.py`` runs them here.

    .venv/bin/python packaging/release.py version [--tag REF]
    .venv/bin/python packaging/release.py artifacts --out DIR [--bundle DIR]
    .venv/bin/python packaging/release.py sbom --bundle DIR --out FILE
    .venv/bin/python packaging/release.py image --bundle DIR [--repository R] [--push DEST]
    .venv/bin/python packaging/release.py import-key          (key in NEURONOVA_GPG_PRIVATE_KEY)
    .venv/bin/python packaging/release.py apt-repo --repo DIR --key ID DEB...
    .venv/bin/python packaging/release.py checksums --key ID DIR
    .venv/bin/python packaging/release.py notes --version V     (its CHANGELOG.md section)

GPG runs with the environment's ``GNUPGHOME``; a key with a passphrase takes it from
``NEURONOVA_GPG_PASSPHRASE``. ``image --push`` logs in to the registry first when
``NEURONOVA_REGISTRY_PASSWORD`` (and ``NEURONOVA_REGISTRY_USER``) are set.

The apt repository is a flat one (``deb [signed-by=KEYRING] URL ./``): ``InRelease``
(clear-signed), ``Release`` + ``Release.gpg``, ``Packages(.gz)``, the .deb files and the
public key a clinic installs (``neuronova-archive-keyring.gpg``). Flat, it can be served
from any static place, a release's own download folder included.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
sys.path.insert(0, str(PACKAGING))
sys.path.insert(0, str(REPO))

import build as nn_build  # noqa: E402  (packaging/build.py)
import sbom as nn_sbom  # noqa: E402  (packaging/sbom.py)
from fetch_ohif import OHIF_PACKAGE, OHIF_VERSION  # noqa: E402

from appliance.version import debian_version, image_tag, is_release  # noqa: E402

KEYRING_NAME = "neuronova-archive-keyring.gpg"
ORIGIN = "NeuroNova"
SUITE = "stable"
KEY_ENV = "NEURONOVA_GPG_PRIVATE_KEY"
PASSPHRASE_ENV = "NEURONOVA_GPG_PASSPHRASE"
REGISTRY_USER_ENV, REGISTRY_PASSWORD_ENV = "NEURONOVA_REGISTRY_USER", "NEURONOVA_REGISTRY_PASSWORD"
CHANGELOG = REPO / "CHANGELOG.md"
IMAGE_NAME = "neuronova"


class ReleaseError(click.ClickException):
    """A release step failed; the message says which and what to do."""


def run(command: list[str], what: str, stdin: bytes | None = None, **kwargs) -> bytes:
    """Run one step's command; :class:`ReleaseError` with its output when it fails."""
    result = subprocess.run(command, input=stdin, capture_output=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
        raise ReleaseError(f"{what} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def gpg(*args: str, what: str, stdin: bytes | None = None) -> bytes:
    """gpg in batch mode (the environment's GNUPGHOME), with the key's passphrase if set."""
    command = ["gpg", "--batch", "--yes", "--no-tty"]
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is not None and stdin is None:
        command += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
        stdin = passphrase.encode()
    return run([*command, *args], what, stdin=stdin)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """NeuroNova's release steps (the release workflow calls them in order)."""


@cli.command()
@click.option("--tag", default=None, help="The tag being released (refs/tags/vX.Y.Z or vX.Y.Z): "
              "fail unless the checkout's version is exactly it.")  # fmt: skip
def version(tag: str | None) -> None:
    """Print version=, deb_version= and image_tag= lines (for $GITHUB_OUTPUT)."""
    found = nn_build.source_version()
    if tag is not None:
        wanted = tag.removeprefix("refs/tags/").removeprefix("v")
        if found != wanted or not is_release(found):
            raise ReleaseError(f"the checkout's version is {found}, not the release {wanted}: "
                               "tag the commit being released as vX.Y.Z (git tag -a vX.Y.Z) "
                               "and build that commit, with its tags (fetch-depth: 0)")  # fmt: skip
    click.echo(f"version={found}\ndeb_version={debian_version(found)}\n"
               f"image_tag={image_tag(found)}")  # fmt: skip


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="A PyInstaller bundle of this checkout to package (default: build one).",
)
@click.option("--version", "version_", default=None, help="Default: the checkout's version.")
def artifacts(out: Path, bundle: Path | None, version_: str | None) -> None:
    """Build the stamped bundle, the tarball and the lintian-clean .deb into OUT."""
    try:
        report = nn_build.build(version_ or nn_build.source_version(), out.resolve(), bundle)
    except nn_build.BuildError as exc:
        raise ReleaseError(str(exc)) from None
    (out / "build-report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    click.echo(f"bundle={report.bundle}\ntarball={report.tarball}\ndeb={report.deb}")


@cli.command("sbom")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The stamped bundle (artifacts' out/stamped/neuronova).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The SBOM file.")
def sbom_command(bundle: Path, out: Path) -> None:
    """Write the CycloneDX SBOM of the bundle: Python, npm and Debian components."""
    stamp = bundle / "_internal" / "VERSION"
    if not stamp.exists():
        raise ReleaseError(f"{bundle} has no version stamp: give the bundle `artifacts` made")
    version_ = stamp.read_text().strip()
    document = nn_sbom.make_sbom(version_, nn_build.debian_packages(bundle),
                                 (OHIF_PACKAGE, OHIF_VERSION))  # fmt: skip
    out.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(f"sbom={out} ({len(document['components'])} components)")


@cli.command()
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The stamped bundle (artifacts' out/stamped/neuronova).",
)
@click.option("--engine", default="podman", show_default=True, help="podman or docker.")
@click.option("--base", default=None, help="The Dockerfile's BASE image (default: its own).")
@click.option(
    "--repository",
    default=IMAGE_NAME,
    show_default=True,
    help="The image's name, e.g. ghcr.io/OWNER/neuronova (what packaging/deploy.py --image "
    "names); its tag is the version's (appliance.version.image_tag).",
)
@click.option(
    "--push",
    "push_to",
    default=None,
    help="Push to this reference, e.g. docker://ghcr.io/OWNER/neuronova:TAG.",
)
@click.option(
    "--archive",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save the image to this file (for machines that reach no registry).",
)
def image(bundle: Path, engine: str, base: str | None, repository: str, push_to: str | None,
          archive: Path | None) -> None:  # fmt: skip
    """Build the container image from the same bundle, tagged REPOSITORY:VERSION; the
    archive holds it under that name (what a deploy loads, then looks for)."""
    version_ = (bundle / "_internal" / "VERSION").read_text().strip()
    tag = f"{repository}:{image_tag(version_)}"
    args = ["--build-arg", f"BASE={base}"] if base else []
    label = f"org.opencontainers.image.version={version_}"
    run([engine, "build", "-q", "-f", str(PACKAGING / "Dockerfile"), *args,
         "--build-arg", f"BUNDLE={bundle.name}", "--label", label, "-t", tag,
         str(bundle.parent)], f"{engine} build", timeout=1200)  # fmt: skip
    if push_to:
        login(engine, push_to)
        run([engine, "push", tag, push_to], f"{engine} push {push_to}", timeout=1200)
    if archive:
        archive.unlink(missing_ok=True)
        run([engine, "save", "-o", str(archive), tag], f"{engine} save", timeout=1200)
    click.echo(f"image={tag}")


def login(engine: str, destination: str) -> None:
    """Log in to the registry of a ``docker://HOST/...`` destination when a password is set."""
    password = os.environ.get(REGISTRY_PASSWORD_ENV)
    if not password or not destination.startswith("docker://"):
        return
    host = destination.removeprefix("docker://").split("/", 1)[0]
    user = os.environ.get(REGISTRY_USER_ENV, "")
    run([engine, "login", "--username", user, "--password-stdin", host], f"{engine} login {host}",
        stdin=password.encode())  # fmt: skip


@cli.command("import-key")
def import_key() -> None:
    """Import the signing key from NEURONOVA_GPG_PRIVATE_KEY (armored); print key=FPR."""
    secret = os.environ.get(KEY_ENV, "")
    if "PRIVATE KEY BLOCK" not in secret:
        raise ReleaseError(f"{KEY_ENV} holds no armored private key: set the repository "
                           "secret (gpg --armor --export-secret-keys KEYID)")  # fmt: skip
    output = run(["gpg", "--batch", "--import-options", "import-show", "--with-colons",
                  "--import"], "gpg --import", stdin=secret.encode())  # fmt: skip
    fingerprints = [line.split(":")[9] for line in output.decode().splitlines()
                    if line.startswith("fpr:")]  # fmt: skip
    if not fingerprints:
        raise ReleaseError(f"{KEY_ENV}: gpg imported no key")
    click.echo(f"key={fingerprints[0]}")


@cli.command("apt-repo")
@click.option(
    "--repo",
    type=click.Path(path_type=Path),
    required=True,
    help="The repository folder (made if missing; .debs already in it stay).",
)
@click.option("--key", required=True, help="The signing key's fingerprint or id.")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, exists=True, dir_okay=False))
def apt_repo(repo: Path, key: str, files: tuple[Path, ...]) -> None:
    """Put FILES in the flat apt repository REPO, index its .debs and sign the index.

    Files other than .debs (the tarball, the SBOM, the image archive) are published beside
    the packages, unindexed: a release's download folder is then its repository.
    """
    repo.mkdir(parents=True, exist_ok=True)
    for path in files:
        partial = repo / f".{path.name}.partial"
        shutil.copyfile(path, partial)
        os.replace(partial, repo / path.name)
    write_index(repo)
    sign_index(repo, key)
    click.echo(f"repo={repo} ({len(list(repo.glob('*.deb')))} packages, signed by {key})")


def write_index(repo: Path) -> None:
    """``Packages``, ``Packages.gz`` and ``Release`` of the flat repository (apt-ftparchive)."""
    packages = run(["apt-ftparchive", "packages", "."], "apt-ftparchive packages", cwd=repo)
    replace(repo / "Packages", packages)
    replace(repo / "Packages.gz", gzip.compress(packages, 9, mtime=0))
    fields = {"Origin": ORIGIN, "Label": ORIGIN, "Suite": SUITE, "Codename": SUITE,
              "Architectures": "amd64", "Description": "NeuroNova appliance releases"}  # fmt: skip
    options = [
        arg for k, v in fields.items() for arg in ("-o", f"APT::FTPArchive::Release::{k}={v}")
    ]
    release = run(["apt-ftparchive", *options, "release", "."], "apt-ftparchive release", cwd=repo)
    replace(repo / "Release", release)


def sign_index(repo: Path, key: str) -> None:
    """``InRelease`` and ``Release.gpg``, and the public key a clinic installs."""
    release = str(repo / "Release")
    signed = gpg("--local-user", key, "--clearsign", "-o", "-", release, what="signing InRelease")
    replace(repo / "InRelease", signed)
    detached = gpg("--local-user", key, "--armor", "--detach-sign", "-o", "-", release,
                   what="signing Release.gpg")  # fmt: skip
    replace(repo / "Release.gpg", detached)
    replace(repo / KEYRING_NAME, gpg("--export", key, what="exporting the public key"))


def replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` by renaming a new file over it: a client reading the served
    folder meanwhile sees the old file or the new one, and a hard link to the old file (a
    copy of the repository) keeps the old content."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


@cli.command()
@click.option("--key", required=True, help="The signing key's fingerprint or id.")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
def checksums(key: str, folder: Path) -> None:
    """Write FOLDER/SHA256SUMS of its files and its signature SHA256SUMS.asc."""
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith("SHA256SUMS"))  # fmt: skip
    lines = [f"{sha256(folder / name)}  {name}\n" for name in names]
    (folder / "SHA256SUMS").write_text("".join(lines))
    gpg("--local-user", key, "--armor", "--detach-sign", "-o", str(folder / "SHA256SUMS.asc"),
        str(folder / "SHA256SUMS"), what="signing SHA256SUMS")  # fmt: skip
    click.echo(f"checksums={folder / 'SHA256SUMS'} ({len(names)} files, signed by {key})")


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@cli.command()
@click.option("--version", "version_", required=True, help="The release, X.Y.Z.")
def notes(version_: str) -> None:
    """Print the CHANGELOG.md section of a release (the release's notes)."""
    click.echo(changelog_section(CHANGELOG.read_text(), version_), nl=False)


def changelog_section(text: str, version_: str) -> str:
    """The body of the ``## VERSION`` section (up to the next ``## ``); a
    :class:`ReleaseError` saying what to write when there is none."""
    lines = text.splitlines(keepends=True)
    heading = f"## {version_}"
    starts = [i for i, line in enumerate(lines)
              if line.rstrip() == heading or line.startswith(heading + " ")]  # fmt: skip
    if not starts:
        raise ReleaseError(
            f"CHANGELOG.md has no section for {version_}: rename its '## Unreleased' "
            f"heading to '{heading} (DATE)' before tagging"
        )
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("## "):
            break
        body.append(line)
    return "".join(body).strip() + "\n"


if __name__ == "__main__":
    cli()
