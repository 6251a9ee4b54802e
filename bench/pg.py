"""A PostgreSQL 15 server of the bench's own for Orthanc's index (``bench/scale.py
--index postgresql``): its data folder lives with a cached home, so a filled archive is
the pair (home, server folder) and is copied and restarted as one.

Made with ``initdb`` and run with ``pg_ctl`` on a free loopback port, never the system's
cluster. PostgreSQL refuses to run as root, so under root the server runs as ``nobody``
(``setpriv``) in a folder that user owns. The superuser logs in only through the
server's own socket folder; Orthanc's role logs in over TCP with the password the
appliance generated (scram-sha-256), as ``docs/install-clinic.md`` sets a clinic box up.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import LOOPBACK, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "nobody"
ROLE, DATABASE = "neuronova", "orthanc"


@dataclass(frozen=True)
class PgServer:
    """The server whose files are in ``folder`` (``data/``, ``run/``, ``server.log``)."""

    folder: Path
    port: int

    def run(self, program: str, *args: str, stdin: str | None = None) -> str:
        """``program`` of PostgreSQL 15 as the server's user; its stdout (fails loudly)."""
        binary = PG_BIN / program
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: apt-get install postgresql-15")
        command = [*_as_owner(), str(binary), *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def sql(self, statement: str) -> str:
        """SQL as the superuser through the server's socket (on stdin: never in a message)."""
        return self.run("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                        str(self.folder / "run"), "-p", str(self.port), "-U", "postgres",
                        "-d", "postgres", stdin=statement)  # fmt: skip

    def settings(self) -> dict[str, object]:
        """The appliance's settings for an index in this server (password: in the home)."""
        return {
            "orthanc_index": "postgresql",
            "orthanc_db_host": LOOPBACK,
            "orthanc_db_port": self.port,
            "orthanc_db_name": DATABASE,
            "orthanc_db_user": ROLE,
        }

    def create_owner(self, password: str) -> None:
        """Orthanc's login role with ``password`` and the database it owns."""
        literal = "'" + password.replace("'", "''") + "'"
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD {literal}")
        self.sql(f"CREATE DATABASE {DATABASE} OWNER {ROLE} ENCODING 'UTF8' TEMPLATE template0")

    def size_bytes(self) -> int:
        """Bytes on disk (allocated blocks) of the server's data folder."""
        total = 0
        for root, _dirs, names in os.walk(self.folder / "data"):
            total += sum(os.lstat(os.path.join(root, n)).st_blocks * 512 for n in names)
        return total


def _as_owner() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={RUN_AS}", "--regid=nogroup", "--clear-groups"]


@contextmanager
def pg_server(folder: Path, *, create: bool) -> Iterator[PgServer]:
    """Start the server in ``folder`` on a free loopback port (``create``: initialise it
    first, in a new folder); stop it cleanly afterwards, keeping its files."""
    server = PgServer(folder, free_port())
    if create:
        (folder / "run").mkdir(parents=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            for path in (folder, folder / "run"):
                os.chown(path, user.pw_uid, user.pw_gid)
        server.run("initdb", "-D", str(folder / "data"), "-U", "postgres", "-E", "UTF8",
                   "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
    options = (f"-c listen_addresses={LOOPBACK} -p {server.port} "
               f"-c unix_socket_directories={folder / 'run'}")  # fmt: skip
    server.run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"),
               "-o", options, "-w", "start")  # fmt: skip
    try:
        yield server
    finally:
        server.run("pg_ctl", "-D", str(folder / "data"), "-m", "fast", "-w", "stop")
