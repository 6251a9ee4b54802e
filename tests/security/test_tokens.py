"""Access and share tokens: every forged or stale token is refused with its reason."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from appliance.security.tokens import AUDIENCE_WEB, ISSUER, TokenError, TokenService

KEY = "k" * 64


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(KEY)


def forge(claims: dict, key: str = KEY, algorithm: str = "HS256") -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE_WEB,
        "iat": now,
        "exp": now + 60,
        "jti": "x",
        "sub": "admin",
        "role": "admin",
        "sid": "s",
        **claims,
    }
    return jwt.encode(payload, key, algorithm=algorithm)


def reason(tokens: TokenService, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        tokens.verify(token)
    return caught.value.reason


def test_valid_access_token_round_trips(tokens):
    token, expires_at = tokens.issue_access("dr.a", "radiologist", "sess1")
    claims = tokens.verify(token)
    assert (claims.subject, claims.role, claims.session) == ("dr.a", "radiologist", "sess1")
    assert claims.expires_at == expires_at and not claims.is_share


def test_share_token_names_its_study(tokens):
    token = tokens.issue_share("abc", "1.2.3", "dr.a", int(time.time()) + 60)
    claims = tokens.verify(token)
    assert claims.is_share and claims.study == "1.2.3" and claims.subject == "share:abc"


def test_expired_token(tokens):
    assert reason(tokens, forge({"exp": int(time.time()) - 60})) == "token_expired"


def test_tampered_payload(tokens):
    header, payload, signature = forge({}).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reason(tokens, f"{header}.{forged}.{signature}") == "bad_signature"


def test_alg_none(tokens):
    unsigned = jwt.encode(
        {"sub": "admin", "aud": AUDIENCE_WEB, "iss": ISSUER}, None, algorithm="none"
    )
    assert reason(tokens, unsigned) == "wrong_algorithm"


def test_wrong_algorithm_hs512(tokens):
    assert reason(tokens, forge({}, algorithm="HS512")) == "wrong_algorithm"


def test_wrong_audience(tokens):
    assert reason(tokens, forge({"aud": "orthanc"})) == "wrong_audience"


def test_wrong_issuer(tokens):
    assert reason(tokens, forge({"iss": "someone-else"})) == "wrong_issuer"


def test_wrong_key(tokens):
    assert reason(tokens, forge({}, key="another-key-" * 6)) == "bad_signature"


def test_missing_claim(tokens):
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE_WEB, "sub": "a", "exp": int(time.time()) + 9},
        KEY,
        algorithm="HS256",
    )
    assert reason(tokens, token) == "missing_claim"


def test_web_token_without_session_is_refused(tokens):
    assert reason(tokens, forge({"sid": None})) == "missing_claim"


def test_issued_in_the_future(tokens):
    assert reason(tokens, forge({"iat": int(time.time()) + 3600})) == "token_not_yet_valid"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "eyJ.eyJ.", "\x00\x01"])
def test_garbage(tokens, garbage):
    assert reason(tokens, garbage) == "malformed_token"


def test_a_remembered_token_still_expires(tokens, monkeypatch):
    token, expires_at = tokens.issue_access("dr.a", "radiologist", "s", ttl=60)
    assert tokens.verify(token).subject == "dr.a"  # now remembered
    monkeypatch.setattr(time, "time", lambda: expires_at + 3600)
    assert reason(tokens, token) == "token_expired"
