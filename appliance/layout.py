"""Where everything lives inside the data home."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

SPOOL_FOLDER = "spool"


def spool_name(recorded: str) -> str:
    """How the journal names a spool file: by its name in the home's spool folder, so that
    the home may move (renamed, restored elsewhere) and keep its pending objects.

    ``recorded`` is such a name, or an absolute path an older NeuroNova journaled (before
    migration 5) or put in a queued task: one whose folder is named ``spool`` gives its
    file name, whatever home it was in; any other path is kept as it is.
    """
    path = PurePath(recorded)
    if path.is_absolute() and path.parent.name == SPOOL_FOLDER:
        return path.name
    return recorded


@dataclass(frozen=True)
class HomeLayout:
    """The folders and files of one data home."""

    home: Path

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def jwt_key_file(self) -> Path:
        return self.secrets_dir / "jwt-signing.key"

    @property
    def orthanc_password_file(self) -> Path:
        return self.secrets_dir / "orthanc-password"

    @property
    def status_key_file(self) -> Path:
        """The key local tools (``neuronova status``) show to read the full health report."""
        return self.secrets_dir / "status-key"

    def client_secret_file(self, kind: str) -> Path:
        """The client secret the appliance shows a sign-in server (``oidc``: single sign-on,
        ``smart``: an EHR); absent for a public client."""
        return self.secrets_dir / f"{kind}-client-secret"

    @property
    def backup_key_file(self) -> Path:
        """The key that signs this home's backup manifests (HMAC-SHA256); in no backup."""
        return self.secrets_dir / "backup-key"

    @property
    def fhir_push_authorization_file(self) -> Path:
        """The ``Authorization`` header value sent to ``[fhir] push_url`` (if it needs one)."""
        return self.secrets_dir / "fhir-push-authorization"

    @property
    def record_file(self) -> Path:
        """Which NeuroNova last started on this home and which migrations ran (JSON,
        :mod:`appliance.migrations`)."""
        return self.home / "version.json"

    @property
    def init_lock_file(self) -> Path:
        """Held (blocking ``flock``) while the home is set up or migrated at start."""
        return self.home / ".init.lock"

    @property
    def database_file(self) -> Path:
        return self.home / "db" / "appliance.db"

    @property
    def queue_file(self) -> Path:
        return self.home / "db" / "queue.db"

    @property
    def spool_dir(self) -> Path:
        return self.home / SPOOL_FOLDER

    def spool_file(self, recorded: str) -> Path:
        """The spool file the journal or a task names ``recorded`` (see :func:`spool_name`):
        in this home's spool folder, wherever the home was when it was journaled."""
        return self.spool_dir / spool_name(recorded)

    @property
    def frames_dir(self) -> Path:
        return self.home / "frames"

    @property
    def orthanc_dir(self) -> Path:
        return self.home / "orthanc"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "neuronova.lock"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "supervisor.json"

    @property
    def ports_file(self) -> Path:
        """The internal ports the running appliance uses (appliance.supervise.ports)."""
        return self.run_dir / "ports.json"

    @property
    def workers_lock_file(self) -> Path:
        """Every running worker holds a shared lock on it (appliance.jobs.worker)."""
        return self.run_dir / "workers.lock"

    @property
    def worker_heartbeat_file(self) -> Path:
        return self.run_dir / "worker.heartbeat"

    @property
    def backup_status_file(self) -> Path:
        """The last backup's result (JSON: finished, ok, dest, bytes, error): appliance.backup."""
        return self.run_dir / "backup-status.json"

    @property
    def nginx_conf(self) -> Path:
        return self.run_dir / "nginx" / "nginx.conf"

    @property
    def nginx_instance_file(self) -> Path:
        """The token nginx's health location answers, proving it is our nginx."""
        return self.run_dir / "nginx" / "instance"

    @property
    def orthanc_conf(self) -> Path:
        return self.run_dir / "orthanc" / "orthanc.json"

    def private_dirs(self) -> list[Path]:
        """Folders created with mode 0700."""
        return [self.secrets_dir, self.database_file.parent, self.tls_dir]

    def entry_dirs(self) -> list[Path]:
        """Folders with mode 0710: their group may enter, not list; others nothing.

        ``run`` gives them the group of nginx's workers when those run as another user
        (:mod:`appliance.supervise.nginx_user`): they pass through to the frames, logs and
        temporary files.
        """
        return [self.home, self.run_dir]

    def shared_dirs(self) -> list[Path]:
        """Folders created with mode 0755 (nginx's workers read some of them)."""
        return [
            self.spool_dir,
            self.frames_dir,
            self.orthanc_dir,
            self.log_dir,
            self.nginx_conf.parent,
            self.orthanc_conf.parent,
        ]
