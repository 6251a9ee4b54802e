"""STOW-RS (PS3.18 10.5): stream a ``multipart/related`` upload, part by part, into the
spool and ingest each part.

No part is held in memory: each is written to a file in the spool's ``incoming/`` a
chunk at a time, checked there (:func:`appliance.ingest.part10.scan_file`, as the receiver
checks a C-STORE data set) and moved into the spool. The whole upload may hold at most
``[web] max_upload_mb``, one object at most ``[dicom] max_object_mb``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import BodyPartReader, web
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from appliance.ingest.header import HEADER_KEYWORDS
from appliance.ingest.part10 import scan_file
from appliance.ingest.spool import Spool
from appliance.web.auth import identity
from appliance.web.errors import ApiError
from appliance.web.ingest import OUT_OF_RESOURCES
from appliance.web.inputs import browser_origin, content_encoding
from appliance.web.keys import INGEST, SETTINGS

MB = 1024**2
CHUNK = MB
MAX_PARTS = 10_000
# What pydicom's dcmwrite leaves out for a data set built in memory (design.md fact 13):
# the preamble and "DICM" before the File Meta Information (whose group, 0002, then comes
# first), and the meta's group length. Orthanc accepts such parts, and so do we,
# completing them as they are written to the spool.
PREAMBLE = bytes(128) + b"DICM"
META_GROUP = b"\x02\x00"
GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes
MAX_HEAD = 64 * 1024  # File Meta Information beyond this is not completed
# What reading a malformed object may raise (pydicom decodes values lazily).
UNREADABLE = (InvalidDicomError, AttributeError, ValueError, EOFError, TypeError, KeyError,
              NotImplementedError)  # fmt: skip
# PS3.18 Table 10.5.3-1 / PS3.7 Annex C failure reasons.
STUDY_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


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


class Upload:
    """One STOW-RS request's limits, and what it has used of them so far."""

    def __init__(self, max_upload: int, max_object: int, spool: Spool) -> None:
        self.max_upload, self.max_object, self.spool = max_upload, max_object, spool
        self.received = self.parts = self.stored = 0

    def check_length(self, length: int | None) -> None:
        """Refuse at once an upload whose declared length is over the limit."""
        if length is not None and length > self.max_upload:
            raise self._too_large()

    def count(self, size: int) -> None:
        """Count ``size`` more bytes received; 413 past ``max_upload``."""
        self.received += size
        if self.received > self.max_upload:
            raise self._too_large()

    def next_part(self) -> None:
        """Count one more part; 413 past :data:`MAX_PARTS`."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(413, "too_many_parts", f"Send at most {MAX_PARTS} objects per upload.",
                           stored=self.stored)  # fmt: skip

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "upload_too_large",
            f"One upload may hold at most {self.max_upload // MB} MB ([web] max_upload_mb); "
            "send the objects in smaller uploads.",
            stored=self.stored,
        )


def _meta_end(head: bytes) -> int | None:
    """Where the File Meta Information at the start of ``head`` ends (Explicit VR Little
    Endian, PS3.10 7.1); ``None`` if ``head`` ends first."""
    offset = 0
    while len(head) >= offset + 8:
        if head[offset : offset + 2] != META_GROUP:
            return offset
        if head[offset + 4 : offset + 6].decode("latin-1") in EXPLICIT_VR_LENGTH_32:
            if len(head) < offset + 12:
                return None
            offset += 12 + int.from_bytes(head[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(head[offset + 6 : offset + 8], "little")
    return None


def _part10_start(head: bytes, ended: bool) -> bytes | None:
    """A part's first bytes as a Part 10 file starts; ``None`` until enough have come.

    A part that starts with its File Meta Information gets the preamble, "DICM" and the
    meta's group length in front; anything else is left as it is (and checked later).
    """
    if len(head) < len(PREAMBLE) and not ended:
        return None
    if head[128:132] == b"DICM" or not head.startswith(META_GROUP):
        return head
    end = _meta_end(head)
    if end is None and not ended and len(head) < MAX_HEAD:
        return None
    if end is None or head.startswith(GROUP_LENGTH[:4]):
        return PREAMBLE + head
    return PREAMBLE + GROUP_LENGTH + end.to_bytes(4, "little") + head


async def _write_part(part: BodyPartReader, out: BinaryIO, upload: Upload) -> PartOutcome | None:
    """Copy one part into ``out`` a chunk at a time; the failure if it cannot be kept.

    A part larger than an object may be, or one that would leave the spool's disk short,
    is read to its end (the next part follows it) but not written further.
    """
    size, head, failure = 0, b"", None
    while chunk := await part.read_chunk(CHUNK):
        upload.count(len(chunk))
        size += len(chunk)
        if failure is None:
            failure = _refusal(size, upload)
        if failure is not None:
            continue
        if head is not None:
            head += chunk
            start = _part10_start(head, ended=False)
            if start is None:
                continue
            chunk, head = start, None
        await asyncio.to_thread(out.write, chunk)
    if head and failure is None:  # the part ended before its start was complete
        await asyncio.to_thread(out.write, _part10_start(head, ended=True))
    return failure


def _refusal(size: int, upload: Upload) -> PartOutcome | None:
    if size > upload.max_object:
        reason = f"an object is larger than {upload.max_object // MB} MB ([dicom] max_object_mb)"
    elif upload.spool.free_bytes() < upload.spool.min_free:
        reason = f"the appliance is out of disk space (less than {upload.spool.min_free // MB} MiB)"
    else:
        return None
    return PartOutcome(None, None, OUT_OF_RESOURCES, reason)


def _check_meta_size(path: Path) -> None:
    """Refuse File Meta Information that does not end within :data:`MAX_HEAD` bytes
    (pydicom would read all of a huge meta element into memory)."""
    with open(path, "rb") as fp:
        head = fp.read(len(PREAMBLE) + MAX_HEAD)
    if head[128:132] == b"DICM" and _meta_end(head[len(PREAMBLE) :]) is None:
        raise ValueError(f"its File Meta Information does not end within {MAX_HEAD // 1024} KB")


def _identify(path: Path, study: str | None, max_inflated: int) -> tuple[PartOutcome, Dataset]:
    """Check that a spooled part is a whole Part 10 object (of ``study``, if given)."""
    try:
        _check_meta_size(path)
        meta = read_file_meta_info(path)
        ds = scan_file(path, meta.TransferSyntaxUID, HEADER_KEYWORDS, max_inflated)
        _ = list(ds)  # decode the kept elements now: a bad one is this part's failure
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except UNREADABLE as exc:
        outcome = PartOutcome(None, None, CANNOT_UNDERSTAND, f"not a DICOM Part 10 object ({exc})")
        return outcome, Dataset()
    if study is not None and str(ds.get("StudyInstanceUID", "")) != study:
        reason = f"{sop_instance} belongs to another study"
        return PartOutcome(sop_class, sop_instance, STUDY_MISMATCH, reason), ds
    return PartOutcome(sop_class, sop_instance), ds


async def _store_part(
    request: web.Request, part: BodyPartReader, study: str | None, upload: Upload
) -> PartOutcome:
    """Spool one part, check it, and hand it to the ingest pipeline."""
    ingest = request.app[INGEST]
    partial = upload.spool.incoming / f"stow.{uuid.uuid4().hex}.part"
    try:
        with open(partial, "xb") as out:
            failure = await _write_part(part, out, upload)
        if failure is not None:
            return failure
        max_inflated = request.app[SETTINGS].dicom.max_inflated_mb * MB
        outcome, ds = await asyncio.to_thread(_identify, partial, study, max_inflated)
        if outcome.failure is not None:
            return outcome
        refused = await ingest.submit(partial, ds, source=f"stow:{identity(request).username}")
        if refused:
            return PartOutcome(outcome.sop_class, outcome.sop_instance, *refused)
        upload.stored += 1
        return outcome
    finally:
        partial.unlink(missing_ok=True)  # gone already once moved into the spool


async def _store_parts(
    request: web.Request, study: str | None, upload: Upload
) -> list[PartOutcome]:
    """Store each part in turn; :class:`ValueError` from a malformed multipart body."""
    reader = await request.multipart()
    outcomes: list[PartOutcome] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "Nested multipart bodies are not supported.")
        upload.next_part()
        outcomes.append(await _store_part(request, part, study, upload))
    return outcomes


async def store_instances(request: web.Request, study: str | None) -> web.Response:
    """Store every ``application/dicom`` part and answer with the STOW result."""
    if request.content_type != "multipart/related":
        raise ApiError(
            415, "unsupported_media_type", 'Send multipart/related; type="application/dicom".'
        )
    if content_encoding(request) is not None:
        raise ApiError(415, "unsupported_encoding", "Send STOW-RS uploads uncompressed.")
    settings = request.app[SETTINGS]
    upload = Upload(settings.web.max_upload_mb * MB, settings.dicom.max_object_mb * MB,
                    request.app[INGEST].ingest.spool)  # fmt: skip
    upload.check_length(request.content_length)
    try:
        outcomes = await _store_parts(request, study, upload)
    except ValueError as exc:  # aiohttp's multipart reader: no boundary, body ends early
        raise ApiError(400, "bad_multipart", f"The multipart body is malformed: {exc}.",
                       stored=upload.stored) from None  # fmt: skip
    if not outcomes:
        raise ApiError(400, "empty_upload", "The upload holds no DICOM part.")
    return _response(outcomes, f"{browser_origin(request)}/api/pacs/dicom-web/studies")
