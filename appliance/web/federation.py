"""The browser's side of signing in elsewhere: one flow for single sign-on and SMART.

:class:`SignInFlow` runs the steps; ``web/sso.py`` and ``web/smart.py`` configure it.
:func:`start` records the request and sends the browser to the authorization server
with a binding cookie; :func:`finish` checks the answer (state once, from the same
browser), exchanges the code and verifies the ID token; :func:`open_session` opens the
same kind of session a password login opens; :func:`refused` answers a refusal with an
audit row and a page (or JSON for non-browser clients).
"""

from __future__ import annotations

import html
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from appliance.config import Settings
from appliance.security import audit
from appliance.security.federated import Policy, sign_in
from appliance.security.oauth import (
    STATE_TTL,
    Client,
    Discovery,
    Endpoints,
    OAuthError,
    Pending,
    StateStore,
    authorization_url,
    exchange_code,
    verify_id_token,
)
from appliance.web.errors import json_error
from appliance.web.inputs import client_address, is_tls, request_public_origin
from appliance.web.keys import DB, DISCOVERY, HTTP, SESSIONS, SETTINGS, STATES
from appliance.web.login import set_session_cookies

# Binds an authorization request to the browser that started it (login CSRF). Lax: the
# provider's redirect back is a cross-site navigation, which Strict cookies do not join.
BROWSER_COOKIE = "nn_oauth"
MAX_NEXT = 500


@dataclass(frozen=True)
class Answer:
    """A verified answer of the authorization server."""

    pending: Pending
    tokens: dict[str, Any]
    claims: dict[str, Any]


async def federation_ctx(app: web.Application) -> AsyncIterator[None]:
    """Discovery (with its cache) and the store of requests in flight; after the database
    and the HTTP client."""
    app[DISCOVERY] = Discovery(app[HTTP])
    app[STATES] = StateStore(app[DB])
    yield


