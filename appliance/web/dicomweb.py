"""``/api/pacs/dicom-web/``: QIDO-RS, WADO-RS and STOW-RS behind the token check.

Reads are answered with an empty body and ``X-Accel-Redirect``; nginx then sends the
bytes (see :mod:`appliance.web.gateway`). STOW-RS uploads are read here and handed to the
ingest pipeline.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from appliance.ingest.journal import STORED
from appliance.security import audit
from appliance.store import frame_files, series_metadata
from appliance.store.study_search import TOO_MANY, parse_study_search, search_studies
from appliance.web.auth import STAFF, Identity, identity, reject, requires
from appliance.web.errors import ApiError, json_error
from appliance.web.gateway import (
    HTJ2K_LOSSLESS,
    BadRequest,
    Target,
    accepts_json,
    accepts_stored_htj2k,
    check_raw_path,
    checked_query,
    encoded_query,
    frame_file_redirect,
    image_file_redirect,
    orthanc_accept,
    orthanc_redirect,
    parse_path,
    series_metadata_redirect,
)
from appliance.web.inputs import client_address, request_public_origin
from appliance.web.keys import DB, FRAMES_DIR, READS
from appliance.web.stow import store_instances

routes = web.RouteTableDef()
ROOT = "/api/pacs/dicom-web"
PREVIEW_RETRY = 5  # seconds; the preview task runs behind the queued ingests
NOT_FILTERS = frozenset({"includefield", "limit", "offset"})


def _parse(request: web.Request) -> Target:
    try:
        check_raw_path(request.raw_path)
        return parse_path(request.match_info["tail"])
    except BadRequest as exc:
        raise ApiError(400, "bad_dicomweb_request", str(exc)) from None


def _share_scope(request: web.Request, who: Identity, target: Target) -> str | None:
    """For a share link: the one study it may see (403 for any other)."""
    if not who.claims.is_share:
        return None
    if target.study is not None and target.study != who.claims.study:
        raise reject(request, 403, "study_not_shared", "This share link opens another study.")
    return who.claims.study


def prepared_frame(frames_dir: str, target: Target, accept: str) -> str | None:
    """The internal URI of a single frame's prepared file, if it exists and ``accept`` fits."""
    if target.action != "frames" or len(target.frames) != 1 or target.frame_action is not None:
        return None
    if not accepts_stored_htj2k(accept):
        return None
    return _existing(frames_dir, frame_file_redirect(target))


def _existing(frames_dir: str, uri: str) -> str | None:
    return uri if os.path.exists(frames_dir + uri.removeprefix(frame_files.LOCATION)) else None


def _prepared_file(request: web.Request, target: Target) -> str | None:
    """The internal URI of a file prepared at ingest for this request, if there is one."""
    frames_dir = request.app[FRAMES_DIR]
    if target.action == "frames" and target.frame_action is None:
        return prepared_frame(frames_dir, target, request.headers.get("Accept", ""))
    if target.resource == "series" and target.action == "metadata":
        return _series_metadata(frames_dir, target, request.headers.get("Accept", ""))
    if target.resource in ("studies", "series") and target.action in ("rendered", "thumbnail"):
        shown = _representative(request, target)
        return _existing(frames_dir, image_file_redirect(shown, target.action)) if shown else None
    if target.resource == "instances" and (
        target.action in ("rendered", "thumbnail")
        or (target.action == "frames" and target.frames == (1,) and target.frame_action)
    ):
        return _existing(
            frames_dir, image_file_redirect(target, target.frame_action or target.action)
        )
    return None


def _series_metadata(frames_dir: str, target: Target, accept: str) -> str | None:
    """The internal URI of a series' prepared metadata, if it exists and ``accept`` fits."""
    assert target.study is not None and target.series is not None
    prepared = os.path.join(frames_dir, target.study, target.series, series_metadata.FILE_NAME)
    if not accepts_json(accept) or not os.path.exists(prepared):
        return None
    return series_metadata_redirect(target)


