"""Reading what clients send: JSON bodies, their address behind nginx."""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from appliance.web.errors import ApiError


def client_address(request: web.Request) -> str:
    """The browser's address: nginx's ``X-Forwarded-For`` when the peer is loopback.

    nginx sets the header to ``$remote_addr`` (replacing any value the client sent), and
    only loopback peers are trusted to set it.
    """
    peer = request.remote or ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() if loopback and forwarded else peer


def is_tls(request: web.Request) -> bool:
    """True when the browser reached nginx over HTTPS."""
    return request.headers.get("X-Forwarded-Proto") == "https" or request.secure


def query_int(request: web.Request, name: str, default: int) -> int:
    """An integer query parameter; a 400 JSON error when it is not one."""
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise ApiError(400, "invalid_query", f"{name} must be an integer.") from None


async def read_json(request: web.Request, fields: dict[str, type]) -> dict[str, Any]:
    """The JSON object body with ``fields`` checked for type; 415/400 JSON errors otherwise.

    Fields whose type is a tuple including ``type(None)`` are optional.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send a JSON body (application/json).")
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    for name, kind in fields.items():
        optional = isinstance(kind, tuple) and type(None) in kind
        if name not in body and not optional:
            raise ApiError(400, "missing_field", f"'{name}' is required.", field=name)
        if name in body and not isinstance(body[name], kind):
            raise ApiError(400, "invalid_field", f"'{name}' has the wrong type.", field=name)
    return body
