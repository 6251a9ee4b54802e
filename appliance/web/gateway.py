"""The DICOMweb gateway's rules: which request shapes exist, and where nginx fetches them.

The app never sends image bytes on reads. For each validated request it names an
``internal;`` nginx location in ``X-Accel-Redirect``:

* ``/internal-frames/...`` — frames (and rendered/thumbnail JPEGs) prepared at ingest as
  ready-to-send files. Debian's Orthanc 1.10.1 cannot serve frames of HTJ2K instances
  through DICOMweb (design.md fact 2); the files can, with sendfile, at the speed of
  static files. See ``docs/frames.md`` for the measurements behind this choice.
* ``/internal-metadata/...`` — series metadata prepared at ingest (gzipped DICOM JSON,
  :mod:`appliance.store.series_metadata`), sent by nginx with ``gzip_static``.
* ``/internal-orthanc/...`` — everything else (QIDO, other metadata, whole-instance retrieve,
  bulk data), fetched by nginx from Orthanc with credentials only nginx holds.

Everything here is pure: parse, validate, build paths. The aiohttp handlers live in
:mod:`appliance.web.dicomweb`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from appliance import internal_locations
from appliance.store import frame_files, series_metadata
from appliance.store.frame_files import frame_relpath, image_relpath
from appliance.store.orthanc import DICOMWEB_ROOT
from appliance.uids import MAX_UID_LENGTH, UID_PATTERN, is_valid_uid

FRAMES_RE = re.compile(r"^[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,99}$")
QUERY_KEY_RE = re.compile(
    r"^([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})(\.([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})){0,3}$"
)
SINGLE_FRAME_RE = re.compile(
    rf"studies/(?P<study>{UID_PATTERN})/series/(?P<series>{UID_PATTERN})"
    rf"/instances/(?P<instance>{UID_PATTERN})/frames/(?P<frame>[1-9][0-9]{{0,5}})"
)
TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
SPECIAL_KEYS = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
MAX_VALUE = 1024
# Sent to Orthanc as they are: Orthanc 1.10.1 does not percent-decode query values, so an
# encoded wildcard (%2A), name separator (%5E) or value list (%2C) matched nothing. None of
# them can end a key or a value (& = # % stay encoded).
QUERY_LITERALS = "*?^,"
QIDO_RESOURCES = ("studies", "series", "instances")
INSTANCE_ACTIONS = ("metadata", "rendered", "thumbnail", "frames", "bulk")
SERIES_ACTIONS = ("metadata", "rendered", "thumbnail", "instances")
STUDY_ACTIONS = ("metadata", "rendered", "thumbnail", "series", "instances")

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


class BadRequest(ValueError):
    """A request the gateway refuses; the message says why."""


@dataclass(frozen=True)
class Target:
    """A parsed DICOMweb request path.

    ``action`` is ``"search"`` (QIDO), ``"retrieve"`` (WADO-RS of the resource), or
    ``metadata``, ``rendered``, ``thumbnail``, ``frames``, ``bulk``.
    """

    resource: str
    action: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    frames: tuple[int, ...] = ()
    frame_action: str | None = None
    bulk: str | None = None

    @property
    def path(self) -> str:
        """The DICOMweb path below the root, rebuilt from validated parts only."""
        parts: list[str] = []
        for name, uid in (
            ("studies", self.study),
            ("series", self.series),
            ("instances", self.instance),
        ):
            if uid:
                parts += [name, uid]
        if self.action == "search":
            parts.append(self.resource)
        elif self.action == "frames":
            parts += ["frames", ",".join(map(str, self.frames))]
            if self.frame_action:
                parts.append(self.frame_action)
        elif self.action == "bulk":
            parts += ["bulk", self.bulk or ""]
        elif self.action != "retrieve":
            parts.append(self.action)
        return "/".join(parts)


def check_raw_path(raw_path: str) -> None:
    """Refuse encodings that could smuggle a different path past the parser."""
    path = raw_path.split("?", 1)[0]  # the query is parsed and re-encoded separately
    if "%" in path:
        raise BadRequest("percent-encoded characters are not allowed in DICOMweb paths")
    if ".." in path or "//" in path or "\\" in path:
        raise BadRequest("the path contains '..', '//' or '\\'")


def _uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise BadRequest(f"{what} is not a valid UID (digits and dots, at most 64 characters)")
    return value


def parse_path(tail: str) -> Target:
    """Parse the path below ``/api/pacs/dicom-web/``; :class:`BadRequest` if unknown."""
    parts = tail.strip("/").split("/") if tail.strip("/") else []
    if len(parts) == 1 and parts[0] in QIDO_RESOURCES:
        return Target(parts[0], "search")
    if len(parts) < 2 or parts[0] != "studies":
        raise BadRequest("unknown DICOMweb path")
    study = _uid(parts[1], "StudyInstanceUID")
    rest = parts[2:]
    if not rest:
        return Target("studies", "retrieve", study)
    if rest[0] != "series" or len(rest) == 1:
        return _leaf("studies", rest, STUDY_ACTIONS, study=study)
    series = _uid(rest[1], "SeriesInstanceUID")
    rest = rest[2:]
    if not rest:
        return Target("series", "retrieve", study, series)
    if rest[0] != "instances" or len(rest) == 1:
        return _leaf("series", rest, SERIES_ACTIONS, study=study, series=series)
    instance = _uid(rest[1], "SOPInstanceUID")
    return _instance_target(rest[2:], study, series, instance)


def parse_single_frame(tail: str) -> Target | None:
    """The commonest request, one frame of an instance, in one regular expression.

    Accepts only paths that :func:`parse_path` accepts, and returns the same target;
    ``None`` for anything else (then ask :func:`parse_path`). The viewer's hot path.
    """
    match = SINGLE_FRAME_RE.fullmatch(tail)
    if match is None:
        return None
    study, series, instance = match.group("study", "series", "instance")
    if max(len(study), len(series), len(instance)) > MAX_UID_LENGTH:
        return None
    return Target("instances", "frames", study, series, instance, (int(match["frame"]),))


def _leaf(level: str, rest: list[str], actions: tuple[str, ...], **uids: str) -> Target:
    if len(rest) != 1 or rest[0] not in actions:
        raise BadRequest("unknown DICOMweb path")
    if rest[0] in QIDO_RESOURCES:
        return Target(rest[0], "search", **uids)
    return Target(level, rest[0], **uids)


def _instance_target(rest: list[str], study: str, series: str, instance: str) -> Target:
    uids = {"study": study, "series": series, "instance": instance}
    if not rest:
        return Target("instances", "retrieve", **uids)
    action = rest[0]
    if action in ("metadata", "rendered", "thumbnail") and len(rest) == 1:
        return Target("instances", action, **uids)
    if action == "frames" and len(rest) in (2, 3):
        if not FRAMES_RE.match(rest[1]):
            raise BadRequest("frame numbers must be a comma-separated list of integers from 1")
        frame_action = rest[2] if len(rest) == 3 else None
        if frame_action not in (None, "rendered", "thumbnail"):
            raise BadRequest("unknown DICOMweb path")
        frames = tuple(int(n) for n in rest[1].split(","))
        return Target("instances", "frames", **uids, frames=frames, frame_action=frame_action)
    if action == "bulk" and len(rest) == 2 and is_bulk_path(rest[1]):
        return Target("instances", "bulk", **uids, bulk=rest[1])
    raise BadRequest("unknown DICOMweb path")


def is_bulk_path(value: str) -> bool:
    """Whether ``value`` names bulk data: a tag, then ``.index`` or ``.index.tag`` steps.

    For example ``7FE00010`` or ``00081140.1.00081150``. One pass over the dot-separated
    steps (a regular expression with nested repeats backtracked exponentially here); an
    all-digit step is an index whenever it can be one, which accepts the most.
    """
    steps = value.split(".")
    if not TAG_RE.fullmatch(steps[0]):
        return False
    after_index = False
    for step in steps[1:]:
        if step.isascii() and step.isdigit():
            after_index = True
        elif after_index and TAG_RE.fullmatch(step):
            after_index = False
        else:
            return False
    return True


def checked_query(
    pairs: list[tuple[str, str]], study_only: str | None = None
) -> list[tuple[str, str]]:
    """Validate QIDO/WADO query parameters (:class:`BadRequest` names the first wrong one).

    ``study_only`` pins the search to one study (share links): any StudyInstanceUID the
    client sent is replaced.
    """
    cleaned: list[tuple[str, str]] = []
    for key, value in pairs:
        if key not in SPECIAL_KEYS and not QUERY_KEY_RE.match(key):
            raise BadRequest(f"unknown query parameter {key[:40]!r}")
        if len(value) > MAX_VALUE or any(ord(c) < 32 for c in value):
            raise BadRequest(f"the value of {key} is too long or contains control characters")
        if key in ("limit", "offset") and not value.isdigit():
            raise BadRequest(f"{key} must be a non-negative integer")
        if study_only and key in ("StudyInstanceUID", "0020000D"):
            continue
        cleaned.append((key, value))
    if study_only:
        cleaned.append(("StudyInstanceUID", study_only))
    return cleaned


def encoded_query(pairs: list[tuple[str, str]]) -> str:
    """Checked query parameters encoded for Orthanc (see :data:`QUERY_LITERALS`)."""
    return urlencode(pairs, quote_via=quote, safe=QUERY_LITERALS)


def clean_query(pairs: list[tuple[str, str]], study_only: str | None = None) -> str:
    """:func:`checked_query`'s parameters, :func:`encoded_query`."""
    return encoded_query(checked_query(pairs, study_only))


