"""The cloud profile's queue: the same pipeline on a real Redis server instead of SQLite."""

from __future__ import annotations

import pytest

from bench.synthetic import make_slices, write_series
from tests.support.running import storescu, wait_stored

pytestmark = pytest.mark.slow


def test_ingest_runs_on_a_redis_queue(appliance_factory, redis_url, tmp_path):
    appliance = appliance_factory({"queue.redis_url": redis_url}).start()
    _, report = appliance.health()
    assert report["components"]["queue"]["backend"] == "redis"
    series = write_series(tmp_path / "ct", make_slices(4))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
