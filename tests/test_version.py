"""The version: from git tags in a checkout (real git repositories made here), the forms
the .deb and the image take, and what ``neuronova version`` says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.cli import cli
from appliance.version import (
    current,
    debian_version,
    from_describe,
    from_git,
    image_tag,
    is_release,
)
from tests.support.paths import REPO


@pytest.mark.parametrize(
    ("described", "version"),
    [
        ("v1.2.3-0-gabc1234", "1.2.3"),
        ("v1.2.3-5-gabc1234", "1.2.4.dev5+gabc1234"),
        ("v0.9.10-12-g0123456789", "0.9.11.dev12+g0123456789"),
        ("v1.2.3-0-gabc1234-dirty", "1.2.4.dev0+gabc1234.dirty"),
        ("v1.2.3-2-gabc1234-dirty", "1.2.4.dev2+gabc1234.dirty"),
    ],
)
def test_describe_gives_the_release_or_the_next_development_version(described, version):
    assert from_describe(described) == version


@pytest.mark.parametrize("described", ["1.2.3-0-gabc", "vnext-1-gabc", "v1.2-0-gabc", ""])
def test_a_tag_that_is_not_vxyz_is_refused(described):
    with pytest.raises(ValueError, match=r"vX\.Y\.Z"):
        from_describe(described)


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin", "HOME": str(repo)}  # fmt: skip
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    return done.stdout.strip()


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "--short=9", "HEAD")


def test_a_checkout_between_and_on_tags(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    first = commit(repo, "a")
    assert from_git(repo) == f"0.0.0.dev1+g{first}"  # no tag yet: it still works
    git(repo, "tag", "v0.1.0")
    assert from_git(repo) == "0.1.0"
    git(repo, "tag", "not-a-release")  # other tags are not versions
    second = commit(repo, "b")
    assert from_git(repo).startswith(f"0.1.1.dev1+g{second[:7]}")
    (repo / "b").write_text("changed")
    assert from_git(repo).endswith(".dirty")
    git(repo, "commit", "-q", "-am", "c")
    git(repo, "tag", "-a", "v0.2.0", "-m", "0.2.0")  # annotated, as a release workflow tags
    assert from_git(repo) == "0.2.0" and is_release("0.2.0")
    assert from_git(tmp_path) is None  # not a checkout


def dpkg_compare(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


def test_debian_versions_sort_as_the_releases_do():
    """A development build sorts after the release it follows and before the next one, so
    apt upgrades a clinic from either to the next release."""
    older, dev, newer = "0.1.0", "0.1.1.dev5+gabc1234", "0.1.1"
    assert debian_version(older) == older and debian_version(newer) == newer
    assert debian_version(dev) == "0.1.1~dev5+gabc1234"
    assert dpkg_compare(older, "lt", debian_version(dev))
    assert dpkg_compare(debian_version(dev), "lt", newer)
    assert dpkg_compare("0.1.10", "gt", "0.1.9")


def test_the_image_tag_is_the_version_in_the_characters_a_tag_allows():
    assert image_tag("0.2.0") == "0.2.0"
    assert image_tag("0.2.1.dev3+gabc.dirty") == "0.2.1.dev3-gabc.dirty"


def test_neuronova_version_and_dash_dash_version_say_the_checkout_s_version(runner):
    repo = REPO
    assert current() == from_git(repo)
    assert runner.invoke(cli, ["version"]).output == f"neuronova {current()}\n"
    assert runner.invoke(cli, ["--version"]).output == f"neuronova {current()}\n"
