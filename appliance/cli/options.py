"""Options shared by several commands, and the settings they produce."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlite_utils

from appliance.config import Declared, Settings, declared_setting, load_settings
from appliance.db import open_database
from appliance.home import require_initialized
from appliance.security import audit
from appliance.supervise.ports import live_ports

F = TypeVar("F", bound=Callable[..., Any])


def home_option(fn: F) -> F:
    """``--home DIR``: the data home (default: $NEURONOVA_HOME or the user data folder)."""
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data home holding settings, secrets, database and images "
        "[default: $NEURONOVA_HOME, or ~/.local/share/neuronova; /var/lib/neuronova for root].",
    )(fn)


class Since(click.ParamType):
    """A duration back from now (``30m``, ``1h``, ``2d``) or an ISO 8601 time."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The ISO time (UTC, seconds) that audit timestamps are compared with."""
        try:
            return audit.since_iso(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def since_option(what: str) -> Callable[[F], F]:
    """``--since WHEN``: only ``what`` (events, lines) since a time or a duration ago."""
    return click.option(
        "--since",
        type=Since(),
        default=None,
        help=f"Only {what} since then: 30m, 1h, 2d or an ISO time (UTC unless an offset is given).",
    )


def limit_option(default: int, help_text: str) -> Callable[[F], F]:
    """``--limit N`` (1-10000): how many rows a listing shows at most."""
    return click.option(
        "--limit",
        type=click.IntRange(1, 10000),
        metavar="N",
        default=default,
        show_default=True,
        help=help_text,
    )


# The settings ``init`` and ``run`` also take as options (highest precedence): by option.
NETWORK_OPTIONS = {
    "--http-port": "web.http_port",
    "--dicom-port": "dicom.port",
    "--bind": "network.bind",
}


def network_options(fn: F) -> F:
    """``--http-port``, ``--dicom-port`` and ``--bind``, overriding the settings file; their
    help and default come from the settings' declaration. :func:`network_overrides` reads
    them back."""
    for flag, path in reversed(NETWORK_OPTIONS.items()):
        fn = _setting_option(flag, declared_setting(path))(fn)
    return fn


def _setting_option(flag: str, declared: Declared) -> Callable[[F], F]:
    is_port = declared.key.endswith("port")
    return click.option(
        flag,
        type=click.IntRange(1, 65535) if is_port else declared.type,
        metavar="PORT" if is_port else "ADDR",
        default=None,
        help=f"{declared.help} [default: {declared.default}; setting [{declared.section}] "
        f"{declared.key}, or {declared.env_var}].",
    )


def network_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The values of :func:`network_options` (click's keyword arguments) by ``section.key``."""
    return {
        path: options[flag.lstrip("-").replace("-", "_")] for flag, path in NETWORK_OPTIONS.items()
    }


def settings_from(home: Path | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings for ``home`` with command-line overrides (by ``section.key``) applied, and the
    internal ports of the appliance running on it (one it had to move off a taken default)."""
    return live_ports(load_settings(home, overrides))


def home_database(home: Path | None) -> sqlite_utils.Database:
    """The database of an initialized data home (a clear error if it is not initialized)."""
    return open_database(require_initialized(settings_from(home)).database_file)


def cli_user() -> str:
    """Who made a change from the command line, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (e.g. in a container)
        return f"cli:uid{os.getuid()}"


def audit_admin_change(db: sqlite_utils.Database, action: str, **detail: object) -> None:
    """Record an admin's change made from the command line in the audit trail."""
    audit.record(db, audit.ADMIN_CHANGE, username=cli_user(), action=action, **detail)
