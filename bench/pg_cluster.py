"""A PostgreSQL cluster of the bench's or test's own for Orthanc's index: ``initdb`` into
a folder (a temporary one, or one kept beside a filled home and started again), started
with ``pg_ctl`` on a free port, listening on loopback only; never the system's cluster.

PostgreSQL refuses to run as root, so under root the cluster runs as ``nobody``
(``setpriv``), in a folder that user owns. The superuser logs in only through the
cluster's own socket folder; Orthanc's role logs in over TCP with a password
(scram-sha-256), as on a clinic box set up by docs/install-clinic.md. Used by
tests/test_orthanc_postgresql.py and, with ``--index postgresql``, by the benches.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Settings
from appliance.store.orthanc_index import server_answers
from bench.harness import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROLE, DATABASE = "neuronova", "orthanc"  # the appliance's defaults
PACKAGE = "postgresql-15"
RUN_AS = "nobody"


@dataclass
class Cluster:
    """One PostgreSQL cluster in ``folder`` on ``port``; ``prefix`` runs a command in the
    network namespace it lives in (empty: this one)."""

    folder: Path
    port: int
    prefix: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def sockets(self) -> Path:
        return self.folder / "run"

    def run(
        self, program: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        """``program`` of PostgreSQL 15 as the cluster's user (with ``env`` added to its
        environment); its stdout (fails loudly)."""
        binary = PG_BIN / program
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: `bash scripts/setup.sh --test` installs "
                               f"{PACKAGE}")  # fmt: skip
        command = [*self.prefix, *_as_owner(), str(binary), *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {})})  # fmt: skip
        assert done.returncode == 0, f"{program} {args}: {done.stdout}{done.stderr}"
        return done.stdout

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL (on stdin) as the superuser through the cluster's socket; psql's
        unaligned output."""
        return self.run("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockets),
                        "-p", str(self.port), "-U", "postgres", "-d", database,
                        stdin=statement)  # fmt: skip

    def create_owner(self, role: str, password: str, database: str) -> None:
        """A login role with ``password`` and a database it owns, made with the commands
        docs/install-clinic.md gives (the password through the environment, never argv)."""
        where = ["-h", str(self.sockets), "-p", str(self.port), "-U", "postgres"]
        self.run("createuser", *where, role)
        self.run("createdb", *where, "-O", role, "-E", "UTF8", database)
        self.run("psql", *where, "-X", "-q", "-v", "ON_ERROR_STOP=1", env={"PW": password},
                 stdin=f"\\getenv pw PW\nALTER ROLE {role} PASSWORD :'pw';\n")  # fmt: skip

    def answers(self) -> bool:
        return server_answers("127.0.0.1", self.port, timeout=1.0)

    def index_settings(self) -> dict[str, object]:
        """Settings overrides that put an appliance's Orthanc index in this cluster."""
        return {"orthanc_index": "postgresql", "orthanc_db_port": self.port,
                "orthanc_db_name": DATABASE, "orthanc_db_user": ROLE}  # fmt: skip

    def serve(self, settings: Settings) -> None:
        """Give the appliance of ``settings`` (its home set up: the password generated)
        its role and database, unless an earlier run did."""
        if not self.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'").strip():
            password = settings.orthanc_db_password_path.read_text().strip()
            self.create_owner(ROLE, password, DATABASE)


def _as_owner() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={RUN_AS}", "--regid=nogroup", "--clear-groups"]


@contextmanager
def pg_cluster(
    prefix: Sequence[str] = (),
    listen: str = "127.0.0.1",
    folder: Path | None = None,
    durable: bool = False,
) -> Iterator[Cluster]:
    """Start a cluster listening on ``listen`` (initialised first unless ``folder`` holds
    one); stop it after, and remove it unless it lives in the caller's ``folder``.
    ``durable``: fsync on, as a real server (benches); tests run without it."""
    kept = folder is not None
    folder = folder or Path(tempfile.mkdtemp(prefix="nn-pg-"))
    cluster = Cluster(folder, free_port(), list(prefix))
    try:
        if not (cluster.data / "PG_VERSION").exists():
            _initdb(cluster)
        options = (f"-c listen_addresses={listen} -p {cluster.port} "
                   f"-c unix_socket_directories={cluster.sockets} -c fsync={durable}")  # fmt: skip
        cluster.run("pg_ctl", "-D", str(cluster.data), "-l", str(folder / "server.log"),
                    "-o", options, "-w", "start")  # fmt: skip
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)


def _initdb(cluster: Cluster) -> None:
    cluster.folder.mkdir(parents=True, exist_ok=True)
    cluster.sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam(RUN_AS)
        for path in (cluster.folder, cluster.sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    cluster.run("initdb", "-D", str(cluster.data), "-U", "postgres", "-E", "UTF8",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")  # fmt: skip
