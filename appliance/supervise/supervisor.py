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
from appliance.security.keys import write_private_file
from appliance.supervise.leftovers import boot_id, process_start_ticks
from appliance.supervise.logs import MIB, RotatingOutput, rotate

log = logging.getLogger("neuronova.supervisor")

MAX_FAST_FAILURES = 5
STABLE_AFTER = 10.0
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
STOP_BUDGET = 25.0  # within the package's systemd TimeoutStopSec (30 s)
LOG_CHECK_INTERVAL = 5.0
OUTPUT_CHUNK = 64 * 1024


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
    """How to run one child: its command, its log, and how to tell it is ready.

    ``log_file`` receives the child's output. ``own_logs`` are files the child writes
    itself; when one is full the supervisor renames it and sends ``reopen_signal``.
    """

    name: str
    command: list[str]
    log_file: Path
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 4.0
    own_logs: tuple[Path, ...] = ()
    reopen_signal: signal.Signals | None = None


@dataclass(frozen=True)
class LogLimits:
    """Size-based rotation of every log: rotate at ``max_bytes``, keep ``keep`` old files."""

    max_bytes: int = 50 * MIB
    keep: int = 5


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL the child if the supervisor dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class Launcher:
    """The OS calls the supervisor makes, in one object so tests can replace them."""

    async def spawn(self, spec: ChildSpec) -> asyncio.subprocess.Process:
        """Start ``spec``'s command in its own session, its output on a pipe."""
        return await asyncio.create_subprocess_exec(
            *spec.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
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

    def __init__(
        self,
        spec: ChildSpec,
        launcher: Launcher,
        on_change: Callable[[], None],
        limits: LogLimits = LogLimits(),
    ) -> None:
        self.spec = spec
        self.limits = limits
        self.output = RotatingOutput(spec.log_file, limits.max_bytes, limits.keep)
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
        """Spawn, copy its output to its log, wait until ready, then until exit; return why
        it ended."""
        self._transition(State.STARTING)
        try:
            self.process = await self._launcher.spawn(self.spec)
        except OSError as exc:
            return f"could not start {self.spec.command[0]}: {exc.strerror or exc}"
        self.start_ticks = process_start_ticks(self.process.pid)
        copying = asyncio.create_task(self._copy_output(self.process))
        try:
            return await self._watch()
        finally:
            # Grandchildren (nginx's workers) may hold the pipe a little longer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(copying), 2.0)
            copying.cancel()

    async def _copy_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(OUTPUT_CHUNK):
            self.output.write(chunk)

    async def _watch(self) -> str:
        assert self.process is not None
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

    def rotate_own_logs(self) -> list[Path]:
        """Rotate the full logs the child writes itself, then ask it to reopen them."""
        full = [p for p in self.spec.own_logs if _size(p) >= self.limits.max_bytes]
        if not full or self.spec.reopen_signal is None:
            return []
        for path in full:
            rotate(path, self.limits.keep)
        if self.process is not None and self.process.returncode is None:
            self._launcher.signal(self.process, self.spec.reopen_signal)
        log.info("%s: rotated %s", self.spec.name, ", ".join(p.name for p in full))
        return full

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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _last_line(log_file: Path) -> str:
    """The last line of a child's log, to show with a start-up failure."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f"\n  last log line: {lines[-1][:300]}" if lines else ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Starts children in order, restarts crashed ones, stops them in reverse order."""

    def __init__(
        self,
        specs: list[ChildSpec],
        state_file: Path,
        launcher: Launcher | None = None,
        limits: LogLimits = LogLimits(),
    ) -> None:
        self._state_file = state_file
        launcher = launcher or Launcher()
        self.children = [Child(s, launcher, self._write_state, limits) for s in specs]
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
            await child.stop(min(remaining, child.spec.stop_timeout))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for child in self.children:
            child.output.close()
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()

    async def run_until(self, stop_event: asyncio.Event) -> None:
        """Start everything, wait for ``stop_event``, then stop everything.

        A stop request during start-up interrupts the start-up.
        """
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop_event.wait())
        rotating = asyncio.create_task(self._rotate_own_logs())
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
            rotating.cancel()
            await self.stop()

    async def _rotate_own_logs(self) -> None:
        """Every few seconds, rotate the full logs children write themselves."""
        while True:
            await asyncio.sleep(LOG_CHECK_INTERVAL)
            for child in self.children:
                child.rotate_own_logs()
