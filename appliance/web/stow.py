"""STOW-RS (PS3.18 10.5): read a ``multipart/related`` upload part by part and ingest each."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pydicom
from aiohttp import BodyPartReader, web
from pydicom.errors import InvalidDicomError

from appliance.web.errors import ApiError
from appliance.web.keys import INGEST

MAX_PART = 2 * 1024**3
# PS3.18 Table 10.5.3-1 / PS3.7 Annex C failure reasons.
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xA900


@dataclass(frozen=True)
class PartOutcome:
    """What happened to one uploaded part."""

    sop_class: str | None
    sop_instance: str | None
    failure: int | None = None
    reason: str = ""


def _referenced(outcome: PartOutcome, url_root: str) -> dict:
    item = {
        "00081150": {"vr": "UI", "Value": [outcome.sop_class]},
        "00081155": {"vr": "UI", "Value": [outcome.sop_instance]},
    }
    if outcome.failure is None:
        item["00081190"] = {"vr": "UR", "Value": [url_root]}
    else:
        item["00081197"] = {"vr": "US", "Value": [outcome.failure]}
    return item


def _response(outcomes: list[PartOutcome], url_root: str) -> web.Response:
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(o, url_root) for o in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_referenced(o, url_root) for o in failed]}
        body["00090010"] = {"vr": "LO", "Value": ["NEURONOVA"]}
        body["00091001"] = {"vr": "LT", "Value": ["; ".join(o.reason for o in failed)]}
    status = 200 if not failed else (202 if stored else 409)
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        headers={"Content-Type": "application/dicom+json"},
    )


async def _read_part(part: BodyPartReader) -> bytes:
    buffer = io.BytesIO()
    while chunk := await part.read_chunk(1024 * 1024):
        buffer.write(chunk)
        if buffer.tell() > MAX_PART:
            raise ApiError(413, "part_too_large", "One uploaded object exceeds 2 GiB.")
    return buffer.getvalue()


def _identify(data: bytes, study: str | None) -> PartOutcome:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError, TypeError) as exc:
        return PartOutcome(None, None, CANNOT_UNDERSTAND, f"not a DICOM Part 10 object ({exc})")
    if study is not None and str(ds.get("StudyInstanceUID", "")) != study:
        return PartOutcome(
            sop_class, sop_instance, STUDY_MISMATCH, f"{sop_instance} belongs to another study"
        )
    return PartOutcome(sop_class, sop_instance)


async def store_instances(request: web.Request, study: str | None) -> web.Response:
    """Read every ``application/dicom`` part, ingest it, and answer with the STOW result."""
    if request.content_type != "multipart/related":
        raise ApiError(
            415, "unsupported_media_type", 'Send multipart/related; type="application/dicom".'
        )
    reader = await request.multipart()
    outcomes: list[PartOutcome] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "Nested multipart bodies are not supported.")
        data = await _read_part(part)
        outcome = _identify(data, study)
        if outcome.failure is None:
            error = await request.app[INGEST].submit(data, source="stow")
            if error:
                outcome = PartOutcome(
                    outcome.sop_class, outcome.sop_instance, PROCESSING_FAILURE, error
                )
        outcomes.append(outcome)
    if not outcomes:
        raise ApiError(400, "empty_upload", "The upload holds no DICOM part.")
    return _response(outcomes, f"{request.url.origin()}/api/pacs/dicom-web/studies")
