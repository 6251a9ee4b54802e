"""FHIR search parameters: parsed, checked and bounded before any SQL is built.

Every parser here is a single pass over a value of bounded length (no regular expression
with nested repeats), and a request may carry a bounded number of parameters, so an
adversarial query string costs time linear in its (already limited) length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from appliance.fhir.resources import DCM_SYSTEM, DICOM_UID_SYSTEM
from appliance.uids import is_valid_uid

DEFAULT_COUNT = 20
MAX_COUNT = 50  # an ImagingStudy lists every instance: 50 of them can be megabytes
MAX_OFFSET = 1_000_000
MAX_PARAMS = 30
MAX_VALUE = 256
MAX_ALTERNATIVES = 20
FHIR_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MODALITY_RE = re.compile(r"[A-Z0-9_]{1,16}")
DATE_RE = re.compile(
    r"(?P<prefix>[a-z]{2})?(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(\.\d{1,9})?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
PAGING = ("_count", "_offset")
IGNORED = ("_format",)  # accepted for clients that send it; the answer is always JSON
JSON_FORMATS = ("json", "application/json", "application/fhir+json")


class SearchError(ValueError):
    """A search the server refuses (HTTP 400); the message says which parameter and why."""


@dataclass(frozen=True)
class Page:
    """Which part of the matches to return."""

    count: int = DEFAULT_COUNT
    offset: int = 0


@dataclass(frozen=True)
class Search:
    """A parsed search.

    ``groups`` are (field, values) pairs: each group matches when the row's field has one
    of its values (an empty tuple matches nothing), and every group must match. ``since``
    and ``before`` bound the study's start (14-digit ``YYYYMMDDhhmmss``, inclusive and
    exclusive). ``used`` are the parameters applied, for the Bundle's self link.
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    since: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    page: Page = field(default_factory=Page)
    used: tuple[tuple[str, str], ...] = ()


Parser = Callable[[str, str], "str | None"]  # (value, id system) -> value, None: no match


def _uid(value: str) -> str:
    if not is_valid_uid(value):
        raise SearchError(f"{value[:80]!r} is not a DICOM UID (digits and dots, 64 at most)")
    return value


def _split_token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system, code) if bar else (None, value)


UID_KEY, ACCESSION_KEY, ANY_KEY = "uid:", "accession:", "any:"


def study_identifier(value: str, _system: str = "") -> str | None:
    """An ImagingStudy identifier token -> ``uid:<UID>`` or ``accession:<number>``.

    ``urn:dicom:uid|urn:oid:<UID>``, ``urn:dicom:uid|<UID>`` and ``urn:oid:<UID>`` name
    the Study Instance UID; ``|<value>`` (no system) the accession number, which has no
    system here; a bare value either (``any:``). ``None`` for another system: it matches
    no study.
    """
    system, code = _split_token(value)
    if system == DICOM_UID_SYSTEM or (system is None and code.startswith("urn:oid:")):
        return UID_KEY + _uid(code.removeprefix("urn:oid:"))
    if system == "":
        return ACCESSION_KEY + code
    return ANY_KEY + code if system is None else None


def fhir_id(value: str, _system: str = "") -> str:
    """A resource id as FHIR allows it; :class:`SearchError` otherwise."""
    if not FHIR_ID_RE.fullmatch(value):
        raise SearchError(f"{value[:80]!r} is not a FHIR id")
    return value


def patient_reference(value: str, _system: str = "") -> str:
    """``Patient/<id>``, a full URL ending so, or a bare id -> the Patient's id."""
    kind, _, ident = value.rstrip("/").rpartition("/")
    if kind and not kind.endswith("Patient"):
        raise SearchError(f"{value[:80]!r} does not reference a Patient")
    return fhir_id(ident)


def patient_identifier(value: str, id_system: str) -> str | None:
    """``system|value`` or ``value`` -> the DICOM Patient ID; ``None`` for another system."""
    system, code = _split_token(value)
    if system is not None and system != id_system:
        return None
    return code


def modality(value: str, _system: str = "") -> str | None:
    """``CT`` or ``<DCM system>|CT`` -> the modality; ``None`` for another system."""
    system, code = _split_token(value)
    if system not in (None, "", DCM_SYSTEM):
        return None
    if not MODALITY_RE.fullmatch(code):
        raise SearchError(f"{code[:40]!r} is not a DICOM modality code")
    return code


def name_part(value: str, _system: str = "") -> str:
    """A name to match the start of any part of a patient's name (case-insensitive)."""
    text = " ".join(value.split())
    if not text or len(text) > 64:
        raise SearchError("name must hold 1-64 characters")
    return text


