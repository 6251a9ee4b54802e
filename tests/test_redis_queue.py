"""The cloud profile's queue: the same pipeline on a real Redis server instead of SQLite."""

from __future__ import annotations

import subprocess

import pytest
from conftest import require_tool, storescu, wait_for, wait_stored
from ports import PortTaken, on_a_reserved_port

from bench.synthetic import make_slices, write_series

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_url(tmp_path):
    """A Redis server of this test's own, on a reserved port (a new one if it was taken)."""
    server_program = require_tool("redis-server", "redis-server")
    redis_cli = require_tool("redis-cli", "redis-tools")

    def start(port: int) -> tuple[subprocess.Popen, int]:
        log = tmp_path / f"redis-{port}.log"
        server = subprocess.Popen(
            [server_program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ping = [redis_cli, "-p", str(port), "ping"]
        wait_for(lambda: server.poll() is not None or subprocess.run(
            ping, capture_output=True, text=True).stdout.strip() == "PONG",
            10, "redis to answer")  # fmt: skip
        if server.poll() is not None:
            said = log.read_text() if log.exists() else ""
            if "Address already in use" in said:
                raise PortTaken(port)
            raise AssertionError(f"redis-server exited: {said[-2000:]}")
        return server, port

    server, port = on_a_reserved_port(start)
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
