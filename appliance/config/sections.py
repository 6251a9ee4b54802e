"""The settings, one frozen dataclass per TOML table, each key declared once.

A section checks its values when built: each key's declared ``choices`` or ``minimum``
(:class:`~appliance.config.declare.Section`), then what one key cannot say alone
(``check``); :class:`~appliance.errors.ConfigError` names the table and key to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.config.declare import Section, setting
from appliance.config.hosts import is_host_name, is_loopback_host
from appliance.errors import ConfigError

# What may replace an archived instance (dcm4chee's overwrite policies, appliance.ingest.journal).
OVERWRITE_POLICIES = ("never", "same-source", "always")
RETENTION_BY = ("study_date", "received")
# Where Orthanc keeps its index: SQLite files in the home, or a PostgreSQL database
# (Debian's orthanc-postgresql plugin; appliance.store.orthanc_index).
ORTHANC_INDEXES = ("sqlite", "postgresql")
# How a confidential client proves itself at a token endpoint (RFC 7591
# token_endpoint_auth_method): the Authorization header, or the form body.
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# HH:MM, 24-hour clock.
_TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
# A remote defined in rclone.conf by name, then a path: never an on-the-fly ":backend,..."
# remote, whose connection string could carry credentials into logs and the status file.
_RCLONE_REMOTE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]*:.*$")
# A PostgreSQL database or role name the appliance accepts (no quoting needed anywhere).
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _require_url(table: str, key: str, url: str, example: str) -> None:
    if url and not url.startswith(("https://", "http://")):
        raise ConfigError(
            f"[{table}] {key} must start with https:// or http:// (got {url!r}), "
            f"for example {example}"
        )


@dataclass(frozen=True)
class NetworkSettings(Section):
    """``[network]``: where the public listeners are."""

    table = "network"

    bind: str = setting("0.0.0.0", "Address nginx and the DICOM receiver listen on")

    @property
    def probe_host(self) -> str:
        """The address local health checks use to reach the public listeners."""
        return "127.0.0.1" if self.bind in ("0.0.0.0", "", "::", "*") else self.bind


@dataclass(frozen=True)
class WebSettings(Section):
    """``[web]``: the web interface behind nginx."""

    table = "web"

    http_port: int = setting(8080, "HTTP port of the web interface (nginx)")
    https_port: int = setting(8443, "HTTPS port of the web interface (nginx)")
    redirect_to_https: bool = setting(
        True, "Redirect plain HTTP to HTTPS", doc="Loopback may still read `/api/health`"
    )
    # one STOW-RS request, all its parts
    max_upload_mb: int = setting(
        4096,
        "Largest STOW-RS upload, in MB",
        doc="Bounds nginx and the app; each object in it at most `[dicom] max_object_mb`",
    )
    public_url: str = setting(
        "",
        "Address users reach the web interface at, if a proxy is in front (share links)",
        doc=(
            "A proxy (e.g. Cloudflare) that talks plain HTTP to the appliance also needs "
            "`redirect_to_https = false`; see *Where users reach the appliance* above"
        ),
    )
    server_names: str = setting(
        "", "Extra host names users type (comma-separated); other Host headers get 421"
    )
    cloudflare: bool = setting(
        False,
        "Take the client address from CF-Connecting-IP on requests from Cloudflare's ranges",
        doc=(
            "Only on requests from Cloudflare's ranges (`bundled_nginx/cloudflare.conf.template`, "
            "refreshed by `packaging/refresh-cloudflare-ips.sh`)"
        ),
    )

    def check(self) -> None:
        _require_url("web", "public_url", self.public_url, "https://pacs.clinic.example")
        for name in self.server_name_list:
            if not is_host_name(name):
                raise ConfigError(
                    f"[web] server_names: {name!r} is not a host name "
                    "(letters, digits, '-' and '.', optionally starting with '*.')"
                )

    @property
    def server_name_list(self) -> list[str]:
        """``[web] server_names`` as a list."""
        return [n.strip() for n in self.server_names.replace(",", " ").split() if n.strip()]


@dataclass(frozen=True)
class DicomSettings(Section):
    """``[dicom]``: the DICOM receiver modalities send to."""

    table = "dicom"

    port: int = setting(11112, "DICOM port modalities send to")
    ae_title: str = setting("NEURONOVA", "AE title of the DICOM receiver")
    min_free_mb: int = setting(
        512, "Refuse new objects below this free space", doc="C-STORE then answers 0xA700"
    )
    warn_free_mb: int = setting(
        2048,
        "Warn (health report, log once) below this free space (at least 2 x min_free_mb)",
        doc="The health report warns and the receiver logs it once per crossing",
    )
    # e.g. 4,000 frames of 512x512 16-bit in one object
    max_object_mb: int = setting(
        2048,
        "Largest object accepted, in MB",
        doc="An object growing past this aborts its association",
    )
    # the worker inflates a Deflated object in memory
    max_inflated_mb: int = setting(
        256, "Largest Deflated object, inflated", doc="An object inflating past this gets 0xC000"
    )
    overwrite: str = setting(
        "same-source",
        "Who may replace an archived instance: never, same-source (its sender) or always",
        doc=(
            "`same-source`: an instance is replaced only by the source that sent it (the calling "
            "AE title, or the user for STOW-RS); no object may change an archived study's patient. "
            "Refused objects get 0x0124 and are held for an admin (`neuronova held`, Admin API "
            "`/api/admin/held`)"
        ),
        choices=OVERWRITE_POLICIES,
    )

    @property
    def warn_free_bytes(self) -> int:
        """Free space below which the appliance warns: ``warn_free_mb``, or twice
        ``min_free_mb`` when that is more, so the warning always precedes refusals."""
        return max(self.warn_free_mb, 2 * self.min_free_mb) * 1024**2


@dataclass(frozen=True)
class InternalSettings(Section):
    """``[internal]``: the loopback services nginx and the CLI reach."""

    table = "internal"

    app_port: int = setting(18081, "Loopback port of the web application")
    gate_port: int = setting(18083, "Loopback port of the app's frame gate")
    app_processes: int = setting(2, "Web app processes sharing its port")
    orthanc_port: int = setting(18042, "Loopback HTTP port of Orthanc")
    listen: str = setting(
        "127.0.0.1",
        "Address the web app and its frame gate listen on (0.0.0.0 only in a container)",
        doc="The cloud profile sets `0.0.0.0`",
    )
    app_host: str = setting(
        "127.0.0.1", "Host nginx reaches the web app at", doc="The cloud profile sets `app`"
    )
    orthanc_host: str = setting(
        "127.0.0.1",
        "Host the services reach Orthanc at; not loopback lets Orthanc take remote clients",
        doc=(
            "The cloud profile sets `orthanc`: Orthanc then takes clients of its internal network, "
            "still with credentials"
        ),
    )
    nginx_user: str = setting(
        "nobody",
        "User nginx's workers run as under root",
        doc=(
            "The home and `run/` (mode 0710) get its group so they can reach frames, logs and "
            "temporary files; a folder above the home that keeps them out stops `run` with an "
            "error naming it"
        ),
    )

    def check(self) -> None:
        for key, value in (
            ("listen", self.listen),
            ("app_host", self.app_host),
            ("orthanc_host", self.orthanc_host),
        ):
            if not is_host_name(value):
                raise ConfigError(f"[internal] {key}: {value!r} is not a host name or IPv4 address")

    @property
    def orthanc_remote(self) -> bool:
        """Whether Orthanc runs apart (its own container) and must take remote clients."""
        return not is_loopback_host(self.orthanc_host)


@dataclass(frozen=True)
class OrthancSettings(Section):
    """``[orthanc]``: where Orthanc keeps its index."""

    table = "orthanc"

    index: str = setting(
        "sqlite",
        "Orthanc's index: sqlite (in the home) or postgresql (a PostgreSQL server, below)",
        choices=ORTHANC_INDEXES,
    )
    db_host: str = setting("127.0.0.1", "PostgreSQL host (index = postgresql)")
    db_port: int = setting(5432, "PostgreSQL port")
    db_name: str = setting("orthanc", "PostgreSQL database of Orthanc's index")
    db_user: str = setting("neuronova", "PostgreSQL role Orthanc logs in as")
    db_password_file: str = setting(
        "secrets/orthanc-db-password",
        "File (mode 0600) holding that role's password, relative to the home; generated at "
        "first start when inside the home",
    )

    def check(self) -> None:
        if not is_host_name(self.db_host):
            raise ConfigError(
                f"[orthanc] db_host: {self.db_host!r} is not a host name or IPv4 address"
            )
        for key, value in (("db_name", self.db_name), ("db_user", self.db_user)):
            if not _DB_NAME.match(value):
                raise ConfigError(
                    f"[orthanc] {key} must be 1-63 letters, digits or '_' (got {value!r})"
                )


@dataclass(frozen=True)
class QueueSettings(Section):
    """``[queue]``: the task queue and its workers."""

    table = "queue"

    redis_url: str = setting(
        "", "Redis URL for the task queue (cloud profile)", doc="Instead of the SQLite queue file"
    )
    workers: int = setting(2, "Parallel transcoding workers")


@dataclass(frozen=True)
class LogsSettings(Section):
    """``[logs]``: rotation of the services' log files."""

    table = "logs"

    max_mb: int = setting(
        50,
        "Size in MiB at which a log file is rotated",
        doc="Every log in `HOME/logs`: the appliance's, each service's output, nginx's",
        minimum=1,
    )
    keep: int = setting(
        5,
        "Rotated files kept of each log (at least 1)",
        doc="`name.log.1` is the newest",
        minimum=1,
    )


