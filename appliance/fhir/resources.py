"""Build FHIR R4 resources (plain dicts, ready for JSON) from the worklist index's rows.

Pure functions: the rows come from :mod:`appliance.fhir.index`, the URLs from the caller.
DICOM's mapping to ImagingStudy follows the FHIR R4 ImagingStudy page (identifier
``urn:dicom:uid`` / ``urn:oid:<Study Instance UID>``, modalities from DICOM's DCM code
system, SOP Classes as ``urn:oid:`` codes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from appliance.db import patient_key

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_ID = "dicomweb"
DICOMWEB_PATH = "/api/pacs/dicom-web"
Resource = dict[str, Any]


def fhir_meta(iso: str | None) -> Resource | None:
    """``meta.lastUpdated`` from an ISO 8601 timestamp of the index (UTC, seconds)."""
    return {"lastUpdated": iso.replace("+00:00", "Z")} if iso else None


def fhir_date(dicom_date: str | None) -> str | None:
    """A DICOM DA (``YYYYMMDD``) as a FHIR date; ``None`` when it is not a valid date
    (``strptime`` alone would take ``2024013`` for January 3rd)."""
    if not (dicom_date and len(dicom_date) == 8 and dicom_date.isdigit()):
        return None
    try:
        return datetime.strptime(dicom_date, "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def fhir_started(dicom_date: str | None, dicom_time: str | None) -> str | None:
    """Study Date and Time as a FHIR dateTime.

    DICOM dates and times carry no zone; a FHIR dateTime with a time must. They are read
    as the appliance's local time (the modality's clinic); a date alone stays a date.
    """
    day = fhir_date(dicom_date)
    digits = (dicom_time or "").split(".")[0]
    if day is None or not digits.isdigit() or len(digits) not in (2, 4, 6):
        return day
    try:
        local = datetime.strptime(dicom_date + digits.ljust(6, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return day
    return local.astimezone().isoformat(timespec="seconds")


def _unsigned(value: str | None) -> int | None:
    text = (value or "").strip()
    return int(text) if text.isdigit() and int(text) < 2**31 else None


def _dicom_name(name: str | None) -> Resource | None:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as a FHIR HumanName."""
    alphabetic = (name or "").split("=")[0]
    if not alphabetic.strip("^ "):
        return None
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    human: Resource = {"use": "official", "text": " ".join(p for p in (given, middle, family) if p)}
    if family:
        human["family"] = family
    if given or middle:
        human["given"] = [p for p in (given, *middle.split()) if p]
    if prefix:
        human["prefix"] = [prefix]
    if suffix:
        human["suffix"] = [suffix]
    return human


def person_name(name: str | None) -> str:
    """A DICOM PN as display text (``Given Middle Family``); ``""`` when empty."""
    human = _dicom_name(name)
    return human["text"] if human else ""


def _drop_empty(resource: Resource) -> Resource:
    return {k: v for k, v in resource.items() if v not in (None, "", [], {})}


def patient_identifier(patient_id: str, system: str) -> Resource:
    """The Identifier of a DICOM Patient ID (type MR; ``system`` when the clinic set one)."""
    coding = {"system": V2_0203, "code": "MR", "display": "Medical record number"}
    return _drop_empty({"type": {"coding": [coding]}, "system": system, "value": patient_id})


def build_patient(row: dict[str, Any], id_system: str) -> Resource:
    """A FHIR R4 Patient from the DICOM demographics of the patient's latest study.

    Parameters
    ----------
    row
        The index's patient row (:func:`appliance.fhir.index.patient_rows`): keys
        ``patient_id``, ``patient_name`` (DICOM PN), ``patient_birth_date`` (DA),
        ``patient_sex`` (``M``/``F``/``O``) and ``updated_at``.
    id_system
        ``[fhir] patient_id_system``: the Identifier system of DICOM Patient IDs (the
        clinic's medical record numbers), or ``""`` for none.

    Returns
    -------
    dict
        ``{"resourceType": "Patient", "id": patient_key(ID), "identifier": [{"type": MR,
        "system": id_system, "value": Patient ID}], "name": [HumanName], "gender",
        "birthDate"}``; the identifier is left out for a study without a Patient ID,
        name/gender/birthDate when DICOM has none.
    """
    patient_id = row["patient_id"] or ""
    name = _dicom_name(row.get("patient_name"))
    gender = {"M": "male", "F": "female", "O": "other"}.get((row.get("patient_sex") or "").upper())
    return _drop_empty(
        {
            "resourceType": "Patient",
            "id": patient_key(patient_id),
            "meta": fhir_meta(row.get("updated_at")),
            "identifier": [patient_identifier(patient_id, id_system)] if patient_id else [],
            "name": [name] if name else [],
            "gender": gender,
            "birthDate": fhir_date(row.get("patient_birth_date")),
        }
    )


