"""JSON Web Tokens: short-lived access tokens for sessions, and study share tokens.

One algorithm is pinned (HS256 with the home's 384-bit signing key); issuer, audience,
expiry, issued-at and token id are required and checked on every request. A token that
fails any check raises :class:`TokenError` with a machine-readable reason.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "neuronova"
AUDIENCE_WEB = "neuronova-web"
AUDIENCE_SHARE = "neuronova-share"
ACCESS_TTL = 15 * 60
REQUIRED = ["exp", "iat", "iss", "aud", "jti", "sub"]
LEEWAY = 5
CACHE_SIZE = 10_000


class TokenError(Exception):
    """A rejected token; ``reason`` is the code clients and the audit trail see."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token.

    ``session`` is the session id for web tokens; ``study`` the one study a share token
    opens (``None`` for web tokens).
    """

    subject: str
    role: str
    audience: str
    token_id: str
    expires_at: int
    issued_at: int
    session: str | None = None
    study: str | None = None

    @property
    def is_share(self) -> bool:
        return self.audience == AUDIENCE_SHARE

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at + LEEWAY


_ERRORS: list[tuple[type[Exception], str, str]] = [
    (jwt.ExpiredSignatureError, "token_expired", "The token has expired; log in again."),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "The token is not valid yet."),
    (jwt.InvalidAudienceError, "wrong_audience", "The token was not issued for this service."),
    (jwt.InvalidIssuerError, "wrong_issuer", "The token was not issued by this appliance."),
    (jwt.MissingRequiredClaimError, "missing_claim", "The token lacks a required claim."),
    (jwt.InvalidAlgorithmError, "wrong_algorithm", f"Only {ALGORITHM} tokens are accepted."),
    (jwt.InvalidSignatureError, "bad_signature", "The token's signature does not verify."),
    (jwt.InvalidTokenError, "malformed_token", "The token is malformed."),
]


class TokenService:
    """Issues and verifies tokens with one signing key.

    Verified tokens are remembered (at most :data:`CACHE_SIZE`): the same bytes always
    verify the same way, so a viewer's hundreds of frame requests with one token pay for
    the signature check once; expiry is still checked on every use, and revocation is
    the caller's check of the session.
    """

    def __init__(self, key: str) -> None:
        self._key = key
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def _encode(self, claims: dict) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "iat": now, "jti": secrets.token_urlsafe(12), **claims}
        return jwt.encode(payload, self._key, algorithm=ALGORITHM)

    def issue_access(
        self, username: str, role: str, session_id: str, ttl: int = ACCESS_TTL
    ) -> tuple[str, int]:
        """An access token for a session; returns ``(token, expires_at)``."""
        expires_at = int(time.time()) + ttl
        token = self._encode(
            {
                "sub": username,
                "role": role,
                "sid": session_id,
                "aud": AUDIENCE_WEB,
                "exp": expires_at,
            }
        )
        return token, expires_at

    def issue_share(self, share_id: str, study_uid: str, created_by: str, expires_at: int) -> str:
        """A read-only token for one study, valid until ``expires_at`` (epoch seconds)."""
        return self._encode(
            {
                "sub": f"share:{share_id}",
                "role": "share",
                "aud": AUDIENCE_SHARE,
                "exp": expires_at,
                "study": study_uid,
                "by": created_by,
            }
        )

    def verify(self, token: str) -> Claims:
        """Verify signature, algorithm, issuer, audience and times; :class:`TokenError` if not.

        An expired token is refused however it is sent (header, cookie, share link): a
        leaked token is good for :data:`ACCESS_TTL` at most, not for its whole session.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signed(token)
            self._verified[token] = claims
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        if claims.expired:
            raise TokenError("token_expired", "The token has expired; log in again.")
        return claims

    def _verify_signed(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError("malformed_token", "The token is malformed.") from exc
        if header.get("alg") != ALGORITHM:
            raise TokenError("wrong_algorithm", f"Only {ALGORITHM} tokens are accepted.")
        try:
            data = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=[AUDIENCE_WEB, AUDIENCE_SHARE],
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"require": REQUIRED, "verify_exp": False},  # checked by verify()
            )
        except jwt.InvalidTokenError as exc:
            raise _token_error(exc) from exc
        return _claims(data)


def _token_error(exc: jwt.InvalidTokenError) -> TokenError:
    for kind, reason, message in _ERRORS:
        if isinstance(exc, kind):
            return TokenError(reason, message)
    return TokenError("malformed_token", "The token is malformed.")


def _claims(data: dict) -> Claims:
    audience = data["aud"] if isinstance(data["aud"], str) else data["aud"][0]
    if audience == AUDIENCE_WEB and not data.get("sid"):
        raise TokenError("missing_claim", "The token lacks a required claim.")
    if audience == AUDIENCE_SHARE and not data.get("study"):
        raise TokenError("missing_claim", "The token lacks a required claim.")
    return Claims(
        subject=data["sub"],
        role=data.get("role", ""),
        audience=audience,
        token_id=data["jti"],
        expires_at=data["exp"],
        issued_at=data["iat"],
        session=data.get("sid"),
        study=data.get("study"),
    )