def _representative(request: web.Request, target: Target) -> Target | None:
    """The instance whose picture stands for a series (its first received instance) or a
    study (that of its lowest-numbered series)."""
    query = "SELECT series_uid, first_sop FROM series WHERE study_uid = ? AND first_sop IS NOT NULL"
    params = [target.study]
    if target.series:
        query += " AND series_uid = ?"
        params.append(target.series)
    query += " ORDER BY CAST(number AS INTEGER), series_uid LIMIT 1"
    row = request.app[DB].execute(query, params).fetchone()
    return replace(target, series=row[0], instance=row[1]) if row else None


def _refuse_other_syntaxes(request: web.Request, target: Target) -> None:
    """406 for frames of an HTJ2K instance asked for in another form.

    Orthanc 1.10.1 cannot transcode HTJ2K, and would send the HTJ2K bytes labelled as
    the syntax asked for; the bytes never pass through Python, so there is no other form.
    """
    first = replace(target, frames=target.frames[:1])
    if _existing(request.app[FRAMES_DIR], frame_file_redirect(first)) is None:
        return
    raise ApiError(
        406,
        "not_acceptable",
        f"Frames of this instance are stored as HTJ2K ({HTJ2K_LOSSLESS}) and sent one per "
        "request: ask for one frame with transfer-syntax=* or that syntax.",
    )


def _refuse_other_retrieve_syntaxes(request: web.Request, target: Target) -> None:
    """406 for a retrieve in a named transfer syntax of objects stored as HTJ2K.

    Orthanc 1.10.1 cannot transcode HTJ2K (it would answer 500); whether the study,
    series or instance holds HTJ2K objects is told by its prepared frame files (a series'
    folder may hold only its prepared metadata).
    """
    if accepts_stored_htj2k(request.headers.get("Accept", "")):
        return
    uids = [uid for uid in (target.study, target.series, target.instance) if uid]
    below = "/".join(["*"] * (3 - len(uids)) + ["frames"])  # an instance's frames folder
    if next(Path(request.app[FRAMES_DIR], *uids).glob(below), None) is None:
        return
    raise ApiError(
        406,
        "not_acceptable",
        f"These objects are stored as HTJ2K ({HTJ2K_LOSSLESS}), which this archive cannot "
        "convert: ask with transfer-syntax=* or that syntax.",
    )


def _preview_pending(request: web.Request, target: Target) -> web.Response | None:
    """503 with ``Retry-After`` while a stored instance's JPEGs wait for their task.

    Previews of all but a series' first instance are made after the instance is stored
    (:meth:`appliance.transcode.pipeline.Pipeline.write_images`); Orthanc 1.10.1 cannot
    render HTJ2K in the meantime.
    """
    if target.resource != "instances" or not (
        target.action in ("rendered", "thumbnail") or target.frame_action
    ):
        return None
    pending = (
        request.app[DB]
        .execute(
            "SELECT 1 FROM instances WHERE sop_uid = ? AND state = ? AND frames > 0 "
            "AND images_at IS NULL",
            [target.instance, STORED],
        )
        .fetchone()
    )
    if pending is None:
        return None
    return json_error(
        503,
        "preview_pending",
        f"The preview of this instance is being made; try again in {PREVIEW_RETRY} s.",
        retry_after=PREVIEW_RETRY,
    )


def accel(uri: str, accept: str = "") -> web.Response:
    """An empty response that has nginx serve ``uri`` from an internal location."""
    headers = {"X-Accel-Redirect": uri}
    if accept:
        headers["X-Orthanc-Accept"] = accept[:1024]
    return web.Response(status=200, headers=headers)


