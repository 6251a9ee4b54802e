"""Options shared by several commands, and the settings they produce."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlite_utils

from appliance.config import Settings, load_settings
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


def network_options(fn: F) -> F:
    """``--http-port``, ``--dicom-port`` and ``--bind``, overriding the settings file."""
    fn = click.option(
        "--bind",
        metavar="ADDR",
        default=None,
        help="Address nginx and the DICOM port listen on [default: 0.0.0.0].",
    )(fn)
    fn = click.option(
        "--dicom-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="DICOM port for modalities [default: 11112].",
    )(fn)
    fn = click.option(
        "--http-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Web port for browsers [default: 8080].",
    )(fn)
    return fn


def settings_from(home: Path | None, **overrides: Any) -> Settings:
    """Settings for ``home`` with command-line overrides applied, and the internal ports
    of the appliance running on it (one it had to move off a taken default)."""
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
