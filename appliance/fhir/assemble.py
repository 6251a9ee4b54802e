"""ImagingStudy resources for index rows, with their series, instances and references.

The read API references its own Patient and Endpoint (``Patient/<id>``,
``Endpoint/dicomweb``); a study pushed to another FHIR server is self-contained: the
patient by identifier, the DICOMweb Endpoint contained in the resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlite_utils

from appliance.db import patient_key
from appliance.fhir.index import Row, study_contents
from appliance.fhir.resources import (
    ENDPOINT_ID,
    Resource,
    build_endpoint,
    build_imaging_study,
    patient_identifier,
    person_name,
)

References = Callable[[Row], tuple[Resource, Resource]]


def read_references(study: Row) -> tuple[Resource, Resource]:
    """The subject and endpoint References of the read API (relative, resolvable here)."""
    subject: Resource = {"reference": f"Patient/{patient_key(study['patient_id'])}"}
    name = person_name(study.get("patient_name"))
    if name:
        subject["display"] = name
    return subject, {"reference": f"Endpoint/{ENDPOINT_ID}"}


def imaging_studies(
    db: sqlite_utils.Database, studies: list[Row], references: References = read_references
) -> list[Resource]:
    """One ImagingStudy per study row, in the rows' order (two queries for them all)."""
    series, instances = study_contents(db, [s["study_uid"] for s in studies])
    out = []
    for study in studies:
        subject, endpoint = references(study)
        uid = study["study_uid"]
        out.append(build_imaging_study(study, series[uid], instances[uid], subject, endpoint))
    return out


def pushed_imaging_study(
    db: sqlite_utils.Database, study_uid: str, id_system: str, origin: str
) -> Resource | None:
    """The ImagingStudy of ``study_uid`` as it is pushed to a clinic's FHIR server.

    The subject is a logical reference (the Patient ID as identifier, the name as
    display): the clinic's server holds its own Patient resources. The DICOMweb
    Endpoint (at ``origin``) is contained, so the resource references nothing outside
    itself. ``None`` when the index has no such study (deleted).
    """
    rows = list(db.query("SELECT * FROM studies WHERE study_uid = ?", [study_uid]))
    if not rows:
        return None

    def references(study: Row) -> tuple[Resource, Resource]:
        subject: dict[str, Any] = {"display": person_name(study.get("patient_name")) or "unknown"}
        if study.get("patient_id"):
            subject["identifier"] = patient_identifier(study["patient_id"], id_system)
        return subject, {"reference": f"#{ENDPOINT_ID}"}

    resource = imaging_studies(db, rows, references)[0]
    resource.pop("meta", None)  # the receiving server keeps its own
    return {**resource, "contained": [build_endpoint(origin)]}
