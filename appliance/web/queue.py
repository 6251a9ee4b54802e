"""``/api/admin/queue``: the queue monitor (tasks by kind, failed objects) and retries."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from appliance.jobs.monitor import (
    AUDITED_UIDS,
    FAILED_SHOWN,
    STORAGE_ERRORS,
    QueueMonitor,
    QueueState,
)
from appliance.security import audit
from appliance.uids import is_valid_uid
from appliance.web.auth import identity, requires
from appliance.web.errors import ApiError
from appliance.web.inputs import client_address, query_int, read_json
from appliance.web.keys import DB, INGEST, QUEUE, SETTINGS

routes = web.RouteTableDef()
MAX_FAILED_PAGE = 1000
MAX_RETRY_UIDS = 500  # 500 UIDs of 64 characters fit the 64 KB JSON body limit


async def queue_state(app: web.Application, failed_limit: int = FAILED_SHOWN) -> QueueState:
    """The queue monitor's state, read off the event loop (Huey may be Redis)."""
    monitor = QueueMonitor(app[SETTINGS], app[QUEUE])
    return await asyncio.to_thread(monitor.snapshot, app[INGEST].ingest.journal.read, failed_limit)


@routes.get("/api/admin/queue")
@requires("admin")
async def queue(request: web.Request) -> web.Response:
    """Tasks by kind (pending, scheduled, running, oldest, failed, last run) and the
    newest ``limit`` failed objects with their reason (default 200, at most 1000)."""
    limit = min(max(query_int(request, "limit", FAILED_SHOWN), 1), MAX_FAILED_PAGE)
    return web.json_response((await queue_state(request.app, limit)).to_json())


@routes.post("/api/admin/queue/retry")
@requires("admin")
async def retry(request: web.Request) -> web.Response:
    """Queue failed objects again: ``{"sop_uids": [...]}`` (at most 500) or
    ``{"all": true}``. Answers which were queued and which were not failed."""
    body = await read_json(request, {"sop_uids": (list, type(None)), "all": (bool, type(None))})
    wanted = _retry_targets(body)
    try:
        queued = await asyncio.to_thread(request.app[INGEST].ingest.retry_failed, wanted)
    except STORAGE_ERRORS as exc:  # Huey's SQLite file or Redis did not take the tasks
        raise ApiError(
            503,
            "queue_unavailable",
            f"The queue did not take the tasks ({type(exc).__name__}); the objects stay "
            "waiting and the worker queues them again when it starts.",
        ) from None
    not_failed = sorted(set(wanted or ()) - set(queued))
    audit.record(
        request.app[DB],
        audit.ADMIN_CHANGE,
        username=identity(request).username,
        client=client_address(request),
        action="ingest_retried",
        all=wanted is None,
        count=len(queued),
        sop_uids=queued[:AUDITED_UIDS],
    )
    return web.json_response({"queued": queued, "not_failed": not_failed})


def _retry_targets(body: dict[str, Any]) -> list[str] | None:
    """The SOP Instance UIDs asked for, or None for every failed object; 400 otherwise."""
    uids, every = body.get("sop_uids"), body.get("all")
    if (uids is None) == (not every):
        raise ApiError(
            400, "invalid_request", "Send either 'sop_uids' (a list of UIDs) or 'all': true."
        )
    if uids is None:
        return None
    if not uids or len(uids) > MAX_RETRY_UIDS:
        raise ApiError(
            400,
            "invalid_field",
            f"'sop_uids' must hold 1 to {MAX_RETRY_UIDS} UIDs; use 'all': true for more.",
            field="sop_uids",
        )
    bad = [u for u in uids if not isinstance(u, str) or not is_valid_uid(u)]
    if bad:
        raise ApiError(
            400,
            "invalid_field",
            f"not a UID (digits and dots, at most 64): {str(bad[0])[:80]!r}",
            field="sop_uids",
        )
    return list(dict.fromkeys(uids))
