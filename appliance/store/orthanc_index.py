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

import contextlib
import logging
import socket
import sqlite3
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
# Rows SQLite's ANALYZE reads per index of Orthanc's SQLite index: the statistics it
# needs (which index is selective) in milliseconds, whatever the archive holds.
ANALYSIS_LIMIT = 400

log = logging.getLogger("neuronova.orthanc")


class IndexServerError(ApplianceError):
    """The PostgreSQL server of Orthanc's index does not answer, or its password is missing."""


def uses_postgresql(settings: Settings) -> bool:
    """Whether Orthanc's index is in PostgreSQL (``[orthanc] index = "postgresql"``)."""
    return settings.orthanc.index == "postgresql"


def sqlite_index_file(settings: Settings) -> Path:
    """Orthanc's SQLite index (``IndexDirectory``/``index``), with ``index = "sqlite"``."""
    return settings.layout.orthanc_dir / "index" / "index"


def refresh_statistics(settings: Settings) -> None:
    """Give SQLite's planner statistics on Orthanc's SQLite index, before Orthanc starts.

    Orthanc 1.10.1 never runs ``ANALYZE``. Without statistics SQLite answers a look-up by
    UID (``/tools/lookup``, DICOMweb by UID: the worker's metadata of each stored
    instance) on the index of (tag group, tag element), reading an identifier of every
    instance in the archive: 16 ms a look-up at 75,000 instances against 3 ms at 10,000.
    With them it takes the index of values: 1.4 ms at 75,000. A bounded sample
    (:data:`ANALYSIS_LIMIT`) took 15 ms at 75,000. Orthanc locks its index while it
    runs, so this is only for a stopped Orthanc; a locked or unreadable index is left
    as it is (logged), and PostgreSQL keeps its own statistics.
    """
    path = sqlite_index_file(settings)
    if uses_postgresql(settings) or not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=2, isolation_level=None)) as db:
            db.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
            db.execute("ANALYZE")
    except sqlite3.Error as exc:
        log.warning("Orthanc's index statistics were not refreshed (%s): look-ups by UID "
                    "may be slower until the next start", exc)  # fmt: skip


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
