"""Logging set-up and log rotation.

The appliance's own processes (the supervisor, app, worker, receiver) write structured
logs: one JSON object per line with ``time`` (UTC), ``severity``, ``component``, ``pid``,
``logger``, ``message`` and, for an error, ``exception`` (the traceback, escaped into the
line). The keys are the ones Google Cloud Logging reads from a container's output. On a
terminal they are written as plain text instead; ``neuronova logs`` shows either.

Every log in ``HOME/logs`` is rotated by size: ``name.log`` becomes ``name.log.1``, the
older ones move up to ``name.log.KEEP``, and the oldest is deleted (the scheme of the
standard library's :class:`~logging.handlers.RotatingFileHandler`, which the appliance's
own log uses). The children's output passes through :class:`RotatingOutput`; nginx
writes its logs itself and reopens them on SIGUSR1 after :func:`rotate` renamed them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MIB = 1024**2


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring), on one line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "component": self.component,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: int = logging.INFO,
    log_file: Path | None = None,
    dicom_level: int = logging.CRITICAL,
    max_bytes: int = 50 * MIB,
    keep: int = 5,
    component: str = "neuronova",
    stream: TextIO | None = None,
) -> None:
    """Send the appliance's log records to ``stream`` (stderr by default) and to
    ``log_file`` (rotated by size), as JSON lines naming ``component``; a terminal gets
    plain text.

    ``dicom_level`` is pynetdicom's level: its messages matter in the receiver; elsewhere
    pynetdicom only runs health probes, whose failures the probes report themselves.
    """
    stream = stream or sys.stderr
    structured = JsonFormatter(component)
    console = logging.StreamHandler(stream)
    console.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT) if stream.isatty() else structured)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=keep
        )
        rotating.setFormatter(structured)
        handlers.append(rotating)
    logging.basicConfig(level=level, handlers=handlers, force=True)
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
