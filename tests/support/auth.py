"""Signing in to the web app (aiohttp's test client) and to a running appliance, and
tokens forged the way an attacker would make them."""

from __future__ import annotations

import time

import jwt

from appliance.db import open_database
from appliance.security import audit
from appliance.security.tokens import AUDIENCE_WEB, ISSUER

PASSWORD = "correct horse battery"  # of the users the ``settings`` fixture makes


async def login(client, username="rad", password=PASSWORD, **headers):
    """POST the login form through aiohttp's test ``client``; the response."""
    return await client.post(
        "/api/auth/login", json={"username": username, "password": password}, headers=headers
    )


async def bearer(client, username="rad") -> dict[str, str]:
    """An ``Authorization`` header with an access token of ``username``."""
    body = await (await login(client, username)).json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def audit_events(settings, event):
    """The home's recent audit rows of kind ``event``."""
    db = open_database(settings.layout.database_file)
    return audit.recent(db, event=event)


def forged(appliance, **changes) -> str:
    """An admin access token signed with the appliance's own key, with ``changes`` to its
    claims (``algorithm`` and ``key`` change how it is signed): what an attacker would
    try once the key or a claim is in reach."""
    key = appliance.settings.layout.jwt_key_file.read_text().strip()
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE_WEB, "iat": now, "exp": now + 300, "jti": "j",
              "sub": "admin", "role": "admin", "sid": "nope"}  # fmt: skip
    algorithm = changes.pop("algorithm", "HS256")
    key = changes.pop("key", key)
    claims.update(changes)
    return jwt.encode(claims, key, algorithm=algorithm)
