"""OAuth 2.0 / OpenID Connect client: discovery, PKCE, state, code exchange, ID tokens.

Shared by staff single sign-on (:mod:`appliance.web.sso`) and the SMART App Launch
(:mod:`appliance.web.smart`). Protocol pieces come from authlib (PKCE challenge, the ID
token claim rules of OpenID Connect Core 3.1.3.7) and joserfc (JWS and JWKS); the HTTP
calls go through the app's aiohttp client.

Every authorization request in flight is a row of ``oauth_states``: the state (stored
as its SHA-256), the nonce, the PKCE verifier, the redirect URI and a hash of a random
value kept in the browser's cookie, so the answer is accepted once, within
:data:`STATE_TTL`, and only by the browser that asked. The rows are bounded in number
(:data:`MAX_PENDING`, :data:`MAX_PENDING_PER_CLIENT`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import sqlite_utils
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from appliance.db import now_iso, transaction
from appliance.security.sessions import expires_in, secret_digest

STATE_TTL = 600  # seconds a user has to sign in at the provider
MAX_PENDING = 1000  # authorization requests in flight, all clients
MAX_PENDING_PER_CLIENT = 20
LEEWAY = 30  # seconds of clock difference allowed on ID token times
METADATA_TTL = 3600  # seconds discovery documents and key sets are cached
MAX_DOCUMENT = 1 << 20  # bytes of a discovery document, key set or token response
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OAuthError(Exception):
    """A refused sign-in: HTTP status, reason code, and a message for the user."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Endpoints:
    """What an authorization server's discovery document says about it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class Client:
    """This appliance as a client of one server; no ``secret``: a public client (PKCE).
    ``auth_method`` is how a secret is sent: ``client_secret_basic`` (the Authorization
    header) or ``client_secret_post`` (the form body), as the client was registered."""

    client_id: str
    secret: str | None
    redirect_uri: str
    auth_method: str = "client_secret_basic"


@dataclass(frozen=True)
class Pending:
    """An authorization request in flight, as :meth:`StateStore.take` returns it."""

    kind: str
    nonce: str
    verifier: str
    issuer: str
    redirect_uri: str
    next: str


class StateStore:
    """Authorization requests in flight, in the app database (shared by its processes)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def begin(
        self, kind: str, browser: str, client: str, issuer: str, redirect_uri: str, next_: str
    ) -> tuple[str, str, str]:
        """Record a new request; returns ``(state, nonce, verifier)``.

        ``browser`` is the random value of the browser's binding cookie. Raises
        :class:`OAuthError` (429) when the client or everyone has too many in flight.
        """
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        with transaction(self.db) as db:
            db.execute("DELETE FROM oauth_states WHERE expires_at < ?", [now_iso()])
            self._check_room(client)
            db["oauth_states"].insert(
                {
                    "state_hash": secret_digest(state),
                    "kind": kind,
                    "browser_hash": secret_digest(browser),
                    "client": client,
                    "nonce": nonce,
                    "verifier": verifier,
                    "issuer": issuer,
                    "redirect_uri": redirect_uri,
                    "next": next_,
                    "created_at": now_iso(),
                    "expires_at": expires_in(STATE_TTL),
                }
            )
        return state, nonce, verifier

    def _check_room(self, client: str) -> None:
        total = self.db.execute("SELECT count(*) FROM oauth_states").fetchone()[0]
        mine = self.db.execute(
            "SELECT count(*) FROM oauth_states WHERE client = ?", [client]
        ).fetchone()[0]
        if total >= MAX_PENDING or mine >= MAX_PENDING_PER_CLIENT:
            raise OAuthError(
                429, "too_many_pending", "Too many sign-ins in progress; try again in minutes."
            )

    def take(self, state: str, browser: str, kind: str) -> Pending:
        """Remove and return the request ``state`` names; :class:`OAuthError` if it is
        unknown, used, expired, of another kind or started by another browser."""
        with transaction(self.db) as db:
            row = db.execute(
                "DELETE FROM oauth_states WHERE state_hash = ? "
                "RETURNING kind, browser_hash, nonce, verifier, issuer, redirect_uri, next, "
                "expires_at",
                [secret_digest(state)],
            ).fetchone()
        if row is None or row[0] != kind:
            raise OAuthError(
                400, "unknown_state", "This sign-in answer is unknown or was used; start again."
            )
        if row[7] < now_iso():
            raise OAuthError(400, "state_expired", "The sign-in took too long; start again.")
        if not secrets.compare_digest(row[1], secret_digest(browser)):
            raise OAuthError(
                400, "wrong_browser", "This sign-in was started in another browser; start again."
            )
        return Pending(*row[:1], *row[2:7])


class Discovery:
    """Discovery documents and key sets, fetched with the app's HTTP client and cached."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def document(self, url: str, fresh: bool = False) -> dict[str, Any]:
        """The JSON object at ``url`` (cached :data:`METADATA_TTL` unless ``fresh``)."""
        cached = self._cache.get(url)
        if cached and not fresh and time.monotonic() - cached[0] < METADATA_TTL:
            return cached[1]
        data = await fetch_json(self.http, "GET", url)
        self._cache[url] = (time.monotonic(), data)
        return data

    async def openid(self, issuer: str) -> Endpoints:
        """The endpoints of ``issuer`` from its ``.well-known/openid-configuration``;
        :class:`OAuthError` unless the document names that same issuer."""
        data = await self.document(issuer.rstrip("/") + "/.well-known/openid-configuration")
        return endpoints_of(data, issuer)

    async def key_set(self, jwks_uri: str, kid: str | None) -> KeySet:
        """The server's signing keys; fetched again once if ``kid`` is not among them."""
        data = await self.document(jwks_uri)
        if kid and kid not in {key.get("kid") for key in data.get("keys", [])}:
            data = await self.document(jwks_uri, fresh=True)
        try:
            return KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError) as exc:
            message = f"The provider's key set is invalid ({exc})."
            raise OAuthError(502, "bad_key_set", message) from None


