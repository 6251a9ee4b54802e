"""Finding the system programs the appliance runs: the bundle first, then PATH and
Debian's places. nginx and Orthanc (:mod:`appliance.supervise.binaries`) and rclone
(:mod:`appliance.backup.offsite`) are found this way."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import MissingBinaryError

SEARCH_ENV = "NEURONOVA_BINARY_PATH"
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
# Debian's Orthanc plugins (links to /usr/lib/orthanc/*.so.VERSION), and the bundle's copy.
ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
BUNDLE_ORTHANC_PLUGINS = "orthanc-plugins"


@dataclass(frozen=True)
class Program:
    """A bundled system program and the Debian package that provides it."""

    name: str
    debian_package: str


def bundle_dir() -> Path | None:
    """The folder of a PyInstaller bundle, or ``None`` when running from Python."""
    base = getattr(sys, "_MEIPASS", None)
    return Path(base) if base else None


def _search_dirs() -> list[str]:
    dirs: list[str] = []
    if (bundle := bundle_dir()) is not None:
        dirs.append(str(bundle / "bin"))
    override = os.environ.get(SEARCH_ENV)
    if override is not None:
        return dirs + override.split(os.pathsep)
    return dirs + os.environ.get("PATH", "").split(os.pathsep) + list(SYSTEM_DIRS)


def find_program(program: Program) -> Path:
    """The path of ``program``; :class:`MissingBinaryError` naming the package otherwise."""
    found = shutil.which(program.name, path=os.pathsep.join(_search_dirs()))
    if found is None:
        raise MissingBinaryError(
            f"{program.name} was not found "
            f"(looked in the bundle, PATH and {', '.join(SYSTEM_DIRS)}). "
            f"Install it with `sudo apt-get install {program.debian_package}`, "
            f"or point {SEARCH_ENV} at the folder that holds it."
        )
    return Path(found)


def find_orthanc_plugin(name: str, debian_package: str) -> Path:
    """The Orthanc plugin ``name`` (a ``.so``), from the bundle or Debian's plugin folders;
    :class:`MissingBinaryError` naming ``debian_package`` otherwise."""
    dirs = [bundle / BUNDLE_ORTHANC_PLUGINS for bundle in filter(None, [bundle_dir()])]
    for folder in [*dirs, *map(Path, ORTHANC_PLUGIN_DIRS)]:
        candidate = folder / name
        if candidate.exists():
            return candidate
    raise MissingBinaryError(
        f"Orthanc's plugin {name} was not found in {', '.join(ORTHANC_PLUGIN_DIRS)}. "
        f"Install it with `sudo apt-get install {debian_package}`."
    )
