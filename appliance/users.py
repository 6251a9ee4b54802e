"""User accounts and passwords (scrypt, a memory-hard KDF from the standard library)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from appliance.errors import UserError

ROLES = ("admin", "radiologist", "technologist")
MIN_PASSWORD_LENGTH = 10
USERNAME_MAX = 64

# scrypt cost: 16 MiB of memory and ~50 ms per hash on the reference machine.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def hash_password(password: str) -> str:
    """Hash ``password`` as ``scrypt$N$r$p$salt$hash`` (base64 fields)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a hash made by :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    return hmac.compare_digest(actual, _unb64(digest))


def dummy_verify(password: str) -> None:
    """Spend the time of one verification, so unknown users cannot be told apart by timing."""
    _scrypt(password, b"\0" * 16, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


def generate_password() -> str:
    """A random password people can type: 4 groups of 4 characters."""
    alphabet = "abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


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
    """Change a user's role, disabled flag or password."""
    require_user(db, username)
    changes: dict[str, Any] = {}
    if role is not None:
        validate_role(role)
        changes["role"] = role
    if disabled is not None:
        changes["disabled"] = int(disabled)
    if password is not None:
        validate_password(password)
        changes["password_hash"] = hash_password(password)
    if changes:
        db["users"].update(username, changes)


def count_active_admins(db: sqlite_utils.Database) -> int:
    """How many enabled admin accounts exist."""
    return db["users"].count_where("role = 'admin' AND disabled = 0")