def endpoints_of(data: dict[str, Any], issuer: str) -> Endpoints:
    """The endpoints in a discovery document that must belong to ``issuer``."""
    if str(data.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise OAuthError(
            502, "issuer_mismatch", f"The provider's discovery document is not for {issuer}."
        )
    try:
        return Endpoints(
            issuer=data["issuer"],
            authorization_endpoint=_url(data["authorization_endpoint"]),
            token_endpoint=_url(data["token_endpoint"]),
            jwks_uri=_url(data["jwks_uri"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OAuthError(
            502, "bad_discovery", f"The provider's discovery document lacks {exc}."
        ) from None


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise ValueError("an http(s) endpoint")
    return value


async def fetch_json(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> dict[str, Any]:
    """A JSON object from ``url``; :class:`OAuthError` (502) for any failure."""
    try:
        async with http.request(method, url, allow_redirects=False, **kwargs) as resp:
            body = await resp.content.read(MAX_DOCUMENT + 1)
            if len(body) > MAX_DOCUMENT:
                raise ValueError("the answer is too large")
            data = json.loads(body) if body else None
            if resp.status != 200:
                error = data.get("error") if isinstance(data, dict) else None
                raise ValueError(f"HTTP {resp.status}" + (f" {error}" if error else ""))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise OAuthError(
            502, "provider_unreachable", f"The sign-in server did not answer {url}: {exc}."
        ) from None
    if not isinstance(data, dict):
        raise OAuthError(502, "provider_unreachable", f"{url} did not answer a JSON object.")
    return data


def authorization_url(
    endpoints: Endpoints, client: Client, scope: str, state: str, nonce: str, verifier: str,
    **extra: str,
) -> str:  # fmt: skip
    """Where to send the browser: a code request with PKCE (S256), state and nonce."""
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return add_params_to_uri(endpoints.authorization_endpoint, list(params.items()))


async def exchange_code(
    http: aiohttp.ClientSession, endpoints: Endpoints, client: Client, code: str, verifier: str
) -> dict[str, Any]:
    """Swap an authorization code for tokens (with the PKCE verifier)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": client.redirect_uri,
        "code_verifier": verifier,
    }
    auth = None
    if client.secret and client.auth_method == "client_secret_basic":
        auth = aiohttp.BasicAuth(client.client_id, client.secret)
    else:
        form["client_id"] = client.client_id
        if client.secret:
            form["client_secret"] = client.secret
    tokens = await fetch_json(http, "POST", endpoints.token_endpoint, data=form, auth=auth)
    if not isinstance(tokens.get("id_token"), str) or not isinstance(
        tokens.get("access_token"), str
    ):
        raise OAuthError(502, "no_id_token", "The sign-in server sent no ID token.")
    return tokens


async def verify_id_token(
    discovery: Discovery, endpoints: Endpoints, client: Client, tokens: dict[str, Any], nonce: str
) -> dict[str, Any]:
    """The claims of the token response's ID token, after checking its signature (the
    server's JWKS), ``iss``, ``aud``, ``azp``, ``exp``, ``iat``, ``nonce`` and ``at_hash``."""
    raw = tokens["id_token"]
    try:
        kid = jws.extract_compact(raw.encode()).protected.get("kid")
    except (JoseError, ValueError) as exc:
        raise OAuthError(401, "bad_id_token", f"The ID token is malformed ({exc}).") from None
    keys = await discovery.key_set(endpoints.jwks_uri, kid)
    try:
        registry = JWSRegistry(algorithms=ID_TOKEN_ALGORITHMS, strict_check_header=False)
        token = jwt.decode(raw, keys, registry=registry)
    except (JoseError, ValueError) as exc:
        raise OAuthError(
            401, "bad_signature", f"The ID token's signature does not verify ({exc})."
        ) from None
    options = {
        "iss": {"essential": True, "values": [endpoints.issuer]},
        "aud": {"essential": True, "values": [client.client_id]},
    }
    params = {"nonce": nonce, "client_id": client.client_id, "access_token": tokens["access_token"]}
    claims = CodeIDToken(token.claims, token.header, options, params)
    try:
        claims.validate(leeway=LEEWAY)
    except JoseError as exc:
        raise _claim_error(exc) from None
    return dict(claims)


CLAIM_ERRORS = {
    "iss": ("wrong_issuer", "The ID token was issued by another server."),
    "exp": ("id_token_expired", "The ID token has expired; sign in again."),
    "nonce": ("nonce_mismatch", "The ID token is not the answer to this sign-in."),
    "aud": ("wrong_audience", "The ID token was issued for another client."),
}


def _claim_error(exc: JoseError) -> OAuthError:
    claim = "exp" if isinstance(exc, ExpiredTokenError) else getattr(exc, "claim", "")
    reason, message = CLAIM_ERRORS.get(claim, ("bad_id_token", f"The ID token is refused ({exc})."))
    return OAuthError(401, reason, message)
