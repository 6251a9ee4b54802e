"""Login sessions: throttled logins, rotating refresh tokens, revocation.

A session is a row with an absolute expiry; its access tokens (JWT, 15 minutes) carry
its id, so revoking the session (logout, user disabled, refresh-token reuse) ends every
token of it at once. Refresh tokens are random, stored only as SHA-256 hashes, and used
once: presenting a used one again means it was stolen, and the whole session is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

from appliance.db import now_iso, transaction
from appliance.security import audit
from appliance.security.tokens import TokenService

SESSION_TTL = 12 * 3600
FAILURE_WINDOW = 15 * 60
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_CLIENT = 20


class LoginThrottled(Exception):
    """Too many failed logins; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


class RefreshRejected(Exception):
    """A refresh token that is unknown, used, or of an ended session."""


@dataclass(frozen=True)
class IssuedSession:
    """What a successful login or refresh hands to the client."""

    username: str
    role: str
    session_id: str
    csrf: str
    access_token: str
    access_expires_at: int
    refresh_token: str


def secret_digest(secret: str) -> str:
    """What the database keeps of a bearer secret (a refresh token, an OAuth state): its
    SHA-256, so a copy of the database lets nobody use it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def expires_in(seconds: int) -> str:
    """The ISO timestamp ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


class SessionStore:
    """Sessions and refresh tokens in the app database."""

    def __init__(self, db: sqlite_utils.Database, tokens: TokenService) -> None:
        self.db = db
        self.tokens = tokens

    def begin_login(self, username: str, client: str) -> int:
        """Reserve one password check for this user and client; returns the attempt's id.

        Atomic across the app's processes (one ``BEGIN IMMEDIATE`` transaction): failed
        and still-running attempts in the window are counted and the new one recorded
        together, so parallel guesses cannot all pass the count before any has failed.
        Raises :class:`LoginThrottled` when the user or the client is at its limit.
        """
        with transaction(self.db) as db:
            since = audit.iso_ago(FAILURE_WINDOW)
            db.execute("DELETE FROM login_attempts WHERE started_at < ?", [since])
            for column, value, limit in (
                ("username", username, MAX_FAILURES_PER_USER),
                ("client", client, MAX_FAILURES_PER_CLIENT),
            ):
                self._check_limit(column, value, limit)
            cursor = db.execute(
                "INSERT INTO login_attempts (username, client, started_at) VALUES (?, ?, ?)",
                [username, client, now_iso()],
            )
        return int(cursor.lastrowid or 0)

    def _check_limit(self, column: str, value: str, limit: int) -> None:
        starts = [
            row[0]
            for row in self.db.conn.execute(
                f"SELECT started_at FROM login_attempts WHERE {column} = ? ORDER BY started_at",
                [value],
            )
        ]
        if len(starts) >= limit:
            unblock = datetime.fromisoformat(starts[-limit]) + timedelta(seconds=FAILURE_WINDOW)
            wait = int((unblock - datetime.now(UTC)).total_seconds()) + 1
            raise LoginThrottled(max(wait, 1))

    def login_succeeded(self, attempt_id: int) -> None:
        """Stop counting a reserved attempt whose password was right (failures count on)."""
        with transaction(self.db) as db:
            db.execute("DELETE FROM login_attempts WHERE id = ?", [attempt_id])

    def start(self, username: str, role: str, client: str, user_agent: str) -> IssuedSession:
        """Open a session after a successful login."""
        session_id = self._open(username, SESSION_TTL, client, user_agent)
        self.db["users"].update(username, {"last_login": now_iso()})
        return self._issue(session_id, username, role)

    def start_probe(self, username: str, role: str, ttl: int) -> tuple[str, str]:
        """A session of ``ttl`` seconds for a self-test (``neuronova doctor``), without a
        user row or refresh token; returns ``(session_id, access_token)``. Revoke it after."""
        session_id = self._open(username, ttl, "127.0.0.1", "neuronova doctor")
        return session_id, self.tokens.issue_access(username, role, session_id, ttl=ttl)[0]

    def _open(self, username: str, ttl: int, client: str, user_agent: str) -> str:
        """Insert a session row lasting ``ttl`` seconds; returns its id."""
        session_id = secrets.token_urlsafe(18)
        self.db["sessions"].insert(
            {
                "id": session_id,
                "username": username,
                "csrf": secrets.token_urlsafe(24),
                "created_at": now_iso(),
                "expires_at": expires_in(ttl),
                "client": client,
                "user_agent": user_agent[:200],
            }
        )
        return session_id

    def _issue(self, session_id: str, username: str, role: str) -> IssuedSession:
        refresh = secrets.token_urlsafe(32)
        self.db["refresh_tokens"].insert(
            {
                "token_hash": secret_digest(refresh),
                "session_id": session_id,
                "created_at": now_iso(),
            }
        )
        access, expires_at = self.tokens.issue_access(username, role, session_id)
        csrf = self.db["sessions"].get(session_id)["csrf"]
        return IssuedSession(username, role, session_id, csrf, access, expires_at, refresh)

    def refresh(self, refresh_token: str, client: str) -> IssuedSession:
        """Rotate a refresh token; reuse of a used one revokes the session."""
        digest = secret_digest(refresh_token)
        rows = list(self.db["refresh_tokens"].rows_where("token_hash = ?", [digest]))
        if not rows:
            raise RefreshRejected("unknown refresh token")
        row = rows[0]
        session = self.active(row["session_id"])
        if session is None:
            raise RefreshRejected("the session has ended")
        if row["used_at"]:
            self.revoke(row["session_id"], "refresh token reused")
            audit.record(
                self.db,
                audit.REFRESH_REUSED,
                username=session["username"],
                client=client,
                session=row["session_id"][:8],
            )
            raise RefreshRejected("refresh token reused; the session was revoked")
        user = self.db["users"].get(session["username"])
        if user["disabled"]:
            self.revoke(row["session_id"], "user disabled")
            raise RefreshRejected("the account is disabled")
        self.db["refresh_tokens"].update(row["token_hash"], {"used_at": now_iso()})
        return self._issue(row["session_id"], user["username"], user["role"])

    def active(self, session_id: str) -> dict | None:
        """The session's user and CSRF token if it is neither revoked nor expired.

        Asked on every authenticated request (the frame gate's hot path), so it is one
        indexed lookup of two columns in raw SQL.
        """
        row = self.db.conn.execute(
            "SELECT username, csrf FROM sessions "
            "WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
            [session_id, now_iso()],
        ).fetchone()
        return {"username": row[0], "csrf": row[1]} if row else None

    def revoke(self, session_id: str, reason: str) -> None:
        """End one session (its access and refresh tokens stop working at once)."""
        self.db["sessions"].update(session_id, {"revoked_at": now_iso(), "revoke_reason": reason})

    def revoke_user(self, username: str, reason: str) -> None:
        """End every open session of a user."""
        revoke_user_sessions(self.db, username, reason)


def revoke_user_sessions(db: sqlite_utils.Database, username: str, reason: str) -> None:
    """End every open session of a user (their tokens stop working at once)."""
    with transaction(db):
        db.execute(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = ? "
            "WHERE username = ? AND revoked_at IS NULL",
            [now_iso(), reason, username],
        )
