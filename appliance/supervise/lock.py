"""One ``neuronova run`` per data home, enforced with an exclusive file lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from appliance.errors import AlreadyRunningError


class HomeLock:
    """An exclusive, non-blocking ``flock`` on a file; released when the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> HomeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"NeuroNova is already running on {self.path.parent.parent} (pid {holder}). "
                "Stop it first (Ctrl-C in its terminal, or `kill` that pid), "
                "or use another --home."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
