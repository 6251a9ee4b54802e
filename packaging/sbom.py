"""A CycloneDX 1.5 SBOM (JSON) of the bundle: what ships in it and from where.

- Python: the distributions the appliance needs at run time (``pyproject.toml``'s
  dependencies and the ``bundle`` extra but PyInstaller), with every requirement they pull
  in, as installed in the environment that built the bundle (PyInstaller collects from it).
- npm: the main app's run-time packages (``frontend/package-lock.json``, not the
  development ones: they build it and do not ship) and the OHIF viewer's package
  (``@ohif/app``, pinned and integrity-checked by ``packaging/fetch_ohif.py``; its own
  dependencies are compiled into its dist).
- Debian: the package of every program and library the bundle took from the system
  (nginx, Orthanc and its DICOMweb plugin, rclone, and their libraries), by ``dpkg -S``.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import subprocess
import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {"pyinstaller"}  # builds the bundle, is not in it


def python_components() -> list[dict[str, Any]]:
    """The run-time Python distributions, with their requirements' closure."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["bundle"]]
    seen: dict[str, importlib.metadata.Distribution] = {}
    queue = [Requirement(spec) for spec in wanted]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or name in NOT_SHIPPED:
            continue
        dist = importlib.metadata.distribution(requirement.name)
        seen[name] = dist
        extras = requirement.extras or {""}
        for spec in dist.requires or []:
            child = Requirement(spec)
            if child.marker is None or any(
                child.marker.evaluate({**default_environment(), "extra": extra}) for extra in extras
            ):
                queue.append(child)
    return [
        _component(
            "library",
            dist.metadata["Name"],
            dist.version,
            f"pkg:pypi/{name}@{dist.version}",
            dist.metadata.get("License-Expression") or dist.metadata.get("License"),
        )
        for name, dist in sorted(seen.items())
    ]


def npm_components(lock_file: Path, ohif: tuple[str, str]) -> list[dict[str, Any]]:
    """The main app's run-time npm packages and the OHIF viewer's package."""
    packages = json.loads(lock_file.read_text())["packages"]
    found = []
    for path, entry in sorted(packages.items()):
        if not path or entry.get("dev") or "version" not in entry:
            continue
        name = entry.get("name") or path.rsplit("node_modules/", 1)[-1]
        found.append(
            _component(
                "library",
                name,
                entry["version"],
                _npm_purl(name, entry["version"]),
                entry.get("license"),
                hashes=_sri(entry.get("integrity")),
            )
        )
    name, version = ohif
    found.append(_component("application", name, version, _npm_purl(name, version), "MIT"))
    return found


def debian_components(packages: set[str]) -> list[dict[str, Any]]:
    """The Debian packages the bundle's programs and libraries come from, with versions."""
    if not packages:
        return []
    shown = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Version} ${Architecture}\\n", *sorted(packages)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = []
    for line in shown.stdout.splitlines():
        name, version, arch = line.split()
        purl = f"pkg:deb/debian/{name}@{quote(version, safe='')}?arch={arch}&distro=debian-12"
        found.append(_component("library", name, version, purl, None))
    return found


def make_sbom(version: str, debian_packages: set[str], ohif: tuple[str, str]) -> dict[str, Any]:
    """The SBOM of NeuroNova ``version``'s bundle."""
    components = [
        *python_components(),
        *npm_components(REPO / "frontend" / "package-lock.json", ohif),
        *debian_components(debian_packages),
    ]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "tools": {
                "components": [{"type": "application", "name": "neuronova packaging/sbom.py"}]
            },
            "component": _component(
                "application",
                "neuronova",
                version,
                f"pkg:generic/neuronova@{quote(version, safe='')}",
                None,
            ),
        },
        "components": components,
    }


def _component(
    kind: str,
    name: str,
    version: str,
    purl: str,
    license_text: str | None,
    hashes: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": kind,
        "bom-ref": purl,
        "name": name,
        "version": version,
        "purl": purl,
    }
    if license_text and len(license_text) < 100:
        component["licenses"] = [{"license": {"name": license_text.strip()}}]
    if hashes:
        component["hashes"] = hashes
    return component


def _npm_purl(name: str, version: str) -> str:
    if name.startswith("@"):
        scope, bare = name.split("/", 1)
        return f"pkg:npm/{quote(scope)}/{bare}@{version}"
    return f"pkg:npm/{name}@{version}"


def _sri(integrity: str | None) -> list[dict[str, str]]:
    """npm's ``sha512-BASE64`` integrity as a CycloneDX hash (hex)."""
    match = re.match(r"^sha512-([A-Za-z0-9+/=]+)$", integrity or "")
    if match is None:
        return []
    return [{"alg": "SHA-512", "content": base64.b64decode(match[1]).hex()}]
