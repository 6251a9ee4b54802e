"""Who is calling: the authentication middleware and per-route access rules.

Every ``/api/`` route needs a valid token unless marked :func:`public`. The token comes
from ``Authorization: Bearer`` or the HttpOnly session cookie; state-changing requests
authenticated by the cookie must echo the session's CSRF token in ``X-CSRF-Token``.
Rejections are 401 (bad token), 403 (role, CSRF) with a JSON reason and an audit row.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlite_utils
from aiohttp import web

from appliance.security import audit
from appliance.security.sessions import SESSION_TTL
from appliance.security.tokens import ACCESS_TTL, Claims, TokenError
from appliance.security.users import SHARERS
from appliance.web.errors import ApiError, Handler
from appliance.web.inputs import client_address, is_tls
from appliance.web.keys import DB, SESSIONS, TOKENS

SESSION_COOKIE = "nn_session"
REFRESH_COOKIE = "nn_refresh"
CSRF_COOKIE = "nn_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STAFF = ("admin", "radiologist", "technologist")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Identity:
    """The verified caller of a request."""

    claims: Claims
    via_cookie: bool
    csrf: str | None = None  # the session's CSRF token (None for share links)

    @property
    def username(self) -> str:
        return self.claims.subject

    @property
    def role(self) -> str:
        return self.claims.role


IDENTITY = web.RequestKey("identity", Identity)


@dataclass(frozen=True)
class Access:
    """Who may call a route."""

    roles: tuple[str, ...]
    shares: bool = False
    public: bool = False
    loopback: bool = False  # also open, without a token, to callers on this machine


def public(fn: F) -> F:
    """Mark a route as open to anyone (login, health)."""
    fn.__access__ = Access(roles=(), public=True)  # type: ignore[attr-defined]
    return fn


def requires(*roles: str, shares: bool = False, loopback: bool = False) -> Callable[[F], F]:
    """Restrict a route to ``roles``; ``shares`` also admits study share tokens,
    ``loopback`` any caller whose address (behind nginx, the browser's) is loopback."""

    def mark(fn: F) -> F:
        fn.__access__ = Access(  # type: ignore[attr-defined]
            roles=roles, shares=shares, loopback=loopback
        )
        return fn

    return mark


def identity(request: web.Request) -> Identity:
    """The caller of an authenticated route."""
    return request[IDENTITY]


def _access_of(request: web.Request) -> Access:
    handler = request.match_info.handler
    access = getattr(handler, "__access__", None)
    if access is not None:
        return access
    if request.match_info.http_exception is not None:
        return Access(roles=(), public=True)  # 404/405: let the router answer
    return Access(roles=STAFF)


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` if malformed."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _token_from(request: web.Request) -> tuple[str, bool] | None:
    header = request.headers.get("Authorization", "")
    if header:
        token = bearer_token(header)
        if token is None:
            raise ApiError(401, "malformed_token", "Use 'Authorization: Bearer <token>'.")
        return token, False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, True) if cookie else None


def reject(request: web.Request, status: int, reason: str, message: str, **detail: Any) -> ApiError:
    """Record a security event and build the error the client gets."""
    event = {401: audit.TOKEN_REJECTED, 403: audit.ROLE_DENIED}.get(status, reason)
    claims = request.get(IDENTITY)
    audit.record(
        request.config_dict[DB],
        event,
        username=claims.username if claims else None,
        client=client_address(request),
        reason=reason,
        path=request.path[:200],
        method=request.method,
        **detail,
    )
    return ApiError(status, reason, message)


def find_share(db: sqlite_utils.Database, share_id: str) -> dict[str, Any] | None:
    """The share's row, or ``None``."""
    rows = list(db["shares"].rows_where("id = ?", [share_id]))
    return rows[0] if rows else None


def share_is_live(db: sqlite_utils.Database, claims: Claims) -> bool:
    """Whether a share token's share is unrevoked and its creator may still share."""
    row = db.execute(
        "SELECT 1 FROM shares s JOIN users u ON u.username = s.created_by "
        "WHERE s.id = ? AND s.revoked_at IS NULL AND u.disabled = 0 "
        f"AND u.role IN ({', '.join('?' for _ in SHARERS)})",
        [claims.subject.removeprefix("share:"), *SHARERS],
    ).fetchone()
    return row is not None


class Rejected(Exception):
    """A token that does not admit its bearer: HTTP status, reason code, message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def check_token(app: web.Application, token: str, via_cookie: bool) -> Identity:
    """The caller of a valid token of a live session or share; :class:`Rejected` if not.

    An expired token is refused in every form (bearer, cookie, share link). Free of
    request state, so the frame gate uses it too.
    """
    try:
        claims = app[TOKENS].verify(token)
    except TokenError as exc:
        raise Rejected(401, exc.reason, exc.message) from None
    if claims.is_share:
        if not share_is_live(app[DB], claims):
            raise Rejected(401, "token_revoked", "This share link has been revoked.")
        return Identity(claims, via_cookie)
    session = app[SESSIONS].active(claims.session or "")
    if session is None:
        raise Rejected(401, "token_revoked", "The session has ended; log in again.")
    return Identity(claims, via_cookie, session["csrf"])


def _verify(request: web.Request, token: str, via_cookie: bool) -> Identity:
    """:func:`check_token`, with an audit row and an API error for a rejection."""
    try:
        return check_token(request.app, token, via_cookie)
    except Rejected as exc:
        raise reject(request, exc.status, exc.reason, exc.message) from None


def _check_csrf(request: web.Request, who: Identity) -> None:
    if not who.via_cookie or request.method in SAFE_METHODS or who.claims.is_share:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), (who.csrf or "").encode()) or not who.csrf:
        audit.record(
            request.app[DB],
            audit.CSRF_REJECTED,
            username=who.username,
            client=client_address(request),
            path=request.path[:200],
        )
        raise ApiError(
            403, "csrf_rejected", f"Send the {CSRF_COOKIE} cookie's value in {CSRF_HEADER}."
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, authorize and CSRF-check every request before its handler runs."""
    access = _access_of(request)
    if access.public or (access.loopback and from_loopback(request)):
        return await handler(request)
    found = _token_from(request)
    if found is None:
        raise ApiError(401, "missing_token", "Log in first (no session cookie or bearer token).")
    token, via_cookie = found
    who = _verify(request, token, via_cookie)
    request[IDENTITY] = who
    if who.claims.is_share and not access.shares:
        raise reject(request, 403, "share_not_allowed", "A share link only opens its study.")
    if not who.claims.is_share and who.role not in access.roles:
        raise reject(request, 403, "role_denied", f"Your role ({who.role}) may not do this.")
    _check_csrf(request, who)
    response = await handler(request)
    if via_cookie and not who.claims.is_share:
        _renew_if_old(request, who, response)
    return response


def from_loopback(request: web.Request) -> bool:
    """Whether the caller is on this machine: its address as nginx saw it
    (:func:`~appliance.web.inputs.client_address`), not nginx's own loopback peer."""
    try:
        return ipaddress.ip_address(client_address(request)).is_loopback
    except ValueError:
        return False


def needs_renewal(claims: Claims) -> bool:
    """Whether a cookie's access token is in the second half of its life."""
    return claims.expires_at - time.time() <= ACCESS_TTL / 2


def _renew_if_old(request: web.Request, who: Identity, response: web.StreamResponse) -> None:
    """Sliding session: re-issue the access cookie in the second half of its life."""
    if not needs_renewal(who.claims) or response.prepared:
        return
    token, _ = request.app[TOKENS].issue_access(who.username, who.role, who.claims.session or "")
    set_cookie(response, request, SESSION_COOKIE, token, http_only=True, max_age=SESSION_TTL)


def set_cookie(
    response: web.StreamResponse,
    request: web.Request,
    name: str,
    value: str,
    *,
    http_only: bool,
    path: str = "/",
    max_age: int | None = None,
) -> None:
    """Set a SameSite=Strict cookie, Secure whenever the browser came over HTTPS."""
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=http_only,
        samesite="Strict",
        secure=is_tls(request),
        max_age=max_age,
    )