def client_secret(request: web.Request, kind: str) -> str | None:
    """The ``oidc`` or ``smart`` client secret (``HOME/secrets``, mode 0600), or ``None``
    (a public client)."""
    path = request.app[SETTINGS].layout.client_secret_file(kind)
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in; ``/`` for anything else."""
    if not value or len(value) > MAX_NEXT or not value.startswith("/"):
        return "/"
    if value.startswith(("//", "/\\")) or any(c in value for c in "\\\r\n\t"):
        return "/"
    return value


async def start(
    request: web.Request,
    kind: str,
    endpoints: Endpoints,
    client: Client,
    scope: str,
    issuer: str,
    next_: str,
    **extra: str,
) -> web.Response:
    """Send the browser to the authorization endpoint (302) with a fresh binding cookie."""
    browser = secrets.token_urlsafe(24)
    state, nonce, verifier = request.app[STATES].begin(
        kind, browser, client_address(request), issuer, client.redirect_uri, next_
    )
    url = authorization_url(endpoints, client, scope, state, nonce, verifier, **extra)
    response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    response.set_cookie(
        BROWSER_COOKIE,
        browser,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=is_tls(request),
        max_age=STATE_TTL,
    )
    return response


def take_pending(request: web.Request, kind: str) -> Pending:
    """The request the answer's ``state`` names (once, same browser); the server's
    ``error`` answer as :class:`OAuthError`."""
    query = request.query
    if "error" in query:
        detail = query.get("error_description", query["error"])[:200]
        raise OAuthError(403, "provider_refused", f"The sign-in server refused: {detail}.")
    state, code = query.get("state", ""), query.get("code", "")
    if not state or not code:
        raise OAuthError(400, "missing_code", "The sign-in answer lacks its code or state.")
    return request.app[STATES].take(state, request.cookies.get(BROWSER_COOKIE, ""), kind)


async def finish(
    request: web.Request, pending: Pending, endpoints: Endpoints, client: Client
) -> Answer:
    """Exchange the answer's code (with the PKCE verifier) and verify the ID token; the
    answer's ``iss`` (RFC 9207), when sent, must be the expected server's."""
    sent_issuer = request.query.get("iss")
    if sent_issuer is not None and sent_issuer != endpoints.issuer:
        raise OAuthError(401, "wrong_issuer", "The sign-in answer came from another server.")
    client = replace(client, redirect_uri=pending.redirect_uri)
    http = request.app[HTTP]
    tokens = await exchange_code(http, endpoints, client, request.query["code"], pending.verifier)
    claims = await verify_id_token(request.app[DISCOVERY], endpoints, client, tokens, pending.nonce)
    return Answer(pending, tokens, claims)


def open_session(request: web.Request, username: str, role: str, target: str) -> web.Response:
    """A session like a password login's (cookies), then on to ``target``.

    The answer is a page that moves on by itself: the provider's redirect made this a
    cross-site navigation, and the SameSite=Strict session cookie joins only requests
    this site starts (the viewer's ``auth_request`` needs it on the next page).
    """
    issued = request.app[SESSIONS].start(
        username, role, client_address(request), request.headers.get("User-Agent", "")
    )
    link = html.escape(target, quote=True)
    response = _page(
        200,
        "Signed in",
        f'<meta http-equiv="refresh" content="0;url={link}">',
        f'<p>Signed in as {html.escape(username)}. <a href="{link}">Continue</a></p>',
    )
    set_session_cookies(response, request, issued)
    response.del_cookie(BROWSER_COOKIE, path="/")
    return response


def refused(request: web.Request, exc: OAuthError, event: str, **detail: Any) -> web.Response:
    """Record a refused sign-in and tell the user why (a page, or JSON for API clients)."""
    audit.record(
        request.app[DB],
        event,
        client=client_address(request),
        reason=exc.reason,
        message=exc.message,
        **detail,
    )
    if "text/html" not in request.headers.get("Accept", ""):
        return json_error(exc.status, exc.reason, exc.message)
    body = (
        f'<h1>Sign-in refused</h1><p id="reason">{html.escape(exc.message)}</p>'
        f"<p><small>{html.escape(exc.reason)}</small></p>"
        '<p><a href="/login">Back to the sign-in page</a></p>'
    )
    return _page(exc.status, "Sign-in refused", "", body)


def _page(status: int, title: str, head: str, body: str) -> web.Response:
    text = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>{head}</head>"
        f'<body style="font-family:sans-serif;margin:3em">{body}</body></html>'
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


class SignInFlow:
    """The steps of signing in with an authorization server, the same for single sign-on
    (``[oidc]``) and SMART launches (``[smart]``); a subclass configures them.

    Starting: (1) the issuer, checked; (2) its endpoints and this app as its client;
    (3) the browser on to its authorization endpoint. The callback: (4) the pending
    request its ``state`` names; (5) the answer verified (:func:`finish`); (6) where the
    user lands, the user signed in under the flow's :class:`Policy`; (7) an audit row
    and a session. Any :class:`OAuthError` is a refusal, audited and explained.
    """

    kind: str  # "oidc" or "smart": the settings section and the pending requests' kind
    callback_path: str
    refused_event: str
    signed_in_event: str

    def issuer(self, request: web.Request, named: str) -> str:
        """The issuer to use, given the one the request (or the pending request) names."""
        raise NotImplementedError

    async def endpoints(self, request: web.Request, issuer: str) -> Endpoints:
        """The authorization server's endpoints for ``issuer``."""
        raise NotImplementedError

    def credentials(self, settings: Settings) -> tuple[str, str]:
        """This app's client ID and token endpoint authentication method."""
        raise NotImplementedError

    def authorization(self, request: web.Request, issuer: str) -> tuple[str, str, dict[str, str]]:
        """The scope, where to go after signing in, and extra authorization parameters."""
        raise NotImplementedError

    async def landing(
        self, request: web.Request, answer: Answer, issuer: str, endpoints: Endpoints
    ) -> tuple[str, dict[str, str]]:
        """Where the signed-in user goes, and what the audit row says beside user and role."""
        raise NotImplementedError

    def client(self, request: web.Request) -> Client:
        """This app as the server's client, with its redirect URI where users reach us."""
        client_id, token_auth = self.credentials(request.app[SETTINGS])
        return Client(
            client_id,
            client_secret(request, self.kind),
            request_public_origin(request) + self.callback_path,
            token_auth,
        )

    async def begin(self, request: web.Request, named_issuer: str) -> web.Response:
        """Steps 1-3: on to the authorization endpoint (302), or a refusal."""
        try:
            issuer = self.issuer(request, named_issuer)
            scope, next_, extra = self.authorization(request, issuer)
            endpoints = await self.endpoints(request, issuer)
            client = self.client(request)
            return await start(request, self.kind, endpoints, client, scope, issuer, next_, **extra)
        except OAuthError as exc:
            return refused(request, exc, self.refused_event)

    async def complete(self, request: web.Request) -> web.Response:
        """Steps 4-7: the server's answer verified, the user signed in, a session opened."""
        try:
            pending = take_pending(request, self.kind)
            issuer = self.issuer(request, pending.issuer)
            endpoints = await self.endpoints(request, issuer)
            answer = await finish(request, pending, endpoints, self.client(request))
            policy = Policy.from_settings(request.app[SETTINGS], self.kind)
            target, detail = await self.landing(request, answer, issuer, endpoints)
            username, role = sign_in(request.app[DB], policy, endpoints.issuer, answer.claims)
        except OAuthError as exc:
            return refused(request, exc, self.refused_event)
        audit.record(
            request.app[DB],
            self.signed_in_event,
            username=username,
            client=client_address(request),
            **detail,
            role=role,
        )
        return open_session(request, username, role, target)
