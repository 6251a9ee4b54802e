"""What each queue worker is doing: its running tasks and how each kind last ended.

Huey's storage holds the pending and scheduled tasks, not the running ones, and the
queue keeps no results (``results=False``). So each worker counts them itself with
Huey's pre- and post-execute hooks (a dict update under a lock per task) and writes the
counts with its heartbeat to ``HOME/run/workers/NAME.json`` (every 2 s, a few hundred
bytes, no fsync). The queue monitor adds up the files of the live workers: several
worker containers share one home in the cloud profile.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huey import Huey
from huey.api import Task

from appliance.db import now_iso
from appliance.layout import HomeLayout

# A worker writes every HEARTBEAT_INTERVAL (2 s); older files are of stopped workers.
LIVE_FOR_S = 15.0
MAX_ERROR_CHARS = 500


def activity_dir(layout: HomeLayout) -> Path:
    """The folder of the workers' activity files."""
    return layout.run_dir / "workers"


@dataclass
class TaskActivity:
    """One worker's counts, per task name: running now, and the last outcome."""

    path: Path
    running: dict[str, int] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_this_process(cls, layout: HomeLayout) -> TaskActivity:
        """The activity of this worker process, in a file named after host and PID."""
        return cls(activity_dir(layout) / f"{socket.gethostname()}-{os.getpid()}.json")

    def attach(self, huey: Huey) -> None:
        """Count the tasks ``huey``'s consumer runs in this process."""
        huey.pre_execute(name="activity")(self.started)
        huey.post_execute(name="activity")(self.finished)

    def started(self, task: Task) -> None:
        """A task begins (Huey's pre-execute hook)."""
        with self._lock:
            self.running[task.name] = self.running.get(task.name, 0) + 1

    def finished(self, task: Task, value: Any, exc: BaseException | None) -> None:
        """A task ended, well (``value``: a state or a count) or with ``exc`` (Huey's
        post-execute hook)."""
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        result = value if isinstance(value, str | int) and exc is None else None
        outcome = {"finished": now_iso(), "ok": exc is None, "result": result, "error": error}
        with self._lock:
            self.running[task.name] = max(0, self.running.get(task.name, 0) - 1)
            self.last[task.name] = outcome

    def write(self) -> None:
        """Replace the activity file with the counts now."""
        with self._lock:
            text = json.dumps({"running": self.running, "last": self.last})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(text)
        os.replace(partial, self.path)

    def remove(self) -> None:
        """The worker stops: its counts no longer apply."""
        self.path.unlink(missing_ok=True)


def forget_stopped_workers(layout: HomeLayout) -> None:
    """Remove the files of workers that stopped without removing theirs (killed)."""
    for path in activity_dir(layout).glob("*.json"):
        with contextlib.suppress(OSError):  # another worker starting removed it first
            if time.time() - path.stat().st_mtime > LIVE_FOR_S:
                path.unlink()


@dataclass(frozen=True)
class WorkersActivity:
    """The live workers' activity, added up per task name."""

    workers: int
    running: dict[str, int]
    last: dict[str, dict[str, Any]]


def read_activity(layout: HomeLayout) -> WorkersActivity:
    """Add up the activity files written in the last :data:`LIVE_FOR_S` seconds; for each
    task name the newest outcome wins."""
    running: dict[str, int] = {}
    last: dict[str, dict[str, Any]] = {}
    workers = 0
    for path in activity_dir(layout).glob("*.json"):
        try:
            if time.time() - path.stat().st_mtime > LIVE_FOR_S:
                continue
            found = json.loads(path.read_text())
        except (OSError, ValueError):  # a worker replacing or removing it meanwhile
            continue
        workers += 1
        for name, count in found.get("running", {}).items():
            running[name] = running.get(name, 0) + int(count)
        for name, outcome in found.get("last", {}).items():
            if name not in last or outcome["finished"] > last[name]["finished"]:
                last[name] = outcome
    return WorkersActivity(workers, running, last)
