"""Secrets generated at first start: stored with mode 0600, never logged."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_MODE = 0o600


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, SECRET_MODE)
    os.replace(tmp, path)


def load_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret stored in ``path``, generating it first if absent.

    Parameters
    ----------
    path
        The secret's file; created with mode 0600.
    nbytes
        Random bytes in a new secret (URL-safe base64 encoded).
    """
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    write_private_file(path, value.encode())
    return value


def read_secret(path: Path) -> str:
    """Read an existing secret; :class:`FileNotFoundError` if absent."""
    return path.read_text().strip()
