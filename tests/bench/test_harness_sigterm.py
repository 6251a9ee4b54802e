"""A bench stopped with SIGTERM stops the appliance it started (its ``finally`` runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.harness import REPO, python_env

pytestmark = pytest.mark.slow

BENCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bench.harness import Appliance
    from bench.scale import ours

    home = Path(sys.argv[1]) / "home"
    appliance = Appliance.create(home, ours=ours(home))
    appliance.start()
    try:
        print(appliance.process.pid, flush=True)
        time.sleep(600)
    finally:
        appliance.stop()
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by nobody yet, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_to_a_bench_stops_its_appliance(tmp_path: Path) -> None:
    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(tmp_path)], cwd=REPO,
                             env=python_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    run_pid = 0
    try:
        assert bench.stdout is not None
        run_pid = int(bench.stdout.readline())
        assert alive(run_pid)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        deadline = time.monotonic() + 30
        while alive(run_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(run_pid), "the appliance outlived the bench that started it"
    finally:
        bench.kill()
        bench.wait()
        if run_pid and alive(run_pid):
            os.kill(run_pid, signal.SIGTERM)
