"""Secrets generated at first start: stored with mode 0600, never logged."""

from __future__ import annotations

import secrets
from pathlib import Path

from appliance.durable import write_atomic

SECRET_MODE = 0o600


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    write_atomic(path, data, mode=SECRET_MODE)


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