@dataclass(frozen=True)
class RetentionSettings(Section):
    """``[retention]``: deleting old studies."""

    table = "retention"

    years: int = setting(
        0,
        "Delete studies older than this many years, hourly (0: keep everything)",
        doc="The worker applies it hourly; `neuronova retention --dry-run` lists what would go",
        minimum=0,
    )
    by: str = setting(
        "study_date",
        "Age from study_date or received (date)",
        doc="A study without a StudyDate is never deleted by `study_date`",
        choices=RETENTION_BY,
    )


@dataclass(frozen=True)
class FhirSettings(Section):
    """``[fhir]``: pushing stored studies to a FHIR server."""

    table = "fhir"

    push_url: str = setting(
        "",
        "FHIR server base URL each stored study is pushed to as ImagingStudy (empty: off; "
        "credentials: HOME/secrets/fhir-push-authorization)",
    )

    def check(self) -> None:
        _require_url("fhir", "push_url", self.push_url, "https://fhir.clinic.example/fhir")


@dataclass(frozen=True)
class BackupSettings(Section):
    """``[backup]``: the daily backup and its off-site copy."""

    table = "backup"

    destination: str = setting(
        "",
        "Absolute folder the daily backup goes into, outside the home (empty: no daily backup)",
    )
    time: str = setting("02:30", "Time of day of the daily backup, HH:MM in UTC")
    keep_daily: int = setting(7, "Keep the newest snapshot of N days", minimum=1)
    keep_weekly: int = setting(4, "and of M ISO weeks (0: none)", minimum=0)
    remote: str = setting(
        "", "rclone remote path each backup is copied to, e.g. gcs:bucket/neuronova (empty: none)"
    )
    rclone_config: str = setting(
        "rclone/rclone.conf",
        "The rclone.conf (mode 0600) defining that remote; relative to the home",
    )

    def check(self) -> None:
        if not _TIME_OF_DAY.match(self.time):
            raise ConfigError(f"[backup] time must be HH:MM in UTC (got {self.time!r})")
        if self.destination and not Path(self.destination).is_absolute():
            raise ConfigError(
                f"[backup] destination must be an absolute path (got {self.destination!r})"
            )
        if self.remote and not _RCLONE_REMOTE.match(self.remote):
            raise ConfigError(
                f"[backup] remote must be NAME:PATH with NAME a remote defined in "
                f"rclone_config (got {self.remote!r}); put credentials there, not here"
            )
        if self.remote and not self.destination:
            raise ConfigError("[backup] remote needs [backup] destination (copied from there)")

    @property
    def hour_minute(self) -> tuple[int, int]:
        """``[backup] time`` as (hour, minute), UTC."""
        hour, minute = self.time.split(":")
        return int(hour), int(minute)
