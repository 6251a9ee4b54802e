"""``/api/auth/``: login, refresh, logout and who-am-I."""

from __future__ import annotations

import asyncio
import hmac
import time
from urllib.parse import quote

from aiohttp import web

from appliance.security import audit
from appliance.security.sessions import SESSION_TTL, IssuedSession, LoginThrottled, RefreshRejected
from appliance.security.users import (
    dummy_verify,
    get_user,
    hash_password,
    needs_rehash,
    verify_password,
)
from appliance.web.auth import (
    CSRF_COOKIE,
    CSRF_HEADER,
    REFRESH_COOKIE,
    SESSION_COOKIE,
    STAFF,
    identity,
    public,
    requires,
    set_cookie,
)
from appliance.web.errors import ApiError, json_error
from appliance.web.inputs import client_address, read_json
from appliance.web.keys import DB, SESSIONS

routes = web.RouteTableDef()
INVALID = "Invalid user name or password."
# At logout the browser drops cached pages (PHI), cookies and storage of this origin.
CLEAR_SITE_DATA = '"cache", "cookies", "storage"'


def _session_response(request: web.Request, issued: IssuedSession) -> web.Response:
    response = web.json_response(
        {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.access_expires_at - int(time.time()),
            "user": {"username": issued.username, "role": issued.role},
        }
    )
    set_session_cookies(response, request, issued)
    return response


def set_session_cookies(
    response: web.StreamResponse, request: web.Request, issued: IssuedSession
) -> None:
    """The session's cookies: access token, refresh token (``/api/auth`` only), CSRF token."""
    set_cookie(
        response, request, SESSION_COOKIE, issued.access_token, http_only=True, max_age=SESSION_TTL
    )
    set_cookie(
        response,
        request,
        REFRESH_COOKIE,
        issued.refresh_token,
        http_only=True,
        path="/api/auth",
        max_age=SESSION_TTL,
    )
    set_cookie(response, request, CSRF_COOKIE, issued.csrf, http_only=False, max_age=SESSION_TTL)


def _clear_cookies(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(REFRESH_COOKIE, path="/api/auth")
    response.del_cookie(CSRF_COOKIE, path="/")


@routes.post("/api/auth/login")
@public
async def login(request: web.Request) -> web.Response:
    """Check a user name and password; open a session (JSON token + cookies)."""
    body = await read_json(request, {"username": str, "password": str})
    username, password = body["username"][:64], body["password"][:1024]
    db, client, sessions = request.app[DB], client_address(request), request.app[SESSIONS]
    try:
        attempt = sessions.begin_login(username, client)
    except LoginThrottled as exc:
        audit.record(db, audit.LOGIN_THROTTLED, username=username, client=client)
        return json_error(
            429,
            "too_many_attempts",
            f"Too many failed logins. Try again in {exc.retry_after} s.",
            retry_after=exc.retry_after,
        )
    user = get_user(db, username)
    if user is None:
        await asyncio.to_thread(dummy_verify, password)
        reason = "unknown_user"
    elif not await asyncio.to_thread(verify_password, password, user["password_hash"]):
        reason = "bad_password"
    elif user["disabled"]:
        reason = "account_disabled"
    else:
        sessions.login_succeeded(attempt)
        if needs_rehash(user["password_hash"]):
            fresh = await asyncio.to_thread(hash_password, password)
            db["users"].update(username, {"password_hash": fresh})
        issued = sessions.start(
            username, user["role"], client, request.headers.get("User-Agent", "")
        )
        audit.record(db, audit.LOGIN_OK, username=username, client=client)
        return _session_response(request, issued)
    audit.record(db, audit.LOGIN_FAILED, username=username, client=client, reason=reason)
    raise ApiError(401, "invalid_credentials", INVALID)


@routes.post("/api/auth/refresh")
@public
async def refresh(request: web.Request) -> web.Response:
    """Swap the refresh cookie for a new one and a new access token."""
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise ApiError(401, "missing_token", "No refresh cookie; log in again.")
    sent, expected = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            403, "csrf_rejected", f"Send the {CSRF_COOKIE} cookie's value in {CSRF_HEADER}."
        )
    try:
        issued = request.app[SESSIONS].refresh(token, client_address(request))
    except RefreshRejected as exc:
        audit.record(
            request.app[DB],
            audit.TOKEN_REJECTED,
            client=client_address(request),
            reason="refresh_rejected",
            detail=str(exc),
        )
        response = json_error(401, "refresh_rejected", f"{str(exc).capitalize()}. Log in again.")
        _clear_cookies(response)
        return response
    return _session_response(request, issued)


@routes.post("/api/auth/logout")
@requires(*STAFF)
async def logout(request: web.Request) -> web.Response:
    """End the session: its access and refresh tokens stop working at once."""
    who = identity(request)
    request.app[SESSIONS].revoke(who.claims.session or "", "logout")
    audit.record(
        request.app[DB], audit.LOGOUT, username=who.username, client=client_address(request)
    )
    response = web.Response(status=204, headers={"Clear-Site-Data": CLEAR_SITE_DATA})
    _clear_cookies(response)
    return response


@routes.get("/api/auth/me")
@requires(*STAFF, shares=True)
async def me(request: web.Request) -> web.Response:
    """The caller's name and role (and the study, for a share link)."""
    claims = identity(request).claims
    body = {"username": claims.subject, "role": claims.role, "expires_at": claims.expires_at}
    if claims.is_share:
        body["study_uid"] = claims.study
    return web.json_response(body)


@routes.get("/api/auth/check")
@requires(*STAFF, shares=True)
async def check(request: web.Request) -> web.Response:
    """204 for a valid session or share cookie; nginx's ``auth_request`` for the viewer."""
    return web.Response(status=204)


@routes.get("/api/auth/login-redirect")
@public
async def login_redirect(request: web.Request) -> web.Response:
    """Send a browser that opened the viewer without a session to the login page and back."""
    original = request.headers.get("X-Original-URI", "/")
    target = original if original.startswith("/pacs-viewer/") else "/"
    raise web.HTTPFound(f"/login?next={quote(target, safe='')}")
