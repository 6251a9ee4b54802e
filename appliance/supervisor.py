"""Starting, watching and stopping the appliance's child processes.

Modelled on Supervisor (``supervisor/process.py``): each child has an explicit state
machine, every transition goes through :meth:`Child._transition` (which logs it and
records it in the state file), a crashed child is restarted with a growing backoff, and
a child that keeps failing becomes FATAL. Readiness is polled, never assumed after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.keys import write_private_file

log = logging.getLogger("neuronova.supervisor")

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
MAX_FAST_FAILURES = 5
STABLE_AFTER = 10.0
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
STOP_BUDGET = 9.0


class State(enum.Enum):
    """Lifecycle states of a child process."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class StartupError(ApplianceError):
    """A child could not be started; the message names it and says why."""


@dataclass
class ChildSpec:
    """How to run one child: its command, its log, and how to tell it is ready."""

    name: str
    command: list[str]
    log_file: Path
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    stop_signal: signal.Signals = signal.SIGTERM


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL the child if the supervisor dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class Launcher:
    """The OS calls the supervisor makes, in one object so tests can replace them."""

    async def spawn(self, spec: ChildSpec) -> asyncio.subprocess.Process:
        """Start ``spec``'s command in its own session, output appended to its log."""
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_file, "ab") as out:
            return await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **spec.env},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def signal(self, process: asyncio.subprocess.Process, sig: int) -> None:
        """Send ``sig`` to the child, ignoring one that already exited."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


class Child:
    """One supervised process and its state machine."""

    def __init__(self, spec: ChildSpec, launcher: Launcher, on_change: Callable[[], None]) -> None:
        self.spec = spec
        self.state = State.STOPPED
        self.restarts = 0
        self.last_error: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.start_ticks: int | None = None  # when the process started, in clock ticks
        self._launcher = launcher
        self._on_change = on_change
        self._stop_requested = asyncio.Event()
        self.settled = asyncio.Event()  # RUNNING for the first time, or FATAL

    def _transition(self, new: State, reason: str = "") -> None:
        old, self.state = self.state, new
        pid = f" (pid {self.process.pid})" if self.process else ""
        level = (
            logging.WARNING if new in (State.EXITED, State.BACKOFF, State.FATAL) else logging.INFO
        )
        log.log(
            level,
            "%s: %s -> %s%s%s",
            self.spec.name,
            old.value,
            new.value,
            pid,
            f": {reason}" if reason else "",
        )
        if new in (State.RUNNING, State.FATAL):
            self.settled.set()
        self._on_change()

    def snapshot(self) -> dict[str, Any]:
        """The child's state for the state file and ``neuronova status``."""
        return {
            "state": self.state.value,
            "pid": self.process.pid if self.process and self.state is State.RUNNING else None,
            "start_ticks": self.start_ticks,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Keep the child running until :meth:`stop` is called or it becomes FATAL."""
        backoff, fast_failures = BACKOFF_START, 0
        while not self._stop_requested.is_set():
            started = time.monotonic()
            exit_reason = await self._run_once()
            if self._stop_requested.is_set():
                break
            self.last_error = exit_reason
            self._transition(State.EXITED, exit_reason)
            if time.monotonic() - started > STABLE_AFTER:
                backoff, fast_failures = BACKOFF_START, 0
            fast_failures += 1
            if fast_failures >= MAX_FAST_FAILURES:
                self._transition(State.FATAL, f"gave up after {fast_failures} failed starts")
                return
            self._transition(State.BACKOFF, f"restarting in {backoff:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.restarts += 1
        self._transition(State.STOPPED)

    async def _run_once(self) -> str:
        """Spawn, wait until ready, then until exit; return why it ended."""
        self._transition(State.STARTING)
        try:
            self.process = await self._launcher.spawn(self.spec)
        except OSError as exc:
            return f"could not start {self.spec.command[0]}: {exc.strerror or exc}"
        self.start_ticks = process_start_ticks(self.process.pid)
        if not await self._wait_ready():
            if self.process.returncode is None and not self._stop_requested.is_set():
                self._launcher.signal(self.process, signal.SIGKILL)
                await self.process.wait()
                return f"not ready after {self.spec.start_timeout:.0f} s (see {self.spec.log_file})"
        else:
            self._transition(State.RUNNING)
        code = await self.process.wait()
        return f"exited with {_describe_exit(code)} (see {self.spec.log_file})"

    async def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.spec.start_timeout
        assert self.process is not None
        while time.monotonic() < deadline and self.process.returncode is None:
            if self._stop_requested.is_set():
                return False
            with contextlib.suppress(Exception):
                if await self.spec.ready():
                    return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self, timeout: float) -> None:
        """Ask the child to stop; SIGKILL it if it is still alive after ``timeout``."""
        self._stop_requested.set()
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._transition(State.STOPPING)
        self._launcher.signal(process, self.spec.stop_signal)
        try:
            await asyncio.wait_for(process.wait(), max(timeout, 0.5))
        except TimeoutError:
            log.warning("%s: did not stop within %.1f s, killing it", self.spec.name, timeout)
            self._launcher.signal(process, signal.SIGKILL)
            await process.wait()


def _last_line(log_file: Path) -> str:
    """The last line of a child's log, to show with a start-up failure."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f"\n  last log line: {lines[-1][:300]}" if lines else ""


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
    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _proc_stat(stat.parent.name)
        if fields and _left_by_last_run(int(fields[3]), int(fields[19]), leaders):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed += 1
    if killed:
        log.warning("killed %d process(es) left by a run that did not stop cleanly", killed)
    return killed


def _left_by_last_run(session: int, started: int, leaders: dict[int, int]) -> bool:
    """Whether a process of ``session`` started at ``started`` belongs to a recorded child."""
    if session not in leaders:
        return False
    leader_now = process_start_ticks(session)
    if leader_now is not None and leader_now != leaders[session]:
        return False  # the pid is another process now: the session is not ours
    return started >= leaders[session]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Starts children in order, restarts crashed ones, stops them in reverse order."""

    def __init__(self, specs: list[ChildSpec], state_file: Path, launcher: Launcher | None = None):
        self._state_file = state_file
        self.children = [Child(s, launcher or Launcher(), self._write_state) for s in specs]
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.time()
        self._boot_id = boot_id()

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "boot_id": self._boot_id,
            "started_at": self._started_at,
            "children": {c.spec.name: c.snapshot() for c in self.children},
        }
        write_private_file(self._state_file, json.dumps(state, indent=2).encode())

    async def start(self) -> None:
        """Start every child in order, each only after the previous one is ready."""
        for child in self.children:
            self._tasks.append(asyncio.create_task(child.run(), name=child.spec.name))
            await child.settled.wait()
            if child.state is State.FATAL:
                raise StartupError(
                    f"{child.spec.name} could not be started: {child.last_error}"
                    f"{_last_line(child.spec.log_file)}"
                )

    async def stop(self) -> None:
        """Stop the children in reverse order within :data:`STOP_BUDGET` seconds in all."""
        deadline = time.monotonic() + STOP_BUDGET
        for child in reversed(self.children):
            remaining = deadline - time.monotonic()
            await child.stop(min(remaining, 4.0))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()

    async def run_until(self, stop_event: asyncio.Event) -> None:
        """Start everything, wait for ``stop_event``, then stop everything.

        A stop request during start-up interrupts the start-up.
        """
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop_event.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                log.info("all services are running")
                await stopping
            log.info("stopping")
        finally:
            starting.cancel()
            stopping.cancel()
            await self.stop()
