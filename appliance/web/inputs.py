"""Reading what clients send: JSON bodies, their address behind nginx."""

from __future__ import annotations

import ipaddress
import json
import zlib
from typing import Any

from aiohttp import web

from appliance.config import is_loopback_host
from appliance.public_origin import public_origin
from appliance.web.errors import ApiError
from appliance.web.keys import SETTINGS

MAX_JSON_BODY = 64 * 1024  # the most a JSON body may hold, decoded
# The server leaves bodies as sent (aiohttp's auto_decompress off): read_body inflates
# them itself, only as far as the route's limit, and lingering on a refused body reads
# it without inflating the rest.
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False}
_WBITS = {"": None, "identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_READ_CHUNK = 16 * 1024


def body_too_large(limit: int) -> ApiError:
    """The 413 JSON error for a body beyond ``limit`` bytes (decoded)."""
    return ApiError(
        413, "body_too_large", f"The request body may hold at most {limit // 1024} KB decoded."
    )


def content_encoding(request: web.Request) -> int | None:
    """The ``wbits`` that inflate the body's ``Content-Encoding`` (``None``: as is); 415
    for an encoding other than gzip or deflate."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _WBITS:
        raise ApiError(
            415, "unsupported_encoding", "Send the body uncompressed, or as gzip or deflate."
        )
    return _WBITS[encoding]


async def read_body(request: web.Request, limit: int = MAX_JSON_BODY) -> bytes:
    """The body, decoded: 413 as soon as it holds more than ``limit`` bytes, sent or inflated.

    A compressed body is inflated a chunk at a time, never beyond ``limit`` + 1 bytes,
    so a small body that would inflate to gigabytes costs no more than ``limit``.
    """
    wbits = content_encoding(request)
    if request.content_length is not None and request.content_length > limit:
        raise body_too_large(limit)
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    body, sent = bytearray(), 0
    try:
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            sent += len(chunk)
            if inflater is not None:
                chunk = inflater.decompress(chunk, limit + 1 - len(body))
            body += chunk
            if sent > limit or len(body) > limit:
                raise body_too_large(limit)
        if inflater is not None and not inflater.eof:
            raise zlib.error("the compressed body ends early")
    except zlib.error as exc:
        raise ApiError(400, "invalid_body", f"The body does not inflate ({exc}).") from None
    return bytes(body)


def client_address(request: web.Request) -> str:
    """The browser's address: nginx's ``X-Forwarded-For`` when the peer is nginx.

    nginx sets the header to ``$remote_addr`` (replacing any value the client sent). Only
    loopback peers are trusted to set it, or any peer when the app listens beyond loopback
    (``[internal] listen``, the cloud profile: only the profile's internal network, with
    nginx on it, reaches the app's port then).
    """
    peer = request.remote or ""
    try:
        trusted = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        trusted = False
    trusted = trusted or not is_loopback_host(request.config_dict[SETTINGS].internal.listen)
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() if trusted and forwarded else peer


def is_tls(request: web.Request) -> bool:
    """True when the browser reached nginx over HTTPS."""
    return request.headers.get("X-Forwarded-Proto") == "https" or request.secure


def browser_origin(request: web.Request) -> str:
    """The origin the browser used: the Host it sent nginx, with the scheme it came by.

    The app itself is reached over plain HTTP from nginx, so ``request.url`` alone would
    say ``http://`` to a browser on the HTTPS listener.
    """
    return str(request.url.origin().with_scheme("https" if is_tls(request) else "http"))


def request_public_origin(request: web.Request) -> str:
    """:func:`appliance.public_origin.public_origin` for the request being answered."""
    return public_origin(request.config_dict[SETTINGS], browser_origin(request))


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
    raw = await read_body(request)
    try:
        body = json.loads(raw)
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