def orthanc_redirect(target: Target, query: str) -> str:
    """The ``X-Accel-Redirect`` URI that has nginx fetch ``target`` from Orthanc."""
    uri = f"{internal_locations.ORTHANC}{DICOMWEB_ROOT}/{target.path}"
    return f"{uri}?{query}" if query else uri


def orthanc_accept(target: Target, accept: str) -> str:
    """The ``Accept`` header nginx sends Orthanc: a generic one made explicit.

    Orthanc's DICOMweb plugin refuses frame requests whose media type is ``*/*`` (some
    clients' default); they mean "any transfer syntax". A retrieve that names no transfer
    syntax (no Accept, ``*/*``, or ``application/dicom`` alone, dicomweb-client's default)
    gets the objects as stored: Orthanc 1.10.1 would try to transcode HTJ2K to Explicit VR
    Little Endian, fail and answer 500. Each part's transfer syntax is in its file meta.
    """
    if target.action == "frames" and target.frame_action is None and _any_type(accept):
        return 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    if target.action == "retrieve" and (
        _any_type(accept) or ("application/dicom" in accept and "transfer-syntax" not in accept)
    ):
        return 'multipart/related; type="application/dicom"; transfer-syntax=*'
    return accept


def _any_type(accept: str) -> bool:
    return not accept or '"*/*"' in accept or accept.strip() == "*/*"


