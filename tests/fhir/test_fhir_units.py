"""FHIR building blocks without a running appliance: search parsing, resources from
awkward DICOM values (each validated with fhir.resources' R4B models), the pushed form."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient

from appliance.cli import cli as neuronova_cli
from appliance.config import load_settings
from appliance.db import open_database, patient_key
from appliance.fhir.assemble import pushed_imaging_study
from appliance.fhir.push import (
    PushFailed,
    conditional_url,
    mark_deleted,
    overdue_pushes,
    push_authorization,
)
from appliance.fhir.query import MAX_COUNT, SearchError, parse_search
from appliance.fhir.resources import build_imaging_study, build_patient
from appliance.layout import HomeLayout


@pytest.mark.parametrize(
    ("value", "since", "before"),
    [
        ("2024", ("20240101000000",), ("20250101000000",)),
        ("ge2024-02", ("20240201000000",), ()),
        ("le2024-12-31", (), ("20250101000000",)),
        ("gt2024-01-15T10:15", ("20240115101600",), ()),
        ("lt2024-01-15T10:15:30Z", (), ("20240115101530",)),
        ("eq2024-02-29", ("20240229000000",), ("20240301000000",)),
    ],
)
def test_started_bounds(value, since, before):
    search = parse_search("ImagingStudy", [("started", value)], "")
    assert (search.since, search.before) == (since, before)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("foo", "1")], "unknown search parameter 'foo'"),
        ([("started", "sa2024")], "prefix 'sa' is not supported"),
        ([("started", "2023-02-29")], "not a valid date"),
        ([("modality", ",".join(["CT"] * 21))], "at most 20 comma-separated"),
        ([("modality", "CT")] * 31, "at most 30 search parameters"),
        ([("name", "x" * 257)], "limited to 256 characters"),
        ([("_count", "x")], "must be integers"),
        ([("patient", "Practitioner/1")], "does not reference a Patient"),
    ],
)
def test_refused_searches_say_why(pairs, message):
    with pytest.raises(SearchError, match=message):
        parse_search("ImagingStudy", pairs, "")


def test_lenient_ignores_unknown_parameters_only():
    search = parse_search("Patient", [("foo", "1"), ("name", "doe")], "", lenient=True)
    assert search.groups == (("name", ("doe",)),) and search.used == (("name", "doe"),)
    with pytest.raises(SearchError):
        parse_search("Patient", [("foo", "1"), ("_id", "bad id!")], "", lenient=True)


@pytest.mark.parametrize(
    ("token", "key"),
    [
        ("urn:dicom:uid|urn:oid:1.2.3", "uid:1.2.3"),
        ("urn:dicom:uid|1.2.3", "uid:1.2.3"),
        ("urn:oid:1.2.3", "uid:1.2.3"),
        ("|A-17", "accession:A-17"),
        ("12345", "any:12345"),
    ],
)
def test_study_identifier_tokens(token, key):
    search = parse_search("ImagingStudy", [("identifier", token)], "")
    assert search.groups == (("identifier", (key,)),)


def test_tokens_of_another_system_match_nothing():
    search = parse_search("Patient", [("identifier", "urn:other|X,urn:mrn|Y")], "urn:mrn")
    assert search.groups == (("patient_id", ("Y",)),)
    assert parse_search("ImagingStudy", [("_count", "999")], "").page.count == MAX_COUNT


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"patient_id": "", "patient_name": "", "patient_sex": "X",
          "patient_birth_date": "19991340"}, {"resourceType", "id"}),
        ({"patient_id": "7", "patient_name": "=山田^太郎", "patient_sex": "o"},
         {"resourceType", "id", "identifier", "gender"}),
        ({"patient_id": "7", "patient_name": "DOE^^^DR^JR", "updated_at": "2026-01-01T00:00:00Z"},
         {"resourceType", "id", "identifier", "name", "meta"}),
    ],
)  # fmt: skip
def test_patients_from_awkward_demographics_are_valid(row, expected):
    patient = build_patient(row, "")
    Patient.model_validate(patient)
    assert set(patient) == expected and patient["id"] == patient_key(row["patient_id"])


def test_a_study_with_nothing_stored_yet_is_registered_and_valid():
    study = {"study_uid": "1.2.3", "study_date": "2024013", "study_time": "99", "modalities": ""}
    series = [{"series_uid": "1.2.3.1", "number": "-4", "modality": ""}]
    resource = build_imaging_study(study, series, [], {"display": "x"}, {"reference": "Endpoint/e"})
    ImagingStudy.model_validate(resource)
    assert resource["status"] == "registered" and "series" not in resource
    assert "started" not in resource and resource["numberOfInstances"] == 0


def test_the_pushed_form_is_self_contained(tmp_path):
    db = open_database(tmp_path / "app.db")
    db["studies"].insert({"study_uid": "1.2.3", "patient_id": "P1", "patient_name": "DOE^J",
                          "study_date": "20240101", "modalities": "CT"})  # fmt: skip
    db["series"].insert({"series_uid": "1.2.3.1", "study_uid": "1.2.3", "modality": "CT",
                         "number": "1", "body_part": "HEAD"})  # fmt: skip
    db["instances"].insert({"sop_uid": "1.2.3.1.1", "study_uid": "1.2.3", "series_uid": "1.2.3.1",
                            "sop_class": "1.2.840.10008.5.1.4.1.1.2", "state": "stored",
                            "received_at": "x", "number": "1"})  # fmt: skip
    pushed = pushed_imaging_study(db, "1.2.3", "urn:mrn", "https://pacs.example")
    ImagingStudy.model_validate(pushed)
    assert pushed["subject"] == {"display": "J DOE", "identifier": {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "MR", "display": "Medical record number"}]},
        "system": "urn:mrn", "value": "P1"}}  # fmt: skip
    assert pushed["endpoint"] == [{"reference": "#dicomweb"}]
    assert pushed["contained"][0]["address"] == "https://pacs.example/api/pacs/dicom-web"
    assert pushed_imaging_study(db, "9.9", "", "https://x") is None


def test_the_conditional_update_url_encodes_the_token():
    assert conditional_url("https://fhir.example/r4/", "1.2.3") == (
        "https://fhir.example/r4/ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:1.2.3"
    )


def test_the_push_credential_is_stored_private_and_refused_when_readable(home, runner):
    args = ["config", "fhir-push-authorization", "--home", str(home)]
    assert runner.invoke(neuronova_cli, args, input="Bearer abc\n").exit_code == 0
    settings = load_settings(home, {"fhir.push_url": "https://fhir.example"}, environ={})
    path = HomeLayout(home).fhir_push_authorization_file
    assert path.stat().st_mode & 0o777 == 0o600 and push_authorization(settings) == "Bearer abc"
    empty = runner.invoke(neuronova_cli, args, input="\n")
    assert empty.exit_code == 2 and "Error: no secret on stdin" in empty.output
    path.chmod(0o644)
    with pytest.raises(PushFailed, match="readable by its owner only"):
        push_authorization(settings)
    assert runner.invoke(neuronova_cli, [*args, "--remove"]).exit_code == 0
    assert push_authorization(settings) is None


def test_deletions_and_overdue_pushes(tmp_path):
    db = open_database(tmp_path / "app.db")
    long_ago = "2000-01-01T00:00:00+00:00"
    rows = [("pushed", "pushed", long_ago), ("never", "pending", None), ("late", "pending", None)]
    for uid, state, pushed_at in rows:
        db["fhir_push"].insert({"study_uid": uid, "state": state, "pushed_at": pushed_at,
                                "due_at": long_ago, "generation": 1})  # fmt: skip
    mark_deleted(db, "pushed")
    mark_deleted(db, "never")
    assert {r["study_uid"]: r["state"] for r in db["fhir_push"].rows} == {
        "pushed": "pending",  # to be deleted from the FHIR server
        "late": "pending",
    }
    assert overdue_pushes(db) == ["late"]  # "pushed" is due now, not a minute ago
    assert overdue_pushes(db) == []  # queued once, due again a grace period later
