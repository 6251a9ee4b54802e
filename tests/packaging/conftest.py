"""Fixtures of the packaging tests: the PyInstaller bundle they wrap, a signing key."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.signing import SigningKey, throwaway_key


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """One PyInstaller bundle of this checkout per run: the package test and the cloud
    profile's image both wrap it (PyInstaller is the longest step of either). With
    pytest-xdist, the first worker that needs it builds it under a lock in the run's
    shared folder, and another worker waits for it and takes it."""
    from bench.packaging import load_build

    shared = _run_folder(tmp_path_factory)
    done = shared / "bundle.done"
    with open(shared / "bundle.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return Path(done.read_text())
        build = load_build()
        try:
            made = build.build_bundle(shared / "bundle")
        except build.BuildError as exc:
            pytest.fail(f"packaging/build.py: {exc}", pytrace=False)
        done.write_text(str(made))
        return made


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this run shares: pytest-xdist gives each worker a folder
    of its own inside it (``popen-gwN``); without xdist, the run's own folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def key() -> Iterator[SigningKey]:
    """A throwaway release signing key (GnuPG), one per module."""
    with throwaway_key() as made:
        yield made
