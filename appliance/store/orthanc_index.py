"""Where Orthanc keeps its index: SQLite files in the home (the default), or a PostgreSQL
database through Debian's ``orthanc-postgresql`` 4.0 plugin (``[orthanc] index``).

Only the index moves: the DICOM files stay in the home's storage folder
(``EnableStorage: false``), so the backup, the frame files and the retention sweep work
the same with either index, and the index can always be rebuilt from the files.
The database password lives in a file (``[orthanc] db_password_file``, mode 0600),
generated at first start when that file is inside the home; it is written only into
Orthanc's own configuration (mode 0600) and never logged.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.programs import find_orthanc_plugin
from appliance.security.keys import load_or_create_secret, read_secret

POSTGRESQL_PLUGIN = "libOrthancPostgreSQLIndex.so"
POSTGRESQL_PACKAGE = "orthanc-postgresql"
# PostgreSQL's SSLRequest (protocol 3, section 55.2.10): any PostgreSQL server answers it
# with one byte, 'S' or 'N', before any authentication.
_SSL_REQUEST = struct.pack("!II", 8, 80877103)
# Orthanc's plugin retries a refused connection this often, this many seconds apart.
CONNECTION_RETRIES = 12
CONNECTION_RETRY_S = 5


class IndexServerError(ApplianceError):
    """The PostgreSQL server of Orthanc's index does not answer, or its password is missing."""


def uses_postgresql(settings: Settings) -> bool:
    """Whether Orthanc's index is in PostgreSQL (``[orthanc] index = "postgresql"``)."""
    return settings.orthanc.index == "postgresql"


def index_plugins(settings: Settings) -> list[Path]:
    """The Orthanc plugins the index needs (none for SQLite).

    Raises :class:`~appliance.errors.MissingBinaryError` naming ``orthanc-postgresql``.
    """
    if not uses_postgresql(settings):
        return []
    return [find_orthanc_plugin(POSTGRESQL_PLUGIN, POSTGRESQL_PACKAGE)]


def ensure_password(settings: Settings) -> None:
    """Generate the database password at first start, when its file is in the home.

    A file outside the home belongs to whoever runs the server (the cloud profile's
    ``postgres`` service writes it into a volume both containers mount).
    """
    path = settings.orthanc_db_password_path
    if uses_postgresql(settings) and path.resolve().is_relative_to(settings.home.resolve()):
        load_or_create_secret(path, 24)


def index_config(settings: Settings) -> dict[str, Any]:
    """The part of Orthanc's configuration that chooses its index.

    Raises :class:`IndexServerError` if the password file is missing.
    """
    if not uses_postgresql(settings):
        return {}
    return {
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,  # the DICOM files stay in the home's storage folder
            "Host": settings.orthanc.db_host,
            "Port": settings.orthanc.db_port,
            "Database": settings.orthanc.db_name,
            "Username": settings.orthanc.db_user,
            "Password": _password(settings),
            "Lock": True,  # one Orthanc per database
            "EnableSsl": False,
            "MaximumConnectionRetries": CONNECTION_RETRIES,
            "ConnectionRetryInterval": CONNECTION_RETRY_S,
            "IndexConnectionsCount": 1,
        }
    }


def _password(settings: Settings) -> str:
    path = settings.orthanc_db_password_path
    try:
        return read_secret(path)
    except FileNotFoundError:
        raise IndexServerError(
            f"[orthanc] index = postgresql, but the password file {path} does not exist. "
            "Run `neuronova init` to generate it (or set [orthanc] db_password_file)."
        ) from None


def server_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a PostgreSQL server answers at ``host``:``port`` (its SSLRequest reply)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def wait_for_server(settings: Settings, timeout: float = 60.0) -> None:
    """Return once the index's PostgreSQL server answers (at once for SQLite).

    Raises :class:`IndexServerError` saying what to install or start after ``timeout``.
    """
    if not uses_postgresql(settings):
        return
    host, port = settings.orthanc.db_host, settings.orthanc.db_port
    deadline = time.monotonic() + timeout
    while not server_answers(host, port):
        if time.monotonic() >= deadline:
            raise IndexServerError(unreachable_message(settings))
        time.sleep(0.5)


def unreachable_message(settings: Settings) -> str:
    """What to do when the index's PostgreSQL server does not answer."""
    return (
        f"[orthanc] index = postgresql, but no PostgreSQL server answers at "
        f"{settings.orthanc.db_host}:{settings.orthanc.db_port}. Install and start it "
        "(`sudo apt-get install postgresql orthanc-postgresql`), create the role and "
        'database (docs/install-clinic.md), or set [orthanc] index = "sqlite".'
    )
