"""``/api/auth/oidc``: staff single sign-on with any OpenID Connect provider (``[oidc]``).

Keycloak, Entra ID, Google Workspace, OpenEMR: discovery from the issuer, authorization
code with PKCE, state and nonce checked, the ID token verified, the role mapped from a
claim, the user created at first sign-in (or left for an admin's approval). Local
accounts keep working beside it (break-glass).
"""

from __future__ import annotations

from aiohttp import web

from appliance.config import Settings
from appliance.security import audit
from appliance.security.oauth import Endpoints
from appliance.web import federation
from appliance.web.auth import public
from appliance.web.errors import ApiError
from appliance.web.keys import DISCOVERY, SETTINGS

routes = web.RouteTableDef()


class SingleSignOn(federation.SignInFlow):
    """Staff sign-in with the ``[oidc]`` provider."""

    kind = "oidc"
    callback_path = "/api/auth/oidc/callback"
    refused_event = audit.SSO_REFUSED
    signed_in_event = audit.SSO_LOGIN

    def issuer(self, request: web.Request, named: str) -> str:
        settings = request.app[SETTINGS]
        if not settings.oidc.enabled:
            raise ApiError(
                404, "sso_not_configured", "Single sign-on is not set up ([oidc] issuer)."
            )
        return settings.oidc.issuer

    async def endpoints(self, request: web.Request, issuer: str) -> Endpoints:
        return await request.app[DISCOVERY].openid(issuer)

    def credentials(self, settings: Settings) -> tuple[str, str]:
        return settings.oidc.client_id, settings.oidc.token_auth

    def authorization(self, request: web.Request, issuer: str) -> tuple[str, str, dict[str, str]]:
        next_ = federation.safe_next(request.query.get("next"))
        return request.app[SETTINGS].oidc.scopes, next_, {}

    async def landing(
        self, request: web.Request, answer: federation.Answer, issuer: str, endpoints: Endpoints
    ) -> tuple[str, dict[str, str]]:
        return answer.pending.next, {"issuer": endpoints.issuer}


FLOW = SingleSignOn()


@routes.get("/api/auth/oidc")
@public
async def configuration(request: web.Request) -> web.Response:
    """Whether the login page shows "Sign in with ..." and the name on the button."""
    settings = request.app[SETTINGS]
    return web.json_response(
        {"enabled": settings.oidc.enabled, "display_name": settings.oidc.display_name}
    )


@routes.get("/api/auth/oidc/start")
@public
async def start(request: web.Request) -> web.Response:
    """Send the browser to the provider's sign-in page (``next``: where to go after)."""
    return await FLOW.begin(request, "")


@routes.get(FLOW.callback_path)
@public
async def callback(request: web.Request) -> web.Response:
    """The provider's answer: verify it, map the user, open a session."""
    return await FLOW.complete(request)