STUDY_PARAMS: dict[str, tuple[str, Parser]] = {
    "_id": ("study_uid", lambda v, s: _uid(v)),
    "identifier": ("identifier", study_identifier),
    "patient": ("patient_key", patient_reference),
    "subject": ("patient_key", patient_reference),
    "patient.identifier": ("patient_id", patient_identifier),
    "subject:Patient.identifier": ("patient_id", patient_identifier),
    "modality": ("modality", modality),
}
PATIENT_PARAMS: dict[str, tuple[str, Parser]] = {
    "_id": ("patient_key", fhir_id),
    "identifier": ("patient_id", patient_identifier),
    "name": ("name", name_part),
}
DATE_PARAMS = {"ImagingStudy": ("started",), "Patient": ()}
SEARCH_PARAMS = {"ImagingStudy": STUDY_PARAMS, "Patient": PATIENT_PARAMS}


def _bounds(value: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A FHIR date search value -> (prefix, inclusive lower bounds, exclusive upper)."""
    match = DATE_RE.fullmatch(value)
    if match is None:
        raise SearchError(f"started: {value[:40]!r} is not a FHIR date (e.g. ge2024-01-31)")
    prefix = match["prefix"] or "eq"
    if prefix not in ("eq", "ge", "gt", "le", "lt"):
        raise SearchError(f"started: the prefix {prefix!r} is not supported (eq ge gt le lt)")
    parts = [match[k] for k in ("year", "month", "day", "hour", "minute", "second")]
    given = [int(p) for p in parts if p is not None]
    try:
        low = datetime(*given, *[1] * max(0, 3 - len(given)))  # type: ignore[misc]
    except ValueError:
        raise SearchError(f"started: {value[:40]!r} is not a valid date") from None
    high = _next_period(low, len(given))
    lo, hi = low.strftime("%Y%m%d%H%M%S"), high.strftime("%Y%m%d%H%M%S")
    since = {"eq": (lo,), "ge": (lo,), "gt": (hi,)}.get(prefix, ())
    before = {"eq": (hi,), "le": (hi,), "lt": (lo,)}.get(prefix, ())
    return prefix, since, before


def _next_period(start: datetime, precision: int) -> datetime:
    """The start of the period after the one ``start`` names at ``precision`` parts."""
    if precision == 1:
        return start.replace(year=start.year + 1) if start.year < 9999 else datetime.max
    if precision == 2:
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    step = {3: timedelta(days=1), 5: timedelta(minutes=1), 6: timedelta(seconds=1)}
    return start + step.get(precision, timedelta(hours=1))


def _page(pairs: Sequence[tuple[str, str]]) -> Page:
    values = dict(pairs)
    try:
        count = int(values.get("_count", DEFAULT_COUNT))
        offset = int(values.get("_offset", 0))
    except ValueError:
        raise SearchError("_count and _offset must be integers") from None
    if count < 0 or not 0 <= offset <= MAX_OFFSET:
        raise SearchError(f"_count must be 0 or more and _offset 0-{MAX_OFFSET}")
    return Page(min(count, MAX_COUNT), offset)


def parse_search(
    resource: str, pairs: Sequence[tuple[str, str]], id_system: str, lenient: bool = False
) -> Search:
    """Parse the query of a ``resource`` search; :class:`SearchError` for a refused one.

    ``lenient`` (``Prefer: handling=lenient``) ignores unknown parameters instead of
    refusing them; a bad value of a known parameter is refused either way.
    """
    if len(pairs) > MAX_PARAMS:
        raise SearchError(f"at most {MAX_PARAMS} search parameters")
    known, dates = SEARCH_PARAMS[resource], DATE_PARAMS[resource]
    groups, since, before, used = [], [], [], []
    for key, value in pairs:
        if len(value) > MAX_VALUE:
            raise SearchError(f"{key[:40]}: values are limited to {MAX_VALUE} characters")
        if key in PAGING or key in IGNORED:
            if key == "_format" and value not in JSON_FORMATS:
                raise SearchError("_format: only JSON is served")
            continue
        if key in dates:
            _, low, high = _bounds(value)
            since += low
            before += high
        elif key in known:
            name, parse = known[key]
            groups.append((name, _alternatives(key, value, parse, id_system)))
        elif lenient:
            continue
        else:
            raise SearchError(f"unknown search parameter {key[:40]!r} for {resource}")
        used.append((key, value))
    return Search(tuple(groups), tuple(since), tuple(before), _page(pairs), tuple(used))


def _alternatives(key: str, value: str, parse: Parser, id_system: str) -> tuple[str, ...]:
    items = value.split(",")
    if len(items) > MAX_ALTERNATIVES:
        raise SearchError(f"{key}: at most {MAX_ALTERNATIVES} comma-separated values")
    try:
        found = (parse(item, id_system) for item in items)
        return tuple(v for v in found if v is not None)
    except SearchError as exc:
        raise SearchError(f"{key}: {exc}") from None


def search_params(resource: str) -> list[str]:
    """The search parameters ``resource`` supports (the CapabilityStatement lists them)."""
    return [*SEARCH_PARAMS[resource], *DATE_PARAMS[resource]]
