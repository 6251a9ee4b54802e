"""Setting up a data home: folders, settings file, secrets, database, first admin."""

from __future__ import annotations

import os
from dataclasses import dataclass

from appliance.config import Settings, render_toml
from appliance.db import open_database
from appliance.errors import NotInitializedError
from appliance.layout import HomeLayout
from appliance.security import users
from appliance.security.keys import load_or_create_secret
from appliance.security.tls import ensure_certificate

FIRST_ADMIN = "admin"


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did; ``admin_password`` and ``backup_key`` are set only when the
    admin, or the backup key, was just created (to be shown once, never logged)."""

    created: bool
    admin_password: str | None
    backup_key: str | None = None


def init_home(settings: Settings) -> InitResult:
    """Create whatever the data home lacks; safe to run again (it changes nothing then)."""
    layout = HomeLayout(settings.home)
    created = not settings.config_file.exists()
    make_home_dirs(layout)
    if created:
        settings.config_file.write_text(render_toml(settings))
    load_or_create_secret(layout.jwt_key_file, 48)
    load_or_create_secret(layout.orthanc_password_file, 24)
    load_or_create_secret(layout.status_key_file, 32)
    new_key = not layout.backup_key_file.exists()
    backup_key = load_or_create_secret(layout.backup_key_file, 32)
    ensure_certificate(layout)
    db = open_database(layout.database_file)
    admin_password = None
    if db["users"].count == 0:
        admin_password = users.generate_password()
        users.create_user(db, FIRST_ADMIN, "admin", admin_password)
    db.close()
    return InitResult(created=created, admin_password=admin_password,
                      backup_key=backup_key if new_key else None)  # fmt: skip


def require_initialized(settings: Settings) -> HomeLayout:
    """The layout of an initialized home; :class:`NotInitializedError` otherwise."""
    layout = HomeLayout(settings.home)
    if not layout.database_file.exists():
        raise NotInitializedError(
            f"{settings.home} is not a NeuroNova home yet. "
            f"Run `neuronova init --home {settings.home}` first."
        )
    return layout


def make_home_dirs(layout: HomeLayout) -> None:
    """Create the home's folders with their modes (0710 entry, 0700 private, 0755 shared)."""
    for paths, mode in ((layout.entry_dirs(), 0o710), (layout.private_dirs(), 0o700)):
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)
    for path in layout.shared_dirs():
        path.mkdir(parents=True, exist_ok=True)
