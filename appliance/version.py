"""The version of this NeuroNova, one per release, from the git tag ``vX.Y.Z``.

A build (``packaging/build.py``) asks git once and stamps the answer into the bundle's
``VERSION`` file; the bundle, its tarball, the .deb and the container image all carry
it. A checkout asks git itself. Between tags the version is the next patch release's
development version, ``X.Y.(Z+1).devN+gHASH`` (N commits after the tag), so that it sorts
after ``X.Y.Z`` and before the next release; a checkout without any tag counts from
``0.0.0``. The Debian and image forms of the same version are derived here, so that every
artifact names it the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

VERSION_FILE = "VERSION"  # in the bundle's _internal/ folder (sys._MEIPASS)
UNKNOWN = "0.0.0+unknown"  # neither a stamped bundle nor a git checkout
TAG_PATTERN = "v[0-9]*.[0-9]*.[0-9]*"
_DESCRIBE = re.compile(
    r"^v(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)-(?P<ahead>\d+)-g(?P<hash>[0-9a-f]+)"
    r"(?P<dirty>-dirty)?$"
)
_RELEASE = re.compile(r"^\d+\.\d+\.\d+$")


@cache
def current() -> str:
    """This program's version: the bundle's stamp, else git's answer, else ``0.0.0+unknown``."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:
        stamp = Path(bundle) / VERSION_FILE
        return stamp.read_text().strip() if stamp.exists() else UNKNOWN
    return from_git(Path(__file__).resolve().parent.parent) or UNKNOWN


def from_git(repo: Path) -> str | None:
    """The version of the checkout at ``repo`` (see the module's docstring), or ``None``
    when it is not a git checkout (or git is missing)."""
    if not (repo / ".git").exists():
        return None
    described = _git(repo, "describe", "--tags", "--long", "--dirty", f"--match={TAG_PATTERN}")
    if described is not None:
        return from_describe(described)
    count = _git(repo, "rev-list", "--count", "HEAD")
    short = _git(repo, "rev-parse", "--short=9", "HEAD")
    if count is None or short is None:
        return None
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return f"0.0.0.dev{count}+g{short}" + (".dirty" if dirty else "")


def from_describe(described: str) -> str:
    """The version ``git describe --tags --long --dirty`` means: ``v1.2.3-0-gabc`` is
    ``1.2.3``; ``v1.2.3-5-gabc`` is ``1.2.4.dev5+gabc``; ``-dirty`` adds ``.dirty`` to the
    local part (and makes even a tagged commit a development version)."""
    match = _DESCRIBE.match(described.strip())
    if match is None:
        raise ValueError(f"not a `git describe --long` of a vX.Y.Z tag: {described!r}")
    major, minor, patch = (int(match[k]) for k in ("major", "minor", "patch"))
    ahead, dirty = int(match["ahead"]), bool(match["dirty"])
    if ahead == 0 and not dirty:
        return f"{major}.{minor}.{patch}"
    local = f"g{match['hash']}" + (".dirty" if dirty else "")
    return f"{major}.{minor}.{patch + 1}.dev{ahead}+{local}"


def is_release(version: str) -> bool:
    """Whether ``version`` is a release (``X.Y.Z``), not a development build."""
    return bool(_RELEASE.match(version))


def debian_version(version: str) -> str:
    """The .deb's version: ``1.2.4.dev5+gabc`` becomes ``1.2.4~dev5+gabc``, which dpkg sorts
    after 1.2.3 and before 1.2.4 (a release is unchanged)."""
    return version.replace(".dev", "~dev", 1)


def image_tag(version: str) -> str:
    """The container image's tag: the version, with ``+`` (not allowed in a tag) as ``-``."""
    return version.replace("+", "-")


def _git(repo: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
