"""Fixtures of the security tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.db import open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator:
    """The app's database, fresh (no home around it); closed at teardown."""
    database = open_database(tmp_path / "app.db")
    yield database
    database.close()
