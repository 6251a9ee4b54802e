"""Settings: where the data home is, which ports to use, and how they are overridden.

Precedence, lowest to highest: built-in defaults, ``neuronova.toml`` in the data home,
``NEURONOVA_<SECTION>_<KEY>`` environment variables, command-line options.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from appliance.errors import ConfigError
from appliance.security.users import ROLES

CONFIG_FILENAME = "neuronova.toml"
# What may replace an archived instance (dcm4chee's overwrite policies, appliance.ingest.journal).
OVERWRITE_POLICIES = ("never", "same-source", "always")
RETENTION_BY = ("study_date", "received")
# Where Orthanc keeps its index: SQLite files in the home, or a PostgreSQL database
# (Debian's orthanc-postgresql plugin; appliance.store.orthanc_index).
ORTHANC_INDEXES = ("sqlite", "postgresql")
# How a confidential client proves itself at a token endpoint (RFC 7591
# token_endpoint_auth_method): the Authorization header, or the form body.
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
HOME_ENV = "NEURONOVA_HOME"
SYSTEM_HOME = Path("/var/lib/neuronova")


@dataclass(frozen=True)
class Field:
    """One setting: its TOML section and key, its attribute and its type."""

    section: str
    key: str
    attr: str
    type: type
    help: str

    @property
    def env_var(self) -> str:
        return f"NEURONOVA_{self.section}_{self.key}".upper()


FIELDS: tuple[Field, ...] = (
    Field("network", "bind", "bind", str, "Address nginx and the DICOM receiver listen on"),
    Field("web", "http_port", "http_port", int, "HTTP port of the web interface (nginx)"),
    Field("web", "https_port", "https_port", int, "HTTPS port of the web interface (nginx)"),
    Field("web", "redirect_to_https", "redirect_to_https", bool, "Redirect plain HTTP to HTTPS"),
    Field("web", "max_upload_mb", "max_upload_mb", int, "Largest STOW-RS upload, in MB"),
    Field(
        "web",
        "public_url",
        "public_url",
        str,
        "Address users reach the web interface at, if a proxy is in front (share links)",
    ),
    Field(
        "web",
        "server_names",
        "server_names",
        str,
        "Extra host names users type (comma-separated); other Host headers get 421",
    ),
    Field(
        "web",
        "cloudflare",
        "cloudflare",
        bool,
        "Take the client address from CF-Connecting-IP on requests from Cloudflare's ranges",
    ),
    Field("dicom", "port", "dicom_port", int, "DICOM port modalities send to"),
    Field("dicom", "ae_title", "ae_title", str, "AE title of the DICOM receiver"),
    Field("dicom", "min_free_mb", "min_free_mb", int, "Refuse new objects below this free space"),
    Field(
        "dicom",
        "warn_free_mb",
        "warn_free_mb",
        int,
        "Warn (health report, log once) below this free space (at least 2 x min_free_mb)",
    ),
    Field("dicom", "max_object_mb", "max_object_mb", int, "Largest object accepted, in MB"),
    Field("dicom", "max_inflated_mb", "max_inflated_mb", int, "Largest Deflated object, inflated"),
    Field(
        "dicom",
        "overwrite",
        "overwrite",
        str,
        "Who may replace an archived instance: never, same-source (its sender) or always",
    ),
    Field("internal", "app_port", "app_port", int, "Loopback port of the web application"),
    Field("internal", "gate_port", "gate_port", int, "Loopback port of the app's frame gate"),
    Field("internal", "app_processes", "app_processes", int, "Web app processes sharing its port"),
    Field("internal", "orthanc_port", "orthanc_port", int, "Loopback HTTP port of Orthanc"),
    Field(
        "internal",
        "listen",
        "internal_listen",
        str,
        "Address the web app and its frame gate listen on (0.0.0.0 only in a container)",
    ),
    Field("internal", "app_host", "app_host", str, "Host nginx reaches the web app at"),
    Field(
        "internal",
        "orthanc_host",
        "orthanc_host",
        str,
        "Host the services reach Orthanc at; not loopback lets Orthanc take remote clients",
    ),
    Field("internal", "nginx_user", "nginx_user", str, "User nginx's workers run as under root"),
    Field(
        "orthanc",
        "index",
        "orthanc_index",
        str,
        "Orthanc's index: sqlite (in the home) or postgresql (a PostgreSQL server, below)",
    ),
    Field("orthanc", "db_host", "orthanc_db_host", str, "PostgreSQL host (index = postgresql)"),
    Field("orthanc", "db_port", "orthanc_db_port", int, "PostgreSQL port"),
    Field("orthanc", "db_name", "orthanc_db_name", str, "PostgreSQL database of Orthanc's index"),
    Field("orthanc", "db_user", "orthanc_db_user", str, "PostgreSQL role Orthanc logs in as"),
    Field(
        "orthanc",
        "db_password_file",
        "orthanc_db_password_file",
        str,
        "File (mode 0600) holding that role's password, relative to the home; generated at "
        "first start when inside the home",
    ),
    Field("queue", "redis_url", "redis_url", str, "Redis URL for the task queue (cloud profile)"),
    Field("queue", "workers", "workers", int, "Parallel transcoding workers"),
    Field("logs", "max_mb", "log_max_mb", int, "Size in MiB at which a log file is rotated"),
    Field(
        "retention",
        "years",
        "retention_years",
        int,
        "Delete studies older than this many years, hourly (0: keep everything)",
    ),
    Field("retention", "by", "retention_by", str, "Age from study_date or received (date)"),
    Field("logs", "keep", "log_keep", int, "Rotated files kept of each log (at least 1)"),
    Field(
        "fhir",
        "push_url",
        "fhir_push_url",
        str,
        "FHIR server base URL each stored study is pushed to as ImagingStudy (empty: off; "
        "credentials: HOME/secrets/fhir-push-authorization)",
    ),
    Field("oidc", "issuer", "oidc_issuer", str, "OpenID Connect issuer URL for staff sign-in"),
    Field("oidc", "client_id", "oidc_client_id", str, "Client id registered at the provider"),
    Field(
        "oidc",
        "token_auth",
        "oidc_token_auth",
        str,
        "How the client secret goes to the token endpoint: client_secret_basic (header) "
        "or client_secret_post (form), as registered at the provider",
    ),
    Field("oidc", "display_name", "oidc_display_name", str, "Button text: Sign in with ..."),
    Field("oidc", "scopes", "oidc_scopes", str, "Scopes asked for (space-separated)"),
    Field("oidc", "username_claim", "oidc_username_claim", str, "Claim that names the user"),
    Field("oidc", "role_claim", "oidc_role_claim", str, "Claim holding groups or roles"),
    Field(
        "oidc",
        "role_map",
        "oidc_role_map",
        str,
        "Claim value = appliance role, comma-separated (the first that matches wins)",
    ),
    Field("oidc", "default_role", "oidc_default_role", str, "Role when none maps (empty: refuse)"),
    Field("oidc", "auto_create", "oidc_auto_create", bool, "Create users at first sign-in"),
    Field(
        "oidc",
        "require_approval",
        "oidc_require_approval",
        bool,
        "New single sign-on users wait until an admin enables them",
    ),
    Field("smart", "issuers", "smart_issuers", str, "EHR FHIR base URLs that may launch the app"),
    Field("smart", "client_id", "smart_client_id", str, "Client id registered at the EHR"),
    Field(
        "smart",
        "token_auth",
        "smart_token_auth",
        str,
        "client_secret_basic or client_secret_post (OpenEMR's confidential apps: post)",
    ),
    Field(
        "smart",
        "identifier_system",
        "smart_identifier_system",
        str,
        "Patient.identifier system whose value is the DICOM Patient ID (empty: the first)",
    ),
    Field("smart", "username_claim", "smart_username_claim", str, "Claim naming the EHR user"),
    Field("smart", "role_claim", "smart_role_claim", str, "Claim the role is mapped from"),
    Field("smart", "role_map", "smart_role_map", str, "Claim value = role, comma-separated"),
    Field("smart", "default_role", "smart_default_role", str, "Role when none maps (or empty)"),
    Field(
        "backup",
        "destination",
        "backup_destination",
        str,
        "Absolute folder the daily backup goes into, outside the home (empty: no daily backup)",
    ),
    Field("backup", "time", "backup_time", str, "Time of day of the daily backup, HH:MM in UTC"),
    Field("backup", "keep_daily", "backup_keep_daily", int, "Keep the newest snapshot of N days"),
    Field("backup", "keep_weekly", "backup_keep_weekly", int, "and of M ISO weeks (0: none)"),
    Field(
        "backup",
        "remote",
        "backup_remote",
        str,
        "rclone remote path each backup is copied to, e.g. gcs:bucket/neuronova (empty: none)",
    ),
    Field(
        "backup",
        "rclone_config",
        "backup_rclone_config",
        str,
        "The rclone.conf (mode 0600) defining that remote; relative to the home",
    ),
)
# HH:MM, 24-hour clock.
_TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
# A remote defined in rclone.conf by name, then a path: never an on-the-fly ":backend,..."
# remote, whose connection string could carry credentials into logs and the status file.
_RCLONE_REMOTE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]*:.*$")


# A PostgreSQL database or role name the appliance accepts (no quoting needed anywhere).
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


def is_host_name(text: str) -> bool:
    """Whether ``text`` is a DNS host name (or ``*.`` wildcard), safe in nginx's config."""
    return len(text) <= 253 and bool(_HOST_NAME.match(text.lower()))