def frame_file_redirect(target: Target) -> str:
    """The ``X-Accel-Redirect`` URI of a prepared frame file (a one-part multipart body)."""
    path = frame_relpath(target.study, target.series, target.instance, target.frames[0])
    return f"{frame_files.LOCATION}/{path}"


def image_file_redirect(target: Target, kind: str) -> str:
    """The ``X-Accel-Redirect`` URI of a prepared ``rendered`` or ``thumbnail`` JPEG."""
    path = image_relpath(target.study, target.series, target.instance, kind)
    return f"{frame_files.LOCATION}/{path}"


def series_metadata_redirect(target: Target) -> str:
    """The ``X-Accel-Redirect`` URI of a series' prepared metadata file."""
    assert target.study is not None and target.series is not None
    path = series_metadata.served_relpath(target.study, target.series)
    return f"{series_metadata.LOCATION}/{path}"


def accepts_json(accept: str) -> bool:
    """Whether DICOM JSON satisfies this ``Accept`` header (the prepared metadata is JSON;
    Orthanc answers the XML form)."""
    return not accept or "*/*" in accept or "json" in accept


@functools.lru_cache(maxsize=256)
def accepts_stored_htj2k(accept: str) -> bool:
    """Whether objects or frames as stored (HTJ2K) satisfy this ``Accept`` header.

    True for ``transfer-syntax=*``, an explicit HTJ2K request, a bare
    ``multipart/related; type="application/octet-stream"`` or any-type: the part's
    Content-Type names the real transfer syntax, as PS3.18 8.7.3.5 allows for ``*``.
    """
    if not accept or "*/*" in accept:
        return True
    for option in accept.split(","):
        if "transfer-syntax" not in option:
            if "application/octet-stream" in option or "multipart/related" in option:
                return True
            continue
        syntax = option.partition("transfer-syntax=")[2].split(";")[0].strip().strip('"')
        if syntax in ("*", HTJ2K_LOSSLESS):
            return True
    return False
