"""``/api/health``: liveness of the app alone, and the health of the whole appliance.

Anyone may ask whether the appliance is healthy; only administrators (an admin session,
or the home's status key sent from loopback by ``neuronova status``) see the details:
versions, pids, ports, the AE title. Probes run at most once per
:data:`~appliance.health.report.PROBE_INTERVAL` seconds
(:class:`~appliance.health.report.CachedHealth`).
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from appliance.health.report import STATUS_KEY_HEADER, CachedHealth, check_health, status_key
from appliance.web.auth import (
    SESSION_COOKIE,
    Rejected,
    bearer_token,
    check_token,
    from_loopback,
    public,
)
from appliance.web.keys import DB, HEALTH, HTTP, QUEUE, SETTINGS, STARTED_AT

routes = web.RouteTableDef()


def cached_health(app: web.Application) -> CachedHealth:
    """The app's health report cache, probing with the app's shared clients."""

    async def probe() -> dict[str, Any]:
        return await check_health(
            app[SETTINGS], app[HTTP], app[QUEUE].huey, app[DB], app[STARTED_AT]
        )

    return CachedHealth(probe)


@routes.get("/api/health/live")
@public
async def live(request: web.Request) -> web.Response:
    """200 as soon as the app answers; used by the supervisor's readiness check."""
    return web.json_response({"status": "ok"})


@routes.get("/api/health")
@public
async def health(request: web.Request) -> web.Response:
    """200 when every component is ok, 503 otherwise; the report itself for admins only."""
    report = await request.app[HEALTH].report()
    status = 200 if report["status"] == "ok" else 503
    if not may_see_details(request):
        report = {"status": report["status"]}
    return web.json_response(report, status=status)


def may_see_details(request: web.Request) -> bool:
    """Whether the caller is an administrator or a local tool holding the status key."""
    key = request.headers.get(STATUS_KEY_HEADER)
    if key is not None:
        expected = status_key(request.app[SETTINGS])
        return from_loopback(request) and hmac.compare_digest(key.encode(), expected.encode())
    header = request.headers.get("Authorization")
    token = bearer_token(header) if header else request.cookies.get(SESSION_COOKIE)
    if not token:
        return False
    try:
        who = check_token(request.app, token, via_cookie=header is None)
    except Rejected:
        return False
    return who.role == "admin" and not who.claims.is_share