@dataclass(frozen=True)
class Settings:
    """The appliance's settings; every path derives from ``home``."""

    home: Path
    bind: str = "0.0.0.0"
    http_port: int = 8080
    https_port: int = 8443
    redirect_to_https: bool = True
    max_upload_mb: int = 4096  # one STOW-RS request, all its parts
    public_url: str = ""
    server_names: str = ""
    dicom_port: int = 11112
    ae_title: str = "NEURONOVA"
    min_free_mb: int = 512
    warn_free_mb: int = 2048
    max_object_mb: int = 2048  # e.g. 4,000 frames of 512x512 16-bit in one object
    max_inflated_mb: int = 256  # the worker inflates a Deflated object in memory
    overwrite: str = "same-source"
    app_port: int = 18081
    gate_port: int = 18083
    app_processes: int = 2
    orthanc_port: int = 18042
    internal_listen: str = "127.0.0.1"
    app_host: str = "127.0.0.1"
    orthanc_host: str = "127.0.0.1"
    cloudflare: bool = False
    nginx_user: str = "nobody"
    orthanc_index: str = "sqlite"
    orthanc_db_host: str = "127.0.0.1"
    orthanc_db_port: int = 5432
    orthanc_db_name: str = "orthanc"
    orthanc_db_user: str = "neuronova"
    orthanc_db_password_file: str = "secrets/orthanc-db-password"
    redis_url: str = ""
    workers: int = 2
    log_max_mb: int = 50
    log_keep: int = 5
    retention_years: int = 0
    retention_by: str = "study_date"
    fhir_push_url: str = ""
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_token_auth: str = "client_secret_basic"
    oidc_display_name: str = "single sign-on"
    oidc_scopes: str = "openid profile email"
    oidc_username_claim: str = "preferred_username"
    oidc_role_claim: str = "groups"
    oidc_role_map: str = ""
    oidc_default_role: str = ""
    oidc_auto_create: bool = True
    oidc_require_approval: bool = False
    smart_issuers: str = ""
    smart_client_id: str = ""
    smart_token_auth: str = "client_secret_basic"
    smart_identifier_system: str = ""
    smart_username_claim: str = "preferred_username"
    smart_role_claim: str = "fhirUser"
    smart_role_map: str = ""
    smart_default_role: str = ""
    backup_destination: str = ""
    backup_time: str = "02:30"
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    backup_remote: str = ""
    backup_rclone_config: str = "rclone/rclone.conf"

    def __post_init__(self) -> None:
        if self.log_max_mb < 1 or self.log_keep < 1:
            raise ConfigError(
                f"[logs] max_mb and keep must be at least 1 "
                f"(got max_mb = {self.log_max_mb}, keep = {self.log_keep})"
            )
        if self.retention_years < 0 or self.retention_by not in RETENTION_BY:
            raise ConfigError(
                f"[retention] years must be 0 (off) or more and by one of "
                f"{', '.join(RETENTION_BY)} (got {self.retention_years}, {self.retention_by!r})"
            )
        self._check_backup()
        if self.overwrite not in OVERWRITE_POLICIES:
            raise ConfigError(
                f"[dicom] overwrite must be one of {', '.join(OVERWRITE_POLICIES)} "
                f"(got {self.overwrite!r})"
            )
        if self.fhir_push_url and not self.fhir_push_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"[fhir] push_url must start with https:// or http:// "
                f"(got {self.fhir_push_url!r}), for example https://fhir.clinic.example/fhir"
            )
        if self.public_url and not self.public_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"[web] public_url must start with https:// (got {self.public_url!r}), "
                "for example https://pacs.clinic.example"
            )
        self._check_orthanc_index()
        for key in ("internal_listen", "app_host", "orthanc_host"):
            if not is_host_name(getattr(self, key)):
                raise ConfigError(
                    f"[internal] {key.removeprefix('internal_')}: {getattr(self, key)!r} is not "
                    "a host name or IPv4 address"
                )
        for name in self.server_name_list:
            if not is_host_name(name):
                raise ConfigError(
                    f"[web] server_names: {name!r} is not a host name "
                    "(letters, digits, '-' and '.', optionally starting with '*.')"
                )
        self._check_sign_in()

    def _check_backup(self) -> None:
        if not _TIME_OF_DAY.match(self.backup_time):
            raise ConfigError(f"[backup] time must be HH:MM in UTC (got {self.backup_time!r})")
        if self.backup_keep_daily < 1 or self.backup_keep_weekly < 0:
            raise ConfigError(
                "[backup] keep_daily must be at least 1 and keep_weekly 0 or more "
                f"(got {self.backup_keep_daily}, {self.backup_keep_weekly})"
            )
        if self.backup_destination and not Path(self.backup_destination).is_absolute():
            raise ConfigError(
                f"[backup] destination must be an absolute path (got {self.backup_destination!r})"
            )
        if self.backup_remote and not _RCLONE_REMOTE.match(self.backup_remote):
            raise ConfigError(
                f"[backup] remote must be NAME:PATH with NAME a remote defined in "
                f"rclone_config (got {self.backup_remote!r}); put credentials there, not here"
            )
        if self.backup_remote and not self.backup_destination:
            raise ConfigError("[backup] remote needs [backup] destination (copied from there)")

    def _check_orthanc_index(self) -> None:
        if self.orthanc_index not in ORTHANC_INDEXES:
            raise ConfigError(
                f"[orthanc] index must be one of {', '.join(ORTHANC_INDEXES)} "
                f"(got {self.orthanc_index!r})"
            )
        if not is_host_name(self.orthanc_db_host):
            raise ConfigError(
                f"[orthanc] db_host: {self.orthanc_db_host!r} is not a host name or IPv4 address"
            )
        for key in ("db_name", "db_user"):
            if not _DB_NAME.match(getattr(self, f"orthanc_{key}")):
                raise ConfigError(
                    f"[orthanc] {key} must be 1-63 letters, digits or '_' "
                    f"(got {getattr(self, f'orthanc_{key}')!r})"
                )

    @property
    def orthanc_db_password_path(self) -> Path:
        """``[orthanc] db_password_file``, relative to the home unless absolute."""
        return self.home / self.orthanc_db_password_file

    @property
    def backup_hour_minute(self) -> tuple[int, int]:
        """``[backup] time`` as (hour, minute), UTC."""
        hour, minute = self.backup_time.split(":")
        return int(hour), int(minute)

    @property
    def rclone_config_path(self) -> Path:
        """``[backup] rclone_config``, relative to the home unless absolute."""
        return self.home / self.backup_rclone_config

    def _check_sign_in(self) -> None:
        for section in ("oidc", "smart"):
            parse_role_map(getattr(self, f"{section}_role_map"), section)
            method = getattr(self, f"{section}_token_auth")
            if method not in TOKEN_AUTH_METHODS:
                raise ConfigError(
                    f"[{section}] token_auth must be one of {', '.join(TOKEN_AUTH_METHODS)} "
                    f"(got {method!r}): the method the client was registered with"
                )
            default = getattr(self, f"{section}_default_role")
            if default and default not in ROLES:
                raise ConfigError(
                    f"[{section}] default_role: {default!r} is not a role ({', '.join(ROLES)})"
                )
        for url in (self.oidc_issuer, *self.smart_issuer_list):
            if url and not url.startswith(("https://", "http://")):
                raise ConfigError(f"[oidc]/[smart] issuer {url!r} must start with https://")

    @property
    def oidc_enabled(self) -> bool:
        """Whether staff may sign in with the OpenID Connect provider."""
        return bool(self.oidc_issuer and self.oidc_client_id)

    @property
    def smart_issuer_list(self) -> list[str]:
        """``[smart] issuers`` as a list, without trailing slashes."""
        return [u.strip().rstrip("/") for u in self.smart_issuers.replace(",", " ").split()]

    @property
    def server_name_list(self) -> list[str]:
        """``[web] server_names`` as a list."""
        return [n.strip() for n in self.server_names.replace(",", " ").split() if n.strip()]

    @property
    def orthanc_remote(self) -> bool:
        """Whether Orthanc runs apart (its own container) and must take remote clients."""
        return not is_loopback_host(self.orthanc_host)

    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_FILENAME

    @property
    def probe_host(self) -> str:
        """The address local health checks use to reach the public listeners."""
        return "127.0.0.1" if self.bind in ("0.0.0.0", "", "::", "*") else self.bind

    @property
    def warn_free_bytes(self) -> int:
        """Free space below which the appliance warns: ``warn_free_mb``, or twice
        ``min_free_mb`` when that is more, so the warning always precedes refusals."""
        return max(self.warn_free_mb, 2 * self.min_free_mb) * 1024**2

    def as_toml_dict(self) -> dict[str, dict[str, Any]]:
        """The settings grouped by TOML section, as ``config show`` prints them."""
        out: dict[str, dict[str, Any]] = {}
        for field in FIELDS:
            out.setdefault(field.section, {})[field.key] = getattr(self, field.attr)
        return out


