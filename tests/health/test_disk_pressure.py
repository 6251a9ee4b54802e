"""Disk-pressure warnings: ``[dicom] warn_free_mb`` shows in the health report's warnings
before the receiver refuses objects, and the spool logs each crossing once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from appliance.config import load_settings
from appliance.db import open_database
from appliance.health.report import warnings
from appliance.ingest.spool import Spool
from tests.support.clients import api_token


def test_the_warning_threshold_shows_in_the_health_report(tmp_path: Path) -> None:
    db = open_database(tmp_path / "app.db")
    (tmp_path / "home" / "spool").mkdir(parents=True)
    calm = load_settings(tmp_path / "home", {"dicom.warn_free_mb": 1}, environ={})
    pressed = load_settings(tmp_path / "home", {"dicom.warn_free_mb": 10**9}, environ={})
    assert not any("disk nearly full" in w for w in warnings(calm, db))
    [warning] = [w for w in warnings(pressed, db) if "disk nearly full" in w]
    assert "warning below [dicom] warn_free_mb = 1000000000" in warning
    assert "refused below 512 MiB" in warning
    # a threshold at or below the refusal one still warns first: at twice min_free_mb
    assert load_settings(
        tmp_path, {"dicom.warn_free_mb": 100}, environ={}
    ).dicom.warn_free_bytes == (1024 * 1024**2)


def test_the_spool_logs_each_crossing_once(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path, min_free=0, warn_free=10**18)
    caplog.set_level(logging.INFO, logger="neuronova.spool")
    for n in range(3):
        spool.write(f"1.2.{n}", b"x")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "disk space low" in caplog.records[0].getMessage()
    spool.warn_free = 0
    for n in range(3, 6):
        spool.write(f"1.2.{n}", b"x")
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "disk space back above" in caplog.records[1].getMessage()


@pytest.mark.slow
def test_the_system_api_gives_the_thresholds_and_the_warnings(appliance) -> None:
    token = api_token(appliance, "admin", appliance.admin_password)
    resp = requests.get(f"{appliance.url}/api/admin/system", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["disk"]["warn_free_bytes"] == 2048 * 1024**2
    assert body["disk"]["refuse_free_bytes"] == 512 * 1024**2
    assert body["warnings"] == body["health"]["warnings"]
