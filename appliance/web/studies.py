"""``/api/studies``: the worklist."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from appliance.lifecycle.deletion import StudyDeletionError, StudyNotFound, delete_study
from appliance.store.worklist import (
    WorklistQuery,
    WorklistQueryError,
    search_studies,
    series_progress,
)
from appliance.uids import is_valid_uid
from appliance.web.auth import STAFF, identity, requires
from appliance.web.errors import ApiError
from appliance.web.inputs import client_address, query_int
from appliance.web.keys import DB, INGEST, QUEUE, SETTINGS

routes = web.RouteTableDef()


@routes.get("/api/studies")
@requires(*STAFF)
async def studies(request: web.Request) -> web.Response:
    """Search, filter, sort and page the studies the appliance holds."""
    q = request.query
    query = WorklistQuery(
        q=q.get("q", "").strip()[:100],
        patient_id=q.get("patient_id", "")[:64],  # VR LO: 64 characters at most
        modality=q.get("modality", "").strip()[:16],
        date_from=q.get("date_from", ""),
        date_to=q.get("date_to", ""),
        sort=q.get("sort", "-study_date"),
        limit=query_int(request, "limit", 50),
        offset=query_int(request, "offset", 0),
    )
    try:
        return web.json_response(search_studies(request.app[DB], query))
    except WorklistQueryError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from None


@routes.get("/api/studies/{study_uid}/series")
@requires(*STAFF)
async def series(request: web.Request) -> web.Response:
    """The series of one study with their ingest progress."""
    study_uid = _study_uid(request)
    return web.json_response({"items": series_progress(request.app[DB], study_uid)})


@routes.delete("/api/studies/{study_uid}")
@requires("admin")
async def delete(request: web.Request) -> web.Response:
    """Delete a study from Orthanc, the worklist and the disk (audited); 404 if unknown,
    409 if it cannot be deleted now (the message says why)."""
    study_uid = _study_uid(request)
    journal = request.app[INGEST].ingest.journal
    who, client = identity(request).username, client_address(request)
    try:
        done = await asyncio.to_thread(
            delete_study, request.app[SETTINGS], journal, study_uid, who, client
        )
    except StudyNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except StudyDeletionError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if request.app[SETTINGS].fhir.push_url:  # delete it from the FHIR server now, not at a sweep
        request.app[QUEUE].push(study_uid)
    return web.json_response(dataclasses.asdict(done))


def _study_uid(request: web.Request) -> str:
    study_uid = request.match_info["study_uid"]
    if not is_valid_uid(study_uid):
        raise ApiError(400, "invalid_query", "Not a valid StudyInstanceUID.")
    return study_uid