def parse_role_map(text: str, section: str = "oidc") -> list[tuple[str, str]]:
    """``"value = role, value2 = role2"`` as ``[(value, role), ...]``, in order.

    :class:`ConfigError` naming ``[section] role_map`` for an item without ``=`` or with a
    role that is not one of the appliance's.
    """
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, role = (part.strip() for part in item.rpartition("="))
        if not sep or not value or role not in ROLES:
            raise ConfigError(
                f"[{section}] role_map: {item!r} must be 'claim value = role' with a role of "
                f"{', '.join(ROLES)}"
            )
        pairs.append((value, role))
    return pairs


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (``localhost`` or 127.0.0.0/8)."""
    return host == "localhost" or host.startswith("127.")


def default_home() -> Path:
    """The data home: ``$NEURONOVA_HOME``, else the platform's user data directory.

    For root it is :data:`SYSTEM_HOME` instead (unless a home already exists in root's
    data directory): nginx's workers then run as another user (``[internal]
    nginx_user``), who cannot enter ``/root``.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    user_home = Path(platformdirs.user_data_dir("neuronova", appauthor=False))
    if os.geteuid() == 0 and not (user_home / CONFIG_FILENAME).exists():
        return SYSTEM_HOME
    return user_home


def _coerce(field: Field, value: Any, origin: str) -> Any:
    if field.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif field.type is int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            pass
        else:
            if field.attr.endswith("port") and not 0 < number < 65536:
                raise ConfigError(f"{origin}: {field.key} must be a port between 1 and 65535")
            return number
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{origin}: {field.key} must be of type {field.type.__name__}, got {value!r}")


