"""Durable file writes: a fsynced temporary file renamed into place, then the folder fsynced."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Make the content of the file ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, *parts: bytes, mode: int = 0o644, temp_dir: Path | None = None
) -> None:
    """Write ``parts`` to ``path`` so that readers see the old file or the whole new one.

    The data is fsynced before the rename; the caller fsyncs the folder (with
    :func:`fsync_dir`) when the rename itself must survive a power loss. ``temp_dir``
    (same file system) holds the partial file, e.g. a spool's ``incoming/``.
    """
    tmp = (temp_dir or path.parent) / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
