"""``/api/fhir/``: a FHIR R4 read API over the studies the appliance holds.

``metadata`` (CapabilityStatement), ImagingStudy read and search, Patient read and
search, the DICOMweb Endpoint. A sub-application, so that every error under its prefix,
the authentication middleware's included, is an OperationOutcome
(:data:`~appliance.web.errors.ERROR_RENDERER`). Same tokens and roles as DICOMweb; a share
link sees only its study and that study's patient.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

import sqlite_utils
from aiohttp import web

from appliance.fhir.assemble import imaging_studies
from appliance.fhir.index import patient_row, search_patients, search_studies
from appliance.fhir.query import (
    MAX_COUNT,
    Search,
    SearchError,
    parse_search,
    search_params,
)
from appliance.fhir.resources import (
    ENDPOINT_ID,
    FHIR_JSON,
    FHIR_VERSION,
    Resource,
    build_endpoint,
    build_patient,
    operation_outcome,
    searchset,
)
from appliance.security import audit
from appliance.uids import is_valid_uid
from appliance.web.auth import STAFF, identity, public, reject, requires
from appliance.web.dicomweb import reader_of
from appliance.web.errors import ERROR_RENDERER, ApiError
from appliance.web.inputs import client_address, request_public_origin
from appliance.web.keys import DB, SETTINGS, STARTED_AT

PREFIX = "/api/fhir"
PATIENT_KEY_RE = re.compile(r"[0-9a-f]{32}")
routes = web.RouteTableDef()
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
               405: "not-supported", 413: "too-costly", 429: "throttled"}  # fmt: skip


def fhir_response(resource: Resource, status: int = 200) -> web.Response:
    """``resource`` as ``application/fhir+json``."""
    return web.json_response(resource, status=status, content_type=FHIR_JSON)


def outcome_response(status: int, code: str, message: str) -> web.Response:
    """An error as an OperationOutcome (the app's error code ends the diagnostics)."""
    severity = "fatal" if status >= 500 else "error"
    issue = ISSUE_CODES.get(status, "exception")
    return fhir_response(operation_outcome(severity, issue, f"{message} [{code}]"), status)


def fhir_base(request: web.Request) -> str:
    """This API's base URL where users reach the appliance (:func:`request_public_origin`)."""
    return request_public_origin(request) + PREFIX


def _db(request: web.Request) -> sqlite_utils.Database:
    return request.config_dict[DB]


def _scope(request: web.Request) -> str | None:
    """The one study a share link may see; ``None`` for staff."""
    claims = identity(request).claims
    return claims.study if claims.is_share else None


def _parse(request: web.Request, resource: str) -> Search:
    lenient = "handling=lenient" in request.headers.get("Prefer", "").replace(" ", "")
    id_system = request.config_dict[SETTINGS].smart.identifier_system
    try:
        return parse_search(resource, list(request.query.items()), id_system, lenient)
    except SearchError as exc:
        raise ApiError(400, "invalid_search", str(exc)) from None


def _audit(request: web.Request, level: str, study: str | None, patient: str | None) -> None:
    """One ``study_query`` row per session (or share), FHIR path, query, study and patient
    per hour (a read of another study is a row of its own)."""
    who = identity(request)
    reader, filters = reader_of(who), request.query_string[: audit.MAX_TEXT]
    audit.record(
        _db(request),
        audit.STUDY_QUERY,
        username=who.username,
        client=client_address(request),
        study_uid=study or who.claims.study,
        patient_id=patient,
        key=audit.window_key(
            audit.QUERY_WINDOW, audit.STUDY_QUERY, reader, level, filters, study, patient
        ),
        level=level,
        filters=filters,
        session=reader,
    )


def _bundle(
    request: web.Request, resource: str, search: Search, total: int, found: list[Resource]
) -> web.Response:
    base = fhir_base(request)
    page = search.page

    def link(offset: int) -> str:
        pairs = [*search.used, ("_count", str(page.count)), ("_offset", str(offset))]
        return f"{base}/{resource}?{urlencode(pairs)}"

    links = [("self", link(page.offset))]
    if page.count and page.offset + page.count < total:
        links.append(("next", link(page.offset + page.count)))
    if page.count and page.offset > 0:
        links.append(("previous", link(max(page.offset - page.count, 0))))
    entries = [(f"{base}/{resource}/{r['id']}", r) for r in found]
    return fhir_response(searchset(entries, total, links))


@routes.get("/metadata")
@public
async def metadata(request: web.Request) -> web.Response:
    """The CapabilityStatement: exactly the interactions and parameters served here."""
    return fhir_response(capability_statement(request))


def capability_statement(request: web.Request) -> Resource:
    """What this API supports, built from the same tables its parsers use."""
    started = request.config_dict[STARTED_AT]
    common = [{"name": "_count", "type": "number"}, {"name": "_offset", "type": "number"}]
    types = {"started": "date", "name": "string", "patient": "reference",
             "subject": "reference", "_id": "token"}  # fmt: skip

    def searched(kind: str) -> Resource:
        params = [{"name": p, "type": types.get(p, "token")} for p in search_params(kind)]
        return {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": params + common,
        }

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _iso_date(started),
        "kind": "instance",
        "software": {"name": "NeuroNova"},
        "implementation": {"description": "NeuroNova imaging appliance", "url": fhir_base(request)},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": f"Searches return at most {MAX_COUNT} resources a page. "
                "Unknown parameters are refused unless 'Prefer: handling=lenient' is sent.",
                "security": {
                    "description": "Bearer token from /api/auth/login, the session cookie, "
                    "or a share link (its study only)."
                },
                "resource": [
                    searched("ImagingStudy"),
                    searched("Patient"),
                    {"type": "Endpoint", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }


def _iso_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


@routes.get("/ImagingStudy")
@requires(*STAFF, shares=True)
async def search_imaging_study(request: web.Request) -> web.Response:
    """ImagingStudy search (a share link: its study at most)."""
    search = _parse(request, "ImagingStudy")
    db = _db(request)
    total, rows = search_studies(db, search, _scope(request))
    found = imaging_studies(db, rows)
    _audit(request, "fhir/ImagingStudy", None, None)
    return _bundle(request, "ImagingStudy", search, total, found)


@routes.get("/ImagingStudy/{id}")
@requires(*STAFF, shares=True)
async def read_imaging_study(request: web.Request) -> web.Response:
    """ImagingStudy read by id (the Study Instance UID)."""
    uid = request.match_info["id"]
    scope = _scope(request)
    if scope is not None and uid != scope:
        raise reject(request, 403, "study_not_shared", "This share link opens another study.")
    db = _db(request)
    rows = []
    if is_valid_uid(uid):
        rows = list(db.query("SELECT * FROM studies WHERE study_uid = ?", [uid]))
    if not rows:
        raise ApiError(404, "not_found", f"No ImagingStudy with id {uid[:80]!r}.")
    _audit(request, "fhir/ImagingStudy/id", uid, rows[0]["patient_id"])
    return fhir_response((imaging_studies(db, rows))[0])


@routes.get("/Patient")
@requires(*STAFF, shares=True)
async def search_patient(request: web.Request) -> web.Response:
    """Patient search by identifier, name or id (a share link: its study's patient)."""
    search = _parse(request, "Patient")
    total, rows = search_patients(_db(request), search, _scope(request))
    system = request.config_dict[SETTINGS].smart.identifier_system
    _audit(request, "fhir/Patient", None, None)
    return _bundle(request, "Patient", search, total, [build_patient(r, system) for r in rows])


@routes.get("/Patient/{id}")
@requires(*STAFF, shares=True)
async def read_patient(request: web.Request) -> web.Response:
    """Patient read by id (:func:`~appliance.db.patient_key`)."""
    key = request.match_info["id"]
    db = _db(request)
    row = patient_row(db, key) if PATIENT_KEY_RE.fullmatch(key) else None
    if row is None:
        raise ApiError(404, "not_found", f"No Patient with id {key[:80]!r}.")
    scope = _scope(request)
    if scope is not None and not _shared_patient(db, scope, row["patient_id"]):
        raise reject(request, 403, "study_not_shared", "This share link opens another patient.")
    _audit(request, "fhir/Patient/id", None, row["patient_id"])
    return fhir_response(build_patient(row, request.config_dict[SETTINGS].smart.identifier_system))


def _shared_patient(db: sqlite_utils.Database, study_uid: str, patient_id: str) -> bool:
    sql = "SELECT coalesce(patient_id, '') FROM studies WHERE study_uid = ?"
    found = db.execute(sql, [study_uid]).fetchone()
    return found is not None and found[0] == patient_id


@routes.get("/Endpoint/{id}")
@requires(*STAFF, shares=True)
async def read_endpoint(request: web.Request) -> web.Response:
    """The Endpoint of the DICOMweb service the ImagingStudy resources point to."""
    if request.match_info["id"] != ENDPOINT_ID:
        raise ApiError(404, "not_found", f"No Endpoint with id {request.match_info['id'][:80]!r}.")
    return fhir_response(build_endpoint(request_public_origin(request)))


def create_fhir_app() -> web.Application:
    """The ``/api/fhir`` sub-application (mounted by :func:`appliance.web.app.create_app`;
    it reads the parent's database and settings through ``request.config_dict``)."""
    app = web.Application()
    app[ERROR_RENDERER] = outcome_response
    app.add_routes(routes)
    return app