@routes.get(ROOT + "/{tail:.*}")
@requires(*STAFF, shares=True)
async def read(request: web.Request) -> web.Response:
    """Any DICOMweb read: validate, then hand the byte transfer to nginx."""
    target = _parse(request)
    study_only = _share_scope(request, identity(request), target)
    try:
        pairs = checked_query(list(request.query.items()), study_only)
    except BadRequest as exc:
        raise ApiError(400, "bad_dicomweb_request", str(exc)) from None
    if target.resource == "studies" and target.action == "search":
        answered = _study_search(request, pairs)
        if answered is not None:
            return _granted(request, target, answered)
    prepared = _prepared_file(request, target)
    if prepared is not None:
        return _granted(request, target, accel(prepared))
    if target.action == "frames" and target.frame_action is None:
        _refuse_other_syntaxes(request, target)
    if target.action == "retrieve":
        _refuse_other_retrieve_syntaxes(request, target)
    pending = _preview_pending(request, target)
    if pending is not None:
        return pending
    accept = orthanc_accept(target, request.headers.get("Accept", ""))
    redirect = orthanc_redirect(target, encoded_query(pairs))
    return _granted(request, target, accel(redirect, accept))


def _study_search(request: web.Request, pairs: list[tuple[str, str]]) -> web.Response | None:
    """A QIDO study search answered from the app's study table, if it can be exactly
    (:mod:`appliance.store.study_search`); None: Orthanc answers it."""
    search = parse_study_search(pairs)
    if search is None or not accepts_json(request.headers.get("Accept", "")):
        return None
    root = request_public_origin(request) + ROOT
    answer = search_studies(request.app[DB].conn, search, root)
    if answer is None:
        return None
    headers = {"Warning": TOO_MANY} if answer.truncated else {}
    return web.json_response(
        answer.datasets, content_type="application/dicom+json", headers=headers
    )


def _granted(request: web.Request, target: Target, response: web.Response) -> web.Response:
    """``response``, once the read it grants is in the audit trail."""
    who, client = identity(request), client_address(request)
    if target.action == "search":
        _audit_query(request, who, target, client)
    else:
        audit_read(request.app[READS], who, target, client)
    return response


def audit_read(ledger: audit.ReadLedger, who: Identity, target: Target, client: str) -> None:
    """Record the caller's session's (or share's) first view or download of the study."""
    assert target.study is not None  # only searches have no study
    ledger.read(
        reader_of(who),
        target.study,
        "download" if target.action == "retrieve" else "view",
        username=who.username,
        client=client,
        first=target.action,
    )


def _audit_query(request: web.Request, who: Identity, target: Target, client: str) -> None:
    """One ``study_query`` row per session (or share), level and filters per hour."""
    pairs = sorted((k, v) for k, v in request.query.items() if k.lower() not in NOT_FILTERS)
    filters = "&".join(f"{key}={value}" for key, value in pairs)[: audit.MAX_TEXT]
    asked = dict(pairs)
    study = target.study or who.claims.study or asked.get("StudyInstanceUID", asked.get("0020000D"))
    reader = reader_of(who)
    audit.record(
        request.app[DB],
        audit.STUDY_QUERY,
        username=who.username,
        client=client,
        study_uid=study[:64] if study else None,
        patient_id=asked.get("PatientID", asked.get("00100020", ""))[:64] or None,
        key=audit.window_key(audit.QUERY_WINDOW, audit.STUDY_QUERY, reader, target.path, filters),
        level=target.path,
        filters=filters,
        session=reader,
    )


def reader_of(who: Identity) -> str:
    """Whose reads are counted together: a login session's id, or ``share:ID``."""
    return who.claims.session or who.claims.subject


@routes.post(ROOT + "/studies")
@routes.post(ROOT + "/studies/{study}")
@requires("technologist", "admin")
async def stow(request: web.Request) -> web.Response:
    """STOW-RS: store the uploaded instances (PS3.18 10.5)."""
    study = request.match_info.get("study")
    if study is not None:
        try:
            parse_path(f"studies/{study}")
        except BadRequest as exc:
            raise ApiError(400, "bad_dicomweb_request", str(exc)) from None
    return await store_instances(request, study)
