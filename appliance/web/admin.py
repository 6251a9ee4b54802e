"""``/api/admin/``: users, the modality allow-list, system state and the audit trail."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlite_utils
from aiohttp import web

from appliance.backup.status import backup_summary
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.fhir.push import push_status
from appliance.health.doctor import report, run_doctor
from appliance.ingest.intake import HeldError, Ingest
from appliance.ingest.modalities import add_modality, list_modalities, remove_modality
from appliance.migrations import record_summary
from appliance.security import audit, users
from appliance.version import current as app_version
from appliance.web.auth import identity, requires
from appliance.web.errors import ApiError
from appliance.web.inputs import client_address, query_int, read_json
from appliance.web.keys import DB, HEALTH, HTTP, INGEST, QUEUE, SESSIONS, SETTINGS
from appliance.web.queue import queue_state

routes = web.RouteTableDef()
admin_only = requires("admin")
T = TypeVar("T")
MAX_AUDIT_PAGE = 1000
MAX_AUDIT_EXPORT = 10_000


def _audit_change(request: web.Request, action: str, **detail: Any) -> None:
    audit.record(
        request.app[DB],
        audit.ADMIN_CHANGE,
        username=identity(request).username,
        client=client_address(request),
        action=action,
        **detail,
    )


def _bad(exc: ApplianceError) -> ApiError:
    return ApiError(400, "invalid_request", str(exc))


@routes.get("/api/admin/users")
@admin_only
async def list_users(request: web.Request) -> web.Response:
    """Every user, without password hashes."""
    items = [
        {**u, "disabled": bool(u["disabled"]), "pending": bool(u["pending"])}
        for u in users.list_users(request.app[DB])
    ]
    return web.json_response({"items": items})


@routes.post("/api/admin/users")
@admin_only
async def create_user(request: web.Request) -> web.Response:
    """Create a user with a role and a password."""
    body = await read_json(request, {"username": str, "role": str, "password": str})
    try:
        users.create_user(request.app[DB], body["username"], body["role"], body["password"])
    except ApplianceError as exc:
        status = 409 if "already exists" in str(exc) else 400
        raise ApiError(status, "invalid_request", str(exc)) from None
    _audit_change(request, "user_created", target=body["username"], role=body["role"])
    return web.json_response({"username": body["username"], "role": body["role"]}, status=201)


@routes.patch("/api/admin/users/{username}")
@admin_only
async def update_user(request: web.Request) -> web.Response:
    """Change a user's role, disabled flag or password; disabling ends their sessions."""
    name = request.match_info["username"]
    body = await read_json(
        request,
        {"role": (str, type(None)), "disabled": (bool, type(None)), "password": (str, type(None))},
    )
    db = request.app[DB]
    try:
        target = users.require_user(db, name)
        _keep_an_admin(db, target, body)
        users.update_user(
            db,
            name,
            role=body.get("role"),
            disabled=body.get("disabled"),
            password=body.get("password"),
        )
    except ApplianceError as exc:
        status = 404 if "no user named" in str(exc) else 400
        raise ApiError(status, "invalid_request", str(exc)) from None
    if body.get("disabled") or body.get("password") or body.get("role"):
        request.app[SESSIONS].revoke_user(name, "changed by an admin")
    changed = sorted(k for k in ("role", "disabled", "password") if body.get(k) is not None)
    _audit_change(request, "user_updated", target=name, fields=changed)
    user = users.require_user(db, name)
    return web.json_response(
        {"username": name, "role": user["role"], "disabled": bool(user["disabled"])}
    )


def _keep_an_admin(db: Any, target: dict[str, Any], body: dict[str, Any]) -> None:
    demoted = body.get("disabled") or (body.get("role") not in (None, "admin"))
    if target["role"] == "admin" and demoted and users.count_active_admins(db) <= 1:
        raise users.UserError(f"{target['username']} is the last active admin")


@routes.get("/api/admin/modalities")
@admin_only
async def modalities(request: web.Request) -> web.Response:
    """The DICOM allow-list; ``open`` means any caller is accepted (nothing registered)."""
    items = list_modalities(request.app[DB])
    return web.json_response({"items": items, "open": not items})


@routes.post("/api/admin/modalities")
@admin_only
async def add(request: web.Request) -> web.Response:
    """Register a modality's AE title (optionally pinned to its IP address)."""
    body = await read_json(
        request, {"ae_title": str, "host": (str, type(None)), "description": (str, type(None))}
    )
    try:
        row = add_modality(
            request.app[DB], body["ae_title"], body.get("host"), body.get("description") or ""
        )
    except ApplianceError as exc:
        raise _bad(exc) from None
    _audit_change(request, "modality_added", ae_title=row["ae_title"], host=row["host"])
    return web.json_response(row, status=201)


@routes.delete("/api/admin/modalities/{ae_title}")
@admin_only
async def remove(request: web.Request) -> web.Response:
    """Remove a modality from the allow-list."""
    ae_title = request.match_info["ae_title"]
    try:
        remove_modality(request.app[DB], ae_title)
    except ApplianceError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    _audit_change(request, "modality_removed", ae_title=ae_title)
    return web.Response(status=204)