def build_endpoint(origin: str) -> Resource:
    """The Endpoint of the appliance's DICOMweb service (WADO-RS, QIDO-RS, STOW-RS) as
    users reach it at ``origin`` (:func:`appliance.public_origin.public_origin`)."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "NeuroNova DICOMweb",
        "payloadType": [{"text": "DICOM", "coding": [{"system": DCM_SYSTEM, "code": "DICOM"}]}],
        "payloadMimeType": ["application/dicom"],
        "address": origin.rstrip("/") + DICOMWEB_PATH,
    }


def study_identifiers(study: dict[str, Any]) -> list[Resource]:
    """The Study Instance UID as ``urn:dicom:uid``/``urn:oid:``, and the accession number."""
    ids = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study['study_uid']}"}]
    if study.get("accession"):
        coding = {"system": V2_0203, "code": "ACSN"}
        ids.append({"type": {"coding": [coding]}, "value": study["accession"]})
    return ids


def _modality(code: str) -> Resource:
    return {"system": DCM_SYSTEM, "code": code}


def _series(series: dict[str, Any], instances: Sequence[dict[str, Any]]) -> Resource:
    body_part = series.get("body_part")
    return _drop_empty(
        {
            "uid": series["series_uid"],
            "number": _unsigned(series.get("number")),
            "modality": _modality(series.get("modality") or "OT"),
            "description": series.get("description"),
            "numberOfInstances": len(instances),
            "bodySite": {"display": body_part} if body_part else None,
            "instance": [_instance(i) for i in instances],
        }
    )


def _instance(instance: dict[str, Any]) -> Resource:
    """An instance; ``sopClass`` (required by R4) is left out only for an object that
    arrived without a SOP Class UID, rather than invented."""
    sop_class = instance.get("sop_class")
    return _drop_empty(
        {
            "uid": instance["sop_uid"],
            "sopClass": {"system": SOP_CLASS_SYSTEM, "code": f"urn:oid:{sop_class}"}
            if sop_class
            else None,
            "number": _unsigned(instance.get("number")),
        }
    )


def build_imaging_study(
    study: dict[str, Any],
    series: Iterable[dict[str, Any]],
    instances: Iterable[dict[str, Any]],
    subject: Resource,
    endpoint: Resource,
) -> Resource:
    """A FHIR R4 ImagingStudy of one study: its stored series and instances.

    ``study``, ``series`` and ``instances`` are index rows (:mod:`appliance.fhir.index`);
    ``subject`` and ``endpoint`` are the References to the Patient and the DICOMweb
    Endpoint (relative on the read API, self-contained in a push). A study none of whose
    objects is stored yet is ``registered``, otherwise ``available``.
    """
    by_series: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        by_series.setdefault(instance["series_uid"], []).append(instance)
    listed = [_series(s, by_series[uid]) for s in series if (uid := s["series_uid"]) in by_series]
    count = sum(len(v) for v in by_series.values())
    return _drop_empty(
        {
            "resourceType": "ImagingStudy",
            "id": study["study_uid"],
            "meta": fhir_meta(study.get("updated_at")),
            "identifier": study_identifiers(study),
            "status": "available" if count else "registered",
            "modality": [_modality(m) for m in (study.get("modalities") or "").split(",") if m],
            "subject": subject,
            "started": fhir_started(study.get("study_date"), study.get("study_time")),
            "endpoint": [endpoint],
            "numberOfSeries": len(listed),
            "numberOfInstances": count,
            "description": study.get("description"),
            "series": listed,
        }
    )


def operation_outcome(severity: str, code: str, message: str) -> Resource:
    """An OperationOutcome with one issue (``code`` from FHIR's issue-type value set)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


def searchset(
    entries: Sequence[tuple[str, Resource]], total: int, links: Sequence[tuple[str, str]]
) -> Resource:
    """A searchset Bundle: ``entries`` are (full URL, resource), ``links`` (relation, URL)."""
    return _drop_empty(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": rel, "url": url} for rel, url in links],
            "entry": [
                {"fullUrl": url, "resource": resource, "search": {"mode": "match"}}
                for url, resource in entries
            ],
        }
    )
