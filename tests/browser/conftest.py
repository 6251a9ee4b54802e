"""Fixtures of the browser tests (Chromium itself is in tests/conftest.py: sign-on uses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.browsing import ARTIFACTS


@pytest.fixture(scope="module", autouse=True)
def artifacts() -> Path:
    """The folder for screenshots and facts, made once per module."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