@routes.get("/api/admin/held")
@admin_only
async def held_objects(request: web.Request) -> web.Response:
    """Objects the receiver's overwrite policy held back, oldest first, with the reason."""
    return web.json_response({"items": list(request.app[DB]["held"].rows_where(order_by="id"))})


@routes.post(r"/api/admin/held/{held_id:\d+}/accept")
@admin_only
async def accept_held(request: web.Request) -> web.Response:
    """Archive a held object as if the policy allowed it (it may change the patient)."""
    held_id = int(request.match_info["held_id"])
    item = await _on_held(request, Ingest.release_held, held_id)
    _audit_change(request, "held_accepted", held_id=held_id, sop_uid=item.sop_uid)
    return web.json_response({"id": held_id, "sop_uid": item.sop_uid, "state": "received"})


@routes.delete(r"/api/admin/held/{held_id:\d+}")
@admin_only
async def discard_held(request: web.Request) -> web.Response:
    """Delete a held object and its file; the archive stays as it is."""
    held_id = int(request.match_info["held_id"])
    row = await _on_held(request, Ingest.discard_held, held_id)
    _audit_change(request, "held_discarded", held_id=held_id, sop_uid=row["sop_uid"])
    return web.Response(status=204)


async def _on_held(request: web.Request, action: Callable[[Ingest, int], T], held_id: int) -> T:
    """Run ``action`` off the event loop (file and database work); 404 if nothing is held."""
    try:
        return await asyncio.to_thread(action, request.app[INGEST].ingest, held_id)
    except HeldError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@routes.get("/api/admin/audit")
@admin_only
async def audit_log(request: web.Request) -> web.Response:
    """Audit events, latest activity first, filtered (see :func:`_audit_rows`)."""
    return web.json_response({"items": _audit_rows(request, MAX_AUDIT_PAGE)})


@routes.get("/api/admin/audit/export")
@admin_only
async def audit_export(request: web.Request) -> web.Response:
    """The filtered audit trail as a file: ``format=csv`` (default) or ``json``."""
    kind = request.query.get("format", "csv")
    if kind not in ("csv", "json"):
        raise ApiError(400, "invalid_query", "format must be csv or json.")
    rows = _audit_rows(request, MAX_AUDIT_EXPORT)
    text = audit.to_csv(rows) if kind == "csv" else json.dumps(rows, indent=2)
    return web.Response(
        text=text,
        content_type="text/csv" if kind == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="neuronova-audit.{kind}"'},
    )


def _audit_rows(request: web.Request, most: int) -> list[dict[str, Any]]:
    """Events matching ``since`` (30m, 2d or an ISO time), ``event``, ``user``, ``study``,
    ``patient`` (a patient ID), at most ``limit`` (default 50, at most ``most``)."""
    query = request.query
    event = query.get("event") or None
    if event is not None and event not in audit.EVENTS:
        raise ApiError(400, "invalid_query", f"event must be one of {', '.join(audit.EVENTS)}.")
    try:
        since = audit.since_iso(query["since"]) if query.get("since") else None
    except ValueError as exc:
        raise ApiError(400, "invalid_query", f"since: {exc}.") from None
    return audit.recent(
        request.app[DB],
        since=since,
        event=event,
        username=query.get("user") or None,
        study_uid=query.get("study") or None,
        patient_id=query.get("patient") or None,
        limit=min(max(query_int(request, "limit", 50), 1), most),
    )


@routes.get("/api/admin/system")
@admin_only
async def system(request: web.Request) -> web.Response:
    """Health, queue depth and oldest waiting object, free disk, failed ingests."""
    app = request.app
    settings = app[SETTINGS]
    health, queue = await asyncio.gather(app[HEALTH].report(), queue_state(app, 0))
    db = app[DB]
    images = settings.layout.orthanc_dir
    disk = shutil.disk_usage(images)
    return web.json_response(
        {
            "health": health,
            "queue": {"pending": queue.pending, "oldest_task_age_s": queue.oldest_pending_age_s},
            "disk": {
                "path": str(images),
                "free_bytes": disk.free,
                "total_bytes": disk.total,
                "warn_free_bytes": settings.dicom.warn_free_bytes,
                "refuse_free_bytes": settings.dicom.min_free_mb * 1024**2,
            },
            "warnings": health.get("warnings", []),
            "ingest": {"failed": queue.failed_total},
            "modalities_open": not db["modalities"].count,
            "backup": backup_summary(settings),
            "fhir_push": _fhir_push_summary(settings, db),
            "version": app_version(),
            "home": record_summary(settings.home),
        }
    )


def _fhir_push_summary(settings: Settings, db: sqlite_utils.Database) -> dict[str, Any] | None:
    """Studies by push state and the latest failures, or None when ``[fhir] push_url`` is
    empty (no push)."""
    if not settings.fhir.push_url:
        return None
    return {"url": settings.fhir.push_url, **push_status(db, failures=5)}


@routes.get("/api/admin/doctor")
@admin_only
async def doctor(request: web.Request) -> web.Response:
    """The checks of ``neuronova doctor`` (appliance.health.doctor), run now."""
    app = request.app
    started = time.monotonic()
    checks = await run_doctor(app[SETTINGS], app[DB], app[HTTP], app[QUEUE], app[SESSIONS])
    return web.json_response(report(checks, time.monotonic() - started))
