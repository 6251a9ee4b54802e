"""Fixtures of the queue tests: a real Redis server, as the cloud profile runs it."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.ports import PortTaken, on_a_reserved_port
from tests.support.tools import require_tool
from tests.support.waiting import wait_for


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
