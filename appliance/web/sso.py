"""``/api/auth/oidc``: staff single sign-on with any OpenID Connect provider (``[oidc]``).

Keycloak, Entra ID, Google Workspace, OpenEMR: discovery from the issuer, authorization
code with PKCE, state and nonce checked, the ID token verified, the role mapped from a
claim, the user created at first sign-in (or left for an admin's approval). Local
accounts keep working beside it (break-glass).
"""

from __future__ import annotations

from aiohttp import web

from appliance.security import audit
from appliance.security.federated import Policy, sign_in
from appliance.security.oauth import Client, Endpoints, OAuthError
from appliance.web import federation
from appliance.web.auth import public
from appliance.web.errors import ApiError
from appliance.web.inputs import client_address, request_public_origin
from appliance.web.keys import DB, DISCOVERY, SETTINGS

routes = web.RouteTableDef()
KIND = "oidc"
CALLBACK = "/api/auth/oidc/callback"


async def _provider(request: web.Request) -> tuple[Endpoints, Client]:
    settings = request.app[SETTINGS]
    if not settings.oidc_enabled:
        raise ApiError(404, "sso_not_configured", "Single sign-on is not set up ([oidc] issuer).")
    endpoints = await request.app[DISCOVERY].openid(settings.oidc_issuer)
    client = Client(
        settings.oidc_client_id,
        federation.client_secret(request, KIND),
        request_public_origin(request) + CALLBACK,
        settings.oidc_token_auth,
    )
    return endpoints, client


@routes.get("/api/auth/oidc")
@public
async def configuration(request: web.Request) -> web.Response:
    """Whether the login page shows "Sign in with ..." and the name on the button."""
    settings = request.app[SETTINGS]
    return web.json_response(
        {"enabled": settings.oidc_enabled, "display_name": settings.oidc_display_name}
    )


@routes.get("/api/auth/oidc/start")
@public
async def start(request: web.Request) -> web.Response:
    """Send the browser to the provider's sign-in page (``next``: where to go after)."""
    next_ = federation.safe_next(request.query.get("next"))
    try:
        endpoints, client = await _provider(request)
        scope = request.app[SETTINGS].oidc_scopes
        return await federation.start(
            request, KIND, endpoints, client, scope, endpoints.issuer, next_
        )
    except OAuthError as exc:
        return federation.refused(request, exc, audit.SSO_REFUSED)


@routes.get(CALLBACK)
@public
async def callback(request: web.Request) -> web.Response:
    """The provider's answer: verify it, map the user, open a session."""
    try:
        pending = federation.take_pending(request, KIND)
        endpoints, client = await _provider(request)
        answer = await federation.finish(request, pending, endpoints, client)
        policy = Policy.from_settings(request.app[SETTINGS], KIND)
        username, role = sign_in(request.app[DB], policy, endpoints.issuer, answer.claims)
    except OAuthError as exc:
        return federation.refused(request, exc, audit.SSO_REFUSED)
    audit.record(
        request.app[DB],
        audit.SSO_LOGIN,
        username=username,
        client=client_address(request),
        issuer=endpoints.issuer,
        role=role,
    )
    return federation.open_session(request, username, role, pending.next)
