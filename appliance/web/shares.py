"""``/api/shares``: time-limited, read-only links to one study for referring physicians."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from appliance.db import now_iso
from appliance.security import audit
from appliance.security.tokens import Claims, TokenError
from appliance.security.users import SHARERS
from appliance.uids import is_valid_uid
from appliance.web.auth import (
    SESSION_COOKIE,
    find_share,
    identity,
    public,
    reject,
    requires,
    set_cookie,
    share_is_live,
)
from appliance.web.errors import ApiError
from appliance.web.inputs import client_address, read_json, request_public_origin
from appliance.web.keys import DB, TOKENS

routes = web.RouteTableDef()
MAX_HOURS = 24 * 30


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@routes.post("/api/shares")
@requires(*SHARERS)
async def create_share(request: web.Request) -> web.Response:
    """Mint a read-only link to one study, valid for ``expires_in_hours`` (default 72)."""
    body = await read_json(
        request,
        {"study_uid": str, "expires_in_hours": (int, type(None)), "note": (str, type(None))},
    )
    study = body["study_uid"]
    if not is_valid_uid(study):
        raise ApiError(400, "invalid_field", "'study_uid' is not a valid UID.", field="study_uid")
    hours = body.get("expires_in_hours") or 72
    if not 1 <= hours <= MAX_HOURS:
        raise ApiError(400, "invalid_field", f"'expires_in_hours' must be 1-{MAX_HOURS}.")
    who = identity(request)
    share_id = secrets.token_urlsafe(9)
    expires_at = int(time.time()) + hours * 3600
    row = {
        "id": share_id,
        "study_uid": study,
        "created_by": who.username,
        "created_at": now_iso(),
        "expires_at": _iso(expires_at),
        "note": (body.get("note") or "")[:200],
    }
    request.app[DB]["shares"].insert(row)
    token = request.app[TOKENS].issue_share(share_id, study, who.username, expires_at)
    _audit_change(request, audit.SHARE_CREATED, share_id, study=study, hours=hours)
    url = f"{request_public_origin(request)}/api/shares/open?token={quote(token)}"
    return web.json_response({**row, "revoked": False, "url": url, "token": token}, status=201)


@routes.get("/api/shares")
@requires(*SHARERS)
async def list_shares(request: web.Request) -> web.Response:
    """Shares, newest first: all of them for admins, one's own for radiologists."""
    who = identity(request)
    where, args = (None, []) if who.role == "admin" else ("created_by = ?", [who.username])
    rows = request.app[DB]["shares"].rows_where(where, args, order_by="created_at desc", limit=500)
    items = [{**r, "revoked": bool(r.pop("revoked_at"))} for r in rows]
    return web.json_response({"items": items})


@routes.delete("/api/shares/{share_id}")
@requires(*SHARERS)
async def revoke_share(request: web.Request) -> web.Response:
    """Revoke a share: its link stops working at once."""
    who = identity(request)
    share_id = request.match_info["share_id"]
    share = find_share(request.app[DB], share_id)
    if share is None:
        raise ApiError(404, "not_found", "No such share.")
    if who.role != "admin" and share["created_by"] != who.username:
        raise reject(request, 403, "role_denied", "Only its creator or an admin may revoke it.")
    request.app[DB]["shares"].update(share_id, {"revoked_at": now_iso()})
    _audit_change(request, audit.SHARE_REVOKED, share_id)
    return web.Response(status=204)


def _audit_change(request: web.Request, event: str, share_id: str, **detail: object) -> None:
    """A share created or revoked, by the caller."""
    who = identity(request).username
    client = client_address(request)
    audit.record(request.app[DB], event, username=who, client=client, share=share_id, **detail)


def _audit_open(request: web.Request, claims: Claims) -> None:
    """One ``share_opened`` row per share link and client address per hour, with a count."""
    db, client, study = request.app[DB], client_address(request), claims.study or ""
    share_id = claims.subject.removeprefix("share:")
    patient_id, patient_name = audit.patient_of(db, study)
    audit.record(
        db,
        audit.SHARE_OPENED,
        username=claims.subject,
        client=client,
        study_uid=study,
        patient_id=patient_id,
        key=audit.window_key(audit.SHARE_OPEN_WINDOW, audit.SHARE_OPENED, share_id, client),
        share=share_id,
        patient_name=patient_name,
    )


@routes.get("/api/shares/open")
@public
async def open_share(request: web.Request) -> web.Response:
    """Follow a share link: keep its token in the session cookie and open the viewer."""
    token = request.query.get("token", "")
    app = request.app
    try:
        claims = app[TOKENS].verify(token)
    except TokenError:
        raise reject(
            request, 401, "invalid_share", "This share link is invalid or expired."
        ) from None
    if not claims.is_share or not share_is_live(app[DB], claims):
        raise reject(request, 401, "token_revoked", "This share link has been revoked.")
    _audit_open(request, claims)
    response = web.HTTPFound(f"/pacs-viewer/viewer?StudyInstanceUIDs={claims.study}")
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        token,
        http_only=True,
        max_age=max(claims.expires_at - int(time.time()), 1),
    )
    raise response
