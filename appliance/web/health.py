"""``/api/health``: liveness of the app alone, and the health of the whole appliance."""

from __future__ import annotations

from aiohttp import web

from appliance.health import check_health
from appliance.web.auth import public
from appliance.web.keys import DB, HTTP, QUEUE, SETTINGS, STARTED_AT

routes = web.RouteTableDef()


@routes.get("/api/health/live")
@public
async def live(request: web.Request) -> web.Response:
    """200 as soon as the app answers; used by the supervisor's readiness check."""
    return web.json_response({"status": "ok"})


@routes.get("/api/health")
@public
async def health(request: web.Request) -> web.Response:
    """200 with every component's report when all are ok, 503 naming the failing ones."""
    app = request.app
    report = await check_health(app[SETTINGS], app[HTTP], app[QUEUE].huey, app[DB], app[STARTED_AT])
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)
