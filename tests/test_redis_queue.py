"""The cloud profile's queue: the same pipeline on a real Redis server instead of SQLite."""

from __future__ import annotations

import subprocess

import pytest
from conftest import free_port, require_tool, storescu, wait_for, wait_stored

from bench.synthetic import make_slices, write_series

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    server_program = require_tool("redis-server", "redis-server")
    redis_cli = require_tool("redis-cli", "redis-tools")
    server = subprocess.Popen(
        [server_program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ping = [redis_cli, "-p", str(port), "ping"]
    wait_for(lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG",
             10, "redis to answer")  # fmt: skip
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_ingest_runs_on_a_redis_queue(appliance_factory, redis_url, tmp_path):
    appliance = appliance_factory(redis_url=redis_url).start()
    _, report = appliance.health()
    assert report["components"]["queue"]["backend"] == "redis"
    series = write_series(tmp_path / "ct", make_slices(4))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
