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
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import LOOPBACK, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "nobody"
ROLE, DATABASE = "neuronova", "orthanc"


@dataclass(frozen=True)
class PgServer:
    """The server whose files are in ``folder`` (``data/``, ``run/``, ``server.log``);
    ``prefix`` runs its programs in the network namespace it lives in (tests)."""

    folder: Path
    port: int
    prefix: tuple[str, ...] = field(default=())

    def run(
        self, program: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        """``program`` of PostgreSQL 15 as the server's user, ``env`` added to its
        environment; its stdout (fails loudly)."""
        binary = PG_BIN / program
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: apt-get install postgresql-15")
        command = [*self.prefix, *_as_owner(), str(binary), *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})})  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    @property
    def superuser(self) -> list[str]:
        """psql's and createdb's options: the superuser, through the server's socket."""
        return ["-h", str(self.folder / "run"), "-p", str(self.port), "-U", "postgres"]

    def sql(self, statement: str, database: str = "postgres") -> str:
        """SQL as the superuser through the server's socket (on stdin: never in a message)."""
        return self.run("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *self.superuser,
                        "-d", database, stdin=statement)  # fmt: skip

    def settings(self) -> dict[str, object]:
        """The appliance's settings for an index in this server (password: in the home)."""
        return {
            "orthanc.index": "postgresql",
            "orthanc.db_host": LOOPBACK,
            "orthanc.db_port": self.port,
            "orthanc.db_name": DATABASE,
            "orthanc.db_user": ROLE,
        }

    def create_owner(self, password: str) -> None:
        """Orthanc's login role with ``password`` and the database it owns, made with the
        commands docs/install-clinic.md gives (the password through the environment)."""
        self.run("createuser", *self.superuser, ROLE)
        self.run("createdb", *self.superuser, "-O", ROLE, "-E", "UTF8", DATABASE)
        self.run("psql", *self.superuser, "-X", "-q", "-v", "ON_ERROR_STOP=1", env={"PW": password},
                 stdin=f"\\getenv pw PW\nALTER ROLE {ROLE} PASSWORD :'pw';\n")  # fmt: skip

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
def pg_server(
    folder: Path, *, create: bool, listen: str = LOOPBACK, prefix: tuple[str, ...] = ()
) -> Iterator[PgServer]:
    """Start the server in ``folder`` on a free port, listening on ``listen`` (``create``:
    initialise it first, in a new folder); stop it cleanly afterwards, keeping its files."""
    server = PgServer(folder, free_port(), prefix)
    if create:
        (folder / "run").mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            for path in (folder, folder / "run"):
                os.chown(path, user.pw_uid, user.pw_gid)
        server.run("initdb", "-D", str(folder / "data"), "-U", "postgres", "-E", "UTF8",
                   "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
    options = (f"-c listen_addresses={listen} -p {server.port} "
               f"-c unix_socket_directories={folder / 'run'}")  # fmt: skip
    server.run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"),
               "-o", options, "-w", "start")  # fmt: skip
    try:
        yield server
    finally:
        server.run("pg_ctl", "-D", str(folder / "data"), "-m", "fast", "-w", "stop")


@contextmanager
def throwaway_pg_server(
    *, listen: str = LOOPBACK, prefix: tuple[str, ...] = ()
) -> Iterator[PgServer]:
    """A new server in a temporary folder of its own (one ``nobody`` may enter), removed
    after it stops (tests, bench/orthanc_index.py)."""
    folder = Path(tempfile.mkdtemp(prefix="nn-pg-"))
    try:
        with pg_server(folder, create=True, listen=listen, prefix=prefix) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)
