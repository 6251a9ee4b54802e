"""Processes a run left behind when it died without stopping its children, found by
what the state file recorded (boot id, session leaders and their start times) and killed
before the next run takes their ports."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("neuronova.supervisor")

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
REAP_WAIT = 5.0  # seconds for processes killed by reap_leftovers to be gone


def boot_id() -> str:
    """This boot's random id: pids and start times from another boot mean nothing now."""
    return BOOT_ID_FILE.read_text().strip()


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from field 3 on (after the command name)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/PID/stat``)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def reap_leftovers(state_file: Path) -> int:
    """Kill processes left by a run that died without stopping its children.

    Children run in sessions of their own whose ids are their pids, as recorded in the
    state file with their start times and the boot id; grandchildren (nginx's workers)
    keep that session id after their parent dies. A state file present at start means
    the last run did not stop cleanly. Pids are reused, so a process is killed only when
    the boot is the same, the session's leader (if alive) is the recorded process (same
    start time), and the process started no earlier than that leader.
    """
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return 0
    if state.get("boot_id") != boot_id():
        log.info("the last run's state is from another boot (or unverifiable): nothing to reap")
        return 0
    leaders = {
        c["pid"]: c["start_ticks"]
        for c in state.get("children", {}).values()
        if c.get("pid") and c.get("start_ticks") is not None
    }
    killed = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _proc_stat(stat.parent.name)
        if fields and _left_by_last_run(int(fields[3]), int(fields[19]), leaders):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed.append(int(stat.parent.name))
    if killed:
        log.warning("killed %d process(es) left by a run that did not stop cleanly", len(killed))
        _wait_ended(killed, REAP_WAIT)
    return len(killed)


def _wait_ended(pids: list[int], timeout: float) -> None:
    """Wait until every one of ``pids`` has exited (a zombie has: its sockets are closed).

    SIGKILL is delivered asynchronously: until the processes are gone, the ports they
    listened on are still taken, and the new run's port check would find them so.
    """
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if (fields := _proc_stat(pid)) and fields[0] != "Z"]
    if alive:
        log.warning("processes %s left by the last run are still there after SIGKILL", alive)


def _left_by_last_run(session: int, started: int, leaders: dict[int, int]) -> bool:
    """Whether a process of ``session`` started at ``started`` belongs to a recorded child."""
    if session not in leaders:
        return False
    leader_now = process_start_ticks(session)
    if leader_now is not None and leader_now != leaders[session]:
        return False  # the pid is another process now: the session is not ours
    return started >= leaders[session]
