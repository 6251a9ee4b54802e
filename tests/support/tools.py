"""Programs a test runs: found on this machine or the test fails naming the package."""

from __future__ import annotations

import shutil

import pytest

DCMTK_STORESCU = "/usr/bin/storescu"  # the venv's `storescu` is pynetdicom's, other options


def require_tool(program: str, package: str) -> str:
    """The path of ``program``; fail the test (never skip) naming the Debian package.

    A test that skipped for a missing program would pass unseen in CI; ``bash
    scripts/setup.sh --test`` installs every package the suite needs.
    """
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: apt-get install {package} "
                    "(bash scripts/setup.sh --test installs what the tests need)",
                    pytrace=False)  # fmt: skip
    return path


def storescu_command(port: int, files, aet: str = "STORESCU", *extra: str) -> list[str]:
    """dcmtk's storescu sending ``files`` to AE NEURONOVA on 127.0.0.1:``port``."""
    program = require_tool(DCMTK_STORESCU, "dcmtk")
    return [program, *extra, "-aet", aet, "-aec", "NEURONOVA", "127.0.0.1", str(port),
            *map(str, files)]  # fmt: skip