def _from_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix or delete the file.") from exc
    values: dict[str, Any] = {}
    known = {(f.section, f.key): f for f in FIELDS}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section]")
        for key, value in table.items():
            field = known.get((section, key))
            if field is None:
                raise ConfigError(f"{path}: unknown setting [{section}] {key}")
            values[field.attr] = _coerce(field, value, str(path))
    return values


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        f.attr: _coerce(f, environ[f.env_var], f.env_var) for f in FIELDS if f.env_var in environ
    }


def load_settings(
    home: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings for a data home.

    Parameters
    ----------
    home
        The data home; :func:`default_home` when ``None``.
    overrides
        Attribute values from the command line; ``None`` values are ignored.
    environ
        The environment to read overrides from (``os.environ`` by default).
    """
    home = (home or default_home()).expanduser().resolve()
    values = _from_toml(home / CONFIG_FILENAME)
    values.update(_from_env(os.environ if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(home=home, **values)


def render_toml(settings: Settings) -> str:
    """The commented TOML file written at ``init``."""
    lines = ["# NeuroNova settings. Environment variables NEURONOVA_<SECTION>_<KEY> override them."]
    for section, table in settings.as_toml_dict().items():
        lines.append(f"\n[{section}]")
        for key, value in table.items():
            field = next(f for f in FIELDS if f.section == section and f.key == key)
            lines.append(f"# {field.help}")
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
