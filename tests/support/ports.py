"""TCP ports for the services a test run starts, reserved so that nothing else takes them.

``bind(("127.0.0.1", 0))`` hands out an *ephemeral* port: the kernel gives the same range
to the source ports of every outgoing connection, so a port chosen that way and let go
can be taken by any client a moment later (CI saw the receiver fail with EADDRINUSE).
Ports here come from below the ephemeral range, which the kernel never hands out on its
own, and each block of them is held by an exclusive ``flock`` for the life of the
process, so two test runs at once (or a benchmark beside them) never choose the same one.
A program outside the tests may still hold a number: :func:`reserve_port` skips any
port it cannot bind, and fixtures that start a service retry with new ports when a bind
fails anyway (:meth:`tests.support.running.Appliance.start`).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from appliance.supervise.ports import LOWEST_CHOSEN_PORT, ephemeral_low, port_is_free

T = TypeVar("T")
BLOCK_SIZE = 64
LOCK_DIR = Path(tempfile.gettempdir()) / "neuronova-test-ports"


class PortPool:
    """Blocks of ports below the ephemeral range, each held by a lock file while in use."""

    def __init__(self, low: int = LOWEST_CHOSEN_PORT, high: int | None = None) -> None:
        self.low = low
        self.high = high if high is not None else ephemeral_low() - 1
        if self.high - self.low < BLOCK_SIZE:
            raise RuntimeError(
                f"no room for test ports below the ephemeral range ({self.low}-{self.high}): "
                "lower net.ipv4.ip_local_port_range's first port"
            )
        self._locks: list[IO[str]] = []
        self._next: list[int] = []

    def reserve(self) -> int:
        """A port no other reservation (of this process or another) holds, and bindable now."""
        while True:
            if not self._next:
                self._take_block()
            port = self._next.pop(0)
            if port_is_free("0.0.0.0", port):
                return port

    def _take_block(self) -> None:
        LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
        blocks = (self.high - self.low + 1) // BLOCK_SIZE
        start = os.getpid() % blocks  # runs started together begin at different blocks
        for step in range(blocks):
            first = self.low + ((start + step) % blocks) * BLOCK_SIZE
            lock = open(LOCK_DIR / f"{first}.lock", "a")  # noqa: SIM115 (held until exit)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._locks.append(lock)
            self._next = list(range(first, first + BLOCK_SIZE))
            return
        raise RuntimeError(f"every block of test ports in {self.low}-{self.high} is held")


_POOL: PortPool | None = None


def reserve_port() -> int:
    """A TCP port for a service this test run starts; see the module's docstring."""
    global _POOL
    if _POOL is None:
        _POOL = PortPool()
    return _POOL.reserve()


class PortTaken(Exception):
    """A service could not bind the port it was given: another program holds it."""


def on_a_reserved_port(start: Callable[[int], T], tries: int = 3) -> T:
    """``start(port)`` on a reserved port; when it raises :class:`PortTaken`, on a new one."""
    for _ in range(tries - 1):
        try:
            return start(reserve_port())
        except PortTaken:
            continue
    return start(reserve_port())
