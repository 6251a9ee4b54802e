"""Logging set-up and log rotation.

Every log in ``HOME/logs`` is rotated by size: ``name.log`` becomes ``name.log.1``, the
older ones move up to ``name.log.KEEP``, and the oldest is deleted (the scheme of the
standard library's :class:`~logging.handlers.RotatingFileHandler`, which the appliance's
own log uses). The children's output passes through :class:`RotatingOutput`; nginx
writes its logs itself and reopens them on SIGUSR1 after :func:`rotate` renamed them.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import BinaryIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MIB = 1024**2


def configure_logging(
    level: int = logging.INFO,
    log_file: Path | None = None,
    dicom_level: int = logging.CRITICAL,
    max_bytes: int = 50 * MIB,
    keep: int = 5,
) -> None:
    """Send the appliance's log records to stderr (and ``log_file``, rotated by size).

    ``dicom_level`` is pynetdicom's level: its messages matter in the receiver; elsewhere
    pynetdicom only runs health probes, whose failures the probes report themselves.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=keep)
        )
    logging.basicConfig(
        level=level, format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", handlers=handlers, force=True
    )
    for noisy in ("aiohttp.access", "huey"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("pynetdicom").setLevel(max(level, dicom_level))


def rotate(path: Path, keep: int) -> None:
    """Rename ``path`` to ``path.1``, shifting older copies up to ``path.KEEP``."""
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.1"))


class RotatingOutput:
    """A child's output appended to its log file, rotated once it reaches ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating first if the file is full."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open between writes)
        if self._file.tell() and self._file.tell() + len(data) > self._max_bytes:
            self._file.close()
            rotate(self.path, self._keep)
            self._file = open(self.path, "ab")  # noqa: SIM115
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        """Close the file (the next write reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
