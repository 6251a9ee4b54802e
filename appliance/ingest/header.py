"""What the journal reads of a received object's header: its identity, and the elements
it records for the worklist, FHIR and QIDO (the receiver parses only these)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from appliance.uids import is_valid_uid


@dataclass(frozen=True)
class Received:
    """The identity of one received object, read from its header."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    transfer_syntax: str


def header_text(ds: Dataset, keyword: str) -> str:
    """``keyword``'s value as text (at most 200 characters; empty if absent)."""
    value = ds.get(keyword, "")
    return "" if value is None else str(value)[:200]


def describe(ds: Dataset) -> Received:
    """The identity of a dataset; :class:`ValueError` if a UID is missing."""
    uids = {
        k: header_text(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    }
    missing = [k for k, v in uids.items() if not v]
    if missing:
        raise ValueError(f"the object has no {', '.join(missing)}")
    invalid = [k for k, v in uids.items() if not is_valid_uid(v)]
    if invalid:
        raise ValueError(f"invalid {', '.join(invalid)} (UIDs are digits and dots, at most 64)")
    meta = getattr(ds, "file_meta", Dataset())
    return Received(
        uids["SOPInstanceUID"],
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        header_text(ds, "SOPClassUID"),
        header_text(meta, "TransferSyntaxUID"),
    )


STUDY_KEYWORDS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "StudyDescription",
                  "AccessionNumber")  # fmt: skip
SERIES_KEYWORDS = ("Modality", "SeriesDescription", "SeriesNumber")
# Read for the FHIR resources (appliance.fhir): ImagingStudy and Patient.
FHIR_KEYWORDS = ("InstanceNumber", "BodyPartExamined", "PatientBirthDate", "PatientSex")
# Returned by QIDO study searches answered from the table (appliance.store.study_search).
QIDO_KEYWORDS = ("ReferringPhysicianName", "StudyID")
# Every header element describe() and Journal.record_received() read: the receiver parses
# only these (appliance.ingest.part10.scan).
HEADER_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                   *SERIES_KEYWORDS, *STUDY_KEYWORDS, *FHIR_KEYWORDS,
                   *QIDO_KEYWORDS)  # fmt: skip
