"""Setting up a data home: folders, settings file, secrets, database, first admin."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from appliance.config import Settings, render_toml
from appliance.db import open_database
from appliance.errors import NotInitializedError
from appliance.layout import HomeLayout
from appliance.migrations import migrate, read_record, refuse_newer
from appliance.security import users
from appliance.security.keys import load_or_create_secret
from appliance.security.tls import ensure_certificate
from appliance.store.orthanc_index import ensure_password
from appliance.version import current as current_version

FIRST_ADMIN = "admin"


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did; ``admin_password`` and ``backup_key`` are set only when the
    admin, or the backup key, was just created (to be shown once, never logged)."""

    created: bool
    admin_password: str | None
    backup_key: str | None = None
    migrations: tuple[str, ...] = ()  # "N: name" of each migration this start ran


def init_home(settings: Settings) -> InitResult:
    """Create whatever the data home lacks and run its pending migrations
    (:mod:`appliance.migrations`); safe to run again (it changes nothing then).

    Everything happens under the home's init lock (a blocking ``flock``), so that two
    starts at once (containers sharing one home volume) set up and migrate it once.
    Raises :class:`~appliance.errors.HomeTooNewError` on a home a newer version migrated.
    """
    layout = settings.layout
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.init_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _init_locked(settings, layout)
    finally:
        os.close(fd)


def _init_locked(settings: Settings, layout: HomeLayout) -> InitResult:
    refuse_newer(layout, read_record(layout))
    created = not settings.config_file.exists()
    make_home_dirs(layout)
    if created:
        settings.config_file.write_text(render_toml(settings))
    load_or_create_secret(layout.jwt_key_file, 48)
    load_or_create_secret(layout.orthanc_password_file, 24)
    load_or_create_secret(layout.status_key_file, 32)
    ensure_password(settings)
    new_key = not layout.backup_key_file.exists()
    backup_key = load_or_create_secret(layout.backup_key_file, 32)
    ensure_certificate(layout)
    ran = migrate(layout, current_version())
    db = open_database(layout.database_file)
    admin_password = None
    if db["users"].count == 0:
        admin_password = users.generate_password()
        users.create_user(db, FIRST_ADMIN, "admin", admin_password)
    db.close()
    return InitResult(created=created, admin_password=admin_password,
                      backup_key=backup_key if new_key else None,
                      migrations=tuple(f"{m.number}: {m.name}" for m in ran))  # fmt: skip


def require_initialized(settings: Settings) -> HomeLayout:
    """The layout of an initialized home; :class:`NotInitializedError` otherwise, and
    :class:`~appliance.errors.HomeTooNewError` when a newer version migrated it."""
    layout = settings.layout
    if not layout.database_file.exists():
        raise NotInitializedError(
            f"{settings.home} is not a NeuroNova home yet. "
            f"Run `neuronova init --home {settings.home}` first."
        )
    refuse_newer(layout, read_record(layout))
    return layout


def make_home_dirs(layout: HomeLayout) -> None:
    """Create the home's folders with their modes (0710 entry, 0700 private, 0755 shared)."""
    for paths, mode in ((layout.entry_dirs(), 0o710), (layout.private_dirs(), 0o700)):
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)
    for path in layout.shared_dirs():
        path.mkdir(parents=True, exist_ok=True)
