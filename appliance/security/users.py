"""User accounts and passwords (Argon2id; older scrypt hashes are still verified)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

import sqlite_utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.db import now_iso, transaction
from appliance.errors import UserError
from appliance.roles import ROLES

SHARERS = ("admin", "radiologist")  # the roles that may create share links
MIN_PASSWORD_LENGTH = 10
USERNAME_MAX = 64

# Argon2id with OWASP's minimum: 19 MiB, 2 passes, 1 lane (~60 ms to hash here).
_ARGON2 = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _ARGON2.hash("not a password of anyone")


def hash_password(password: str) -> str:
    """Hash ``password`` with Argon2id (PHC string ``$argon2id$v=19$m=...``)."""
    return _ARGON2.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against an Argon2id hash or a legacy ``scrypt$N$r$p$salt$hash``."""
    if encoded.startswith("scrypt$"):
        return _verify_scrypt(password, encoded)
    try:
        return _ARGON2.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(encoded: str) -> bool:
    """Whether a verified hash is of an older scheme or cost (rehash it at login)."""
    return encoded.startswith("scrypt$") or _ARGON2.check_needs_rehash(encoded)


def dummy_verify(password: str) -> None:
    """Spend the time of one verification, so unknown users cannot be told apart by timing."""
    verify_password(password, _DUMMY_HASH)


def generate_password() -> str:
    """A random password people can type: 4 groups of 4 characters."""
    alphabet = "abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


def _verify_scrypt(password: str, encoded: str) -> bool:
    """Hashes made before Argon2id: ``scrypt$N$r$p$salt$hash`` (base64 fields)."""
    try:
        _, n, r, p, salt, digest = encoded.split("$")
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=256 * 1024 * 1024,
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def validate_username(username: str) -> None:
    """Refuse names that are empty, too long or contain odd characters."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
    if not username or len(username) > USERNAME_MAX or not set(username) <= allowed:
        raise UserError(
            f"invalid user name {username!r}: "
            f"use 1-{USERNAME_MAX} letters, digits, '.', '_', '-' or '@'"
        )


def validate_role(role: str) -> None:
    """Refuse roles other than :data:`ROLES`."""
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


def validate_password(password: str) -> None:
    """Refuse passwords shorter than :data:`MIN_PASSWORD_LENGTH`."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")


def create_user(db: sqlite_utils.Database, username: str, role: str, password: str) -> None:
    """Add a user; :class:`UserError` if the name is taken or anything is invalid."""
    validate_username(username)
    validate_role(role)
    validate_password(password)
    if get_user(db, username) is not None:
        raise UserError(f"user {username!r} already exists")
    db["users"].insert(
        {
            "username": username,
            "role": role,
            "password_hash": hash_password(password),
            "disabled": 0,
            "created_at": now_iso(),
            "last_login": None,
        }
    )


def get_user(db: sqlite_utils.Database, username: str) -> dict[str, Any] | None:
    """The user's row, or ``None``."""
    rows = list(db["users"].rows_where("username = ?", [username]))
    return rows[0] if rows else None


def require_user(db: sqlite_utils.Database, username: str) -> dict[str, Any]:
    """The user's row; :class:`UserError` naming the user if absent."""
    user = get_user(db, username)
    if user is None:
        raise UserError(f"no user named {username!r} (see `neuronova user list`)")
    return user


def list_users(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """All users without their password hashes, sorted by name."""
    return [
        {k: v for k, v in row.items() if k != "password_hash"}
        for row in db["users"].rows_where(order_by="username")
    ]


def update_user(
    db: sqlite_utils.Database,
    username: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> None:
    """Change a user's role, disabled flag or password.

    Disabling a user, or giving them a role that may not share, revokes their share links.
    """
    require_user(db, username)
    changes: dict[str, Any] = {}
    if role is not None:
        validate_role(role)
        changes["role"] = role
    if disabled is not None:
        changes["disabled"] = int(disabled)
        if not disabled:
            changes["pending"] = 0  # enabling a single sign-on user approves them
    if password is not None:
        validate_password(password)
        changes["password_hash"] = hash_password(password)
    if changes:
        with transaction(db):  # the change and the revoked shares together
            db["users"].update(username, changes)
            if disabled or (role is not None and role not in SHARERS):
                revoke_user_shares(db, username)


def revoke_user_shares(db: sqlite_utils.Database, username: str) -> int:
    """Revoke every live share link a user created; returns how many."""
    cursor = db.execute(
        "UPDATE shares SET revoked_at = ? WHERE created_by = ? AND revoked_at IS NULL",
        [now_iso(), username],
    )
    return cursor.rowcount


def count_active_admins(db: sqlite_utils.Database) -> int:
    """How many enabled admin accounts exist."""
    return db["users"].count_where("role = 'admin' AND disabled = 0")
