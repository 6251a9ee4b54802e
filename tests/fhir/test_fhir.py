"""The FHIR R4 read API at /api/fhir/ and the push to a clinic's FHIR server, end to end.

No real FHIR server installs here: HAPI FHIR is a Maven artifact and Maven Central does
not resolve from this network, the npm FHIR servers need Postgres and Redis or are
frameworks without storage. The push is tested against :class:`FhirStandIn`, a
conditional-update endpoint in the test process that validates every body with
``fhir.resources`` and answers as HAPI FHIR does (201 created, 200 updated, 400 with an
OperationOutcome for an invalid resource or one whose identifier is not the URL's).

Real appliance (nginx, app, Orthanc, worker), studies sent with dcmtk's storescu. Every
resource and Bundle is validated with ``fhir.resources`` (its R4B models: version 8
ships R4B and R5, not 4.0.1 itself; R4B's ImagingStudy, Patient, Endpoint, Bundle and
OperationOutcome are R4's) and read with ``fhirclient`` (whose models are R4 4.0.1 and
refuse unknown elements) against the running appliance.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhirclient.models.imagingstudy import ImagingStudy as ClientImagingStudy
from fhirclient.models.patient import Patient as ClientPatient
from fhirclient.server import FHIRServer
from pydicom.uid import generate_uid

from appliance.db import open_database, patient_key
from tests.support.clients import api_token
from tests.support.running import make_appliance, run_cli, storescu, wait_stored
from tests.support.samples import native_dataset
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
PASSWORD = "fhir test password"
MODELS = {"ImagingStudy": ImagingStudy, "Patient": Patient, "Endpoint": Endpoint,
          "Bundle": Bundle, "OperationOutcome": OperationOutcome,
          "CapabilityStatement": CapabilityStatement}  # fmt: skip
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def validated(resource: dict) -> dict:
    """``resource`` after the R4B model of its type (and of every entry) accepted it."""
    MODELS[resource["resourceType"]].model_validate(resource)
    for entry in resource.get("entry", []):
        MODELS[entry["resource"]["resourceType"]].model_validate(entry["resource"])
    return resource


def write_study(folder: Path, count: int, **tags: object) -> tuple[str, list[Path], list[str]]:
    """``count`` CT slices of one new study with ``tags``; (study UID, files, SOP UIDs)."""
    study, series = generate_uid(), generate_uid()
    files, sops = [], []
    for number in range(1, count + 1):
        ds = native_dataset(np.full((8, 8), number, np.uint16), StudyInstanceUID=study,
                            SeriesInstanceUID=series, InstanceNumber=number, **tags)  # fmt: skip
        path = folder / f"{study}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sops.append(ds.SOPInstanceUID)
    return study, files, sops


PATIENT_A = {"PatientID": "FHIR-A-1", "PatientName": "DOE^JANE^Q", "PatientBirthDate": "19700102",
             "PatientSex": "F"}  # fmt: skip
PATIENT_B = {"PatientID": "B/7 #x", "PatientName": "ROE^RICHARD", "PatientSex": "M"}


@pytest.fixture(scope="module")
def fhir(appliance, tmp_path_factory):
    """Three studies (two of patient A, one of B) and a radiologist's token."""
    folder = tmp_path_factory.mktemp("fhir")
    made = {
        "a_ct": write_study(folder, 3, Modality="CT", StudyDate="20240115", StudyTime="101500",
                            SeriesNumber=2, BodyPartExamined="CHEST", AccessionNumber="ACC1",
                            StudyDescription="CT chest", **PATIENT_A),
        "a_mr": write_study(folder, 2, Modality="MR", StudyDate="20240320", StudyTime="080000",
                            SeriesNumber=1, **PATIENT_A),
        "b_ct": write_study(folder, 1, Modality="CT", StudyDate="20230601", **PATIENT_B),
    }  # fmt: skip
    files = [f for _, fs, _ in made.values() for f in fs]
    sent = storescu(appliance, files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, [s for _, _, sops in made.values() for s in sops])
    added = run_cli(appliance, "user", "add", "rad.fhir", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    token = api_token(appliance, "rad.fhir", PASSWORD)
    return {name: study for name, (study, _, _) in made.items()}, token


def get(appliance, path: str, token: str | None = None, **headers: str) -> requests.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{appliance.url}/api/fhir/{path}", headers=headers, timeout=10)


def fhir_json(resp: requests.Response, status: int = 200) -> dict:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    return validated(resp.json())


def test_metadata_lists_exactly_what_is_served(appliance):
    statement = fhir_json(get(appliance, "metadata"))
    assert statement["fhirVersion"] == "4.0.1"
    rest = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(rest) == {"ImagingStudy", "Patient", "Endpoint"}
    params = {p["name"] for p in rest["ImagingStudy"]["searchParam"]}
    assert params == {
        "_id",
        "identifier",
        "patient",
        "subject",
        "patient.identifier",
        "subject:Patient.identifier",
        "modality",
        "started",
        "_count",
        "_offset",
    }
    assert [i["code"] for i in rest["Endpoint"]["interaction"]] == ["read"]


def test_an_imaging_study_holds_its_series_and_instances(appliance, fhir):
    studies, token = fhir
    study = fhir_json(get(appliance, f"ImagingStudy/{studies['a_ct']}", token))
    assert study["identifier"][0] == {"system": "urn:dicom:uid",
                                      "value": f"urn:oid:{studies['a_ct']}"}  # fmt: skip
    assert study["identifier"][1]["value"] == "ACC1"
    assert study["status"] == "available"
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (1, 3)
    assert study["started"].startswith("2024-01-15T10:15:00")
    assert study["subject"] == {"reference": f"Patient/{patient_key('FHIR-A-1')}",
                                "display": "JANE Q DOE"}  # fmt: skip
    assert study["endpoint"] == [{"reference": "Endpoint/dicomweb"}]
    series = study["series"][0]
    assert series["number"] == 2 and series["modality"]["code"] == "CT"
    assert series["bodySite"] == {"display": "CHEST"}
    assert [i["number"] for i in series["instance"]] == [1, 2, 3]
    assert series["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986",
                                                 "code": f"urn:oid:{CT_IMAGE}"}  # fmt: skip


def test_reads_are_in_the_audit_trail(appliance, fhir):
    studies, token = fhir
    fhir_json(get(appliance, f"ImagingStudy/{studies['b_ct']}", token))
    fhir_json(get(appliance, f"Patient/{patient_key('B/7 #x')}", token))
    db = open_database(appliance.settings.layout.database_file)
    sql = (
        "SELECT study_uid, patient_id, detail FROM audit WHERE event = 'study_query' "
        "AND username = 'rad.fhir' AND detail LIKE '%fhir/%'"
    )
    rows = list(db.query(sql))
    db.close()
    seen = {(r["study_uid"], r["patient_id"], json.loads(r["detail"])["level"]) for r in rows}
    assert (studies["b_ct"], "B/7 #x", "fhir/ImagingStudy/id") in seen
    assert (None, "B/7 #x", "fhir/Patient/id") in seen


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_imaging_study_search(appliance, fhir):
    studies, token = fhir
    a = {studies["a_ct"], studies["a_mr"]}
    search = lambda query: fhir_json(get(appliance, f"ImagingStudy?{query}", token))  # noqa: E731
    assert set(ids(search("patient.identifier=FHIR-A-1"))) == a
    assert set(ids(search("subject:Patient.identifier=FHIR-A-1"))) == a
    assert set(ids(search(f"patient=Patient/{patient_key('FHIR-A-1')}"))) == a
    assert ids(search(f"identifier=urn:dicom:uid|urn:oid:{studies['b_ct']}")) == [studies["b_ct"]]
    assert ids(search(f"identifier={studies['b_ct']}")) == [studies["b_ct"]]
    assert ids(search(f"identifier=urn:other|urn:oid:{studies['b_ct']}")) == []
    assert ids(search("identifier=ACC1")) == ids(search("identifier=|ACC1")) == [studies["a_ct"]]
    both = "patient.identifier=FHIR-A-1,B/7 %23x"
    assert ids(search(f"{both}&modality=MR")) == [studies["a_mr"]]
    assert ids(search(f"{both}&started=ge2024-02&started=lt2024-04-01")) == [studies["a_mr"]]
    assert ids(search(f"{both}&started=2024-01-15")) == [studies["a_ct"]]
    assert ids(search(f"{both}&started=gt2024-01-15T10:15")) == [studies["a_mr"]]
    assert set(ids(search(f"{both}&started=le2024-01-15"))) == {studies["a_ct"], studies["b_ct"]}


def test_search_pages_with_links(appliance, fhir):
    studies, token = fhir
    query = "patient.identifier=FHIR-A-1,B/7 %23x&_count=2"
    first = fhir_json(get(appliance, f"ImagingStudy?{query}", token))
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert first["total"] == 3 and len(first["entry"]) == 2 and "previous" not in links
    second = fhir_json(requests.get(links["next"], timeout=10,
                                    headers={"Authorization": f"Bearer {token}"}))  # fmt: skip
    back = {link["relation"]: link["url"] for link in second["link"]}
    assert len(second["entry"]) == 1 and "next" not in back and "_offset=0" in back["previous"]
    assert set(ids(first) + ids(second)) == set(studies.values())
    big = fhir_json(get(appliance, "ImagingStudy?_count=100000", token))
    assert "_count=50" in big["link"][0]["url"]  # bounded to the maximum
    assert "entry" not in fhir_json(get(appliance, "ImagingStudy?_count=0", token))


def test_bundles_are_compressed(appliance, fhir):
    _, token = fhir
    query = "ImagingStudy?patient.identifier=FHIR-A-1,B/7 %23x"
    plain = get(appliance, query, token, **{"Accept-Encoding": "identity"})
    packed = requests.get(
        f"{appliance.url}/api/fhir/{query}",
        stream=True,
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    body = packed.raw.read(decode_content=False)
    assert json.loads(gzip.decompress(body)) == plain.json()
    assert len(body) * 3 < len(plain.content), (len(body), len(plain.content))


def test_patient_read_and_search(appliance, fhir):
    _, token = fhir
    key = patient_key("FHIR-A-1")
    patient = fhir_json(get(appliance, f"Patient/{key}", token))
    assert patient["identifier"][0]["value"] == "FHIR-A-1"
    assert patient["name"][0]["family"] == "DOE" and patient["name"][0]["given"] == ["JANE", "Q"]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1970-01-02")
    assert ids(fhir_json(get(appliance, "Patient?identifier=FHIR-A-1", token))) == [key]
    assert ids(fhir_json(get(appliance, "Patient?name=jan", token))) == [key]
    assert ids(fhir_json(get(appliance, "Patient?name=roe", token))) == [patient_key("B/7 #x")]
    assert ids(fhir_json(get(appliance, "Patient?name=%25", token))) == []  # LIKE escaped
    assert ids(fhir_json(get(appliance, f"Patient?_id={key}", token))) == [key]


def test_the_endpoint_is_the_public_dicomweb_base(appliance, fhir):
    _, token = fhir
    endpoint = fhir_json(get(appliance, "Endpoint/dicomweb", token))
    assert endpoint["address"] == f"{appliance.url}/api/pacs/dicom-web"  # as the caller came
    fhir_json(get(appliance, "Endpoint/other", token), 404)


def test_a_fhir_client_library_reads_the_appliance(appliance, fhir):
    """fhirclient (R4 models, strict) reads metadata, resources and follows paging."""
    studies, token = fhir
    server = FHIRServer(None, base_uri=f"{appliance.url}/api/fhir")
    server.session.headers["Authorization"] = f"Bearer {token}"
    server.get_capability()
    assert server.capabilityStatement.fhirVersion == "4.0.1"
    study = ClientImagingStudy.read(studies["a_ct"], server)
    assert study.series[0].instance[2].number == 3
    search = ClientImagingStudy.where({"patient.identifier": "FHIR-A-1,B/7 #x", "_count": "1"})
    found = list(search.perform_resources_iter(server))  # follows next links, a study a page
    assert sorted(s.id for s in found) == sorted(studies.values())
    patient = ClientPatient.read(patient_key("FHIR-A-1"), server)
    assert patient.birthDate.isostring == "1970-01-02"


def share_token(appliance, token: str, study: str) -> str:
    made = requests.post(f"{appliance.url}/api/shares", timeout=10, json={"study_uid": study},
                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    made.raise_for_status()
    return made.json()["token"]


def test_a_share_link_sees_only_its_study_and_patient(appliance, fhir):
    studies, token = fhir
    share = share_token(appliance, token, studies["a_ct"])
    every = fhir_json(get(appliance, "ImagingStudy?patient.identifier=FHIR-A-1", share))
    assert ids(every) == [studies["a_ct"]]
    assert ids(fhir_json(get(appliance, "ImagingStudy", share))) == [studies["a_ct"]]
    fhir_json(get(appliance, f"ImagingStudy/{studies['a_ct']}", share))
    fhir_json(get(appliance, f"ImagingStudy/{studies['a_mr']}", share), 403)
    assert ids(fhir_json(get(appliance, "Patient", share))) == [patient_key("FHIR-A-1")]
    assert ids(fhir_json(get(appliance, "Patient?identifier=B/7 %23x", share))) == []
    fhir_json(get(appliance, f"Patient/{patient_key('B/7 #x')}", share), 403)
    cookie = requests.get(f"{appliance.url}/api/fhir/ImagingStudy", timeout=10,
                          cookies={"nn_session": share})  # fmt: skip
    assert ids(fhir_json(cookie)) == [studies["a_ct"]]


@pytest.mark.parametrize(
    ("path", "token", "status", "issue"),
    [
        ("ImagingStudy", None, 401, "login"),
        ("ImagingStudy", "not.a.token", 401, "login"),
        ("Patient/" + "0" * 32, "staff", 404, "not-found"),
        ("ImagingStudy/1.2.3.4", "staff", 404, "not-found"),
        ("ImagingStudy/..%2F..", "staff", 404, "not-found"),
        ("Observation", "staff", 404, "not-found"),
        ("ImagingStudy?foo=bar", "staff", 400, "invalid"),
        ("ImagingStudy?identifier:exact=1.2.3", "staff", 400, "invalid"),
        ("ImagingStudy?started=ap2024", "staff", 400, "invalid"),
        ("ImagingStudy?started=2024-02-30", "staff", 400, "invalid"),
        ("ImagingStudy?identifier=urn:oid:1..2", "staff", 400, "invalid"),
        ("ImagingStudy?modality=ct;drop", "staff", 400, "invalid"),
        ("ImagingStudy?_count=-1", "staff", 400, "invalid"),
        ("Patient?_format=xml", "staff", 400, "invalid"),
    ],
)
def test_errors_are_operation_outcomes(appliance, fhir, path, token, status, issue):
    outcome = fhir_json(get(appliance, path, fhir[1] if token == "staff" else token), status)
    assert outcome["issue"][0]["code"] == issue and outcome["issue"][0]["diagnostics"]


def test_lenient_handling_ignores_unknown_parameters(appliance, fhir):
    studies, token = fhir
    query = f"ImagingStudy?_id={studies['a_mr']}&_elements=id&foo=bar"
    fhir_json(get(appliance, query, token), 400)
    found = fhir_json(get(appliance, query, token, Prefer="handling=lenient"))
    assert ids(found) == [studies["a_mr"]] and "foo" not in found["link"][0]["url"]


def test_a_post_is_not_supported(appliance, fhir):
    resp = requests.post(f"{appliance.url}/api/fhir/ImagingStudy", json={}, timeout=10,
                         headers={"Authorization": f"Bearer {fhir[1]}"})  # fmt: skip
    assert fhir_json(resp, 405)["issue"][0]["code"] == "not-supported"


ADVERSARIAL = [
    "started=" + "9" * 250,
    "started=ge" + "2024-01-01T00:00:00." + "9" * 230,
    "identifier=" + "|" * 250,
    "identifier=" + "urn:oid:" * 31,
    "patient=" + "Patient/" * 31,
    "modality=" + ",".join(["CT"] * 21),
    "&".join(f"modality=CT{i}" for i in range(31)),
    "name=" + "%25_" * 60,
    "patient.identifier=" + "a" * 300,
    "_count=" + "9" * 200,
    "_offset=" + "9" * 200,
    "identifier=" + ",".join(["1.2"] * 20) + "&" + "&".join(["_id=1.2"] * 28),
]


@pytest.mark.parametrize("query", ADVERSARIAL)
def test_an_adversarial_query_string_is_bounded(appliance, fhir, query):
    """Every parser is linear and every size limited: an answer (never 5xx) in about the
    time of a plain search (at most 10x its best of 3, measured beside it)."""
    plain = min(timed_get(appliance, "ImagingStudy?modality=CT", fhir[1])[1] for _ in range(3))
    resp, took = min((timed_get(appliance, f"ImagingStudy?{query}", fhir[1]) for _ in range(3)),
                     key=lambda answer: answer[1])  # fmt: skip
    assert resp.status_code in (200, 400), resp.text[:300]
    fhir_json(resp, resp.status_code)
    assert took < 10 * plain, f"{took * 1e3:.0f} ms; a plain search {plain * 1e3:.0f} ms"


def timed_get(appliance, path: str, token: str) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    resp = get(appliance, path, token)
    return resp, time.perf_counter() - started


def test_a_query_string_beyond_nginx_limit_is_refused(appliance, fhir):
    resp = get(appliance, "ImagingStudy?name=" + "a" * 20000, fhir[1])
    assert resp.status_code in (400, 414)


# ----------------------------------------------------------------- push (stand-in server)

PUSH_AUTH = "Bearer push-secret"


class FhirStandIn:
    """A stand-in for a clinic's FHIR server: ``PUT`` and ``DELETE``
    ``/fhir/ImagingStudy?identifier=...`` (conditional update and delete).

    Bodies are validated with the R4B ImagingStudy model; ``fail[study_uid]`` lists
    statuses to answer first (a 503 is transient, a 422 a refusal).
    """

    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        self.answers: list[tuple[str, int]] = []
        self.deleted: list[str] = []
        self.fail: dict[str, list[int]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fhir"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_DELETE(self) -> None:
                self.do_PUT()

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = standin.conditional_update(self, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def conditional_update(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict]:
        url = urlsplit(request.path)
        token = parse_qs(url.query).get("identifier", [""])[0]
        study = token.rpartition("urn:oid:")[2]
        status, answer = self._answer(request, url.path, token, study, body)
        self.answers.append((study, status))
        return status, answer

    def _answer(self, request, path, token, study, body) -> tuple[int, dict]:
        if request.headers.get("Authorization") != PUSH_AUTH:
            return 401, outcome("login", "no or wrong credentials")
        if path != "/fhir/ImagingStudy" or not token.startswith("urn:dicom:uid|urn:oid:"):
            return 400, outcome("invalid", f"not a conditional update: {request.path}")
        if self.fail.get(study):
            return self.fail[study].pop(0), outcome("exception", "the stand-in was told to fail")
        if request.command == "DELETE":  # a conditional delete
            self.stored.pop(study, None)
            self.deleted.append(study)
            return 200, outcome("informational", "deleted")
        resource = json.loads(body)
        try:
            ImagingStudy.model_validate(resource)
        except ValueError as exc:
            return 400, outcome("invalid", str(exc)[:300])
        if {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"} not in resource["identifier"]:
            return 400, outcome("invalid", "the resource's identifier is not the URL's")
        created = study not in self.stored
        self.stored[study] = {**resource, "id": f"s{len(self.stored)}"}
        return (201 if created else 200), self.stored[study]


def outcome(code: str, text: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}  # fmt: skip


@pytest.fixture(scope="module")
def pushing(tmp_path_factory):
    """(stand-in server, an appliance pushing to it, a folder for studies)."""
    standin = FhirStandIn()
    running = make_appliance(tmp_path_factory.mktemp("push"), {"fhir.push_url": standin.url})
    stored = run_cli(running, "config", "fhir-push-authorization", stdin=PUSH_AUTH + "\n")
    assert stored.returncode == 0, stored.stderr
    running.start()
    yield standin, running, tmp_path_factory.mktemp("push-studies")
    running.stop()
    standin.server.shutdown()


def push_rows(appliance) -> dict[str, dict]:
    db = open_database(appliance.settings.layout.database_file)
    try:
        return {r["study_uid"]: r for r in db["fhir_push"].rows}
    finally:
        db.close()


def test_each_stored_study_is_pushed_then_updated(pushing):
    standin, appliance, folder = pushing
    study, files, _ = write_study(folder, 3, Modality="CT", StudyDate="20240101", **PATIENT_A)
    assert storescu(appliance, files[:2]).returncode == 0
    wait_for(lambda: study in standin.stored, 60, "the study to be pushed")
    wait_for(lambda: push_rows(appliance)[study]["state"] == "pushed", 30, "state pushed")
    pushed = standin.stored[study]
    assert pushed["numberOfInstances"] == 2 and pushed["contained"][0]["resourceType"] == "Endpoint"
    assert pushed["subject"]["identifier"]["value"] == "FHIR-A-1"
    assert [s for s, _ in standin.answers].count(study) == 1  # two instances, one push
    assert storescu(appliance, files[2:]).returncode == 0  # the study changes: pushed again
    wait_for(lambda: standin.stored[study]["numberOfInstances"] == 3, 60, "the update")
    assert [a for a in standin.answers if a[0] == study] == [(study, 201), (study, 200)]


def test_a_transient_failure_is_retried_and_a_refusal_is_visible(pushing):
    standin, appliance, folder = pushing
    flaky, flaky_files, _ = write_study(folder, 1, Modality="MR", **PATIENT_B)
    refused, refused_files, _ = write_study(folder, 1, Modality="MR", **PATIENT_B)
    standin.fail[flaky] = [503]
    standin.fail[refused] = [422] * 20
    assert storescu(appliance, flaky_files + refused_files).returncode == 0
    wait_for(lambda: flaky in standin.stored, 90, "the flaky push to succeed on retry")
    assert [a for a in standin.answers if a[0] == flaky] == [(flaky, 503), (flaky, 201)]
    wait_for(lambda: push_rows(appliance).get(refused, {}).get("state") == "failed", 60,
             "the refused push to be failed")  # fmt: skip
    row = push_rows(appliance)[refused]
    assert row["status"] == 422 and "the stand-in was told to fail" in row["error"]
    assert [a for a in standin.answers if a[0] == refused] == [(refused, 422)]  # not retried
    # What the System page shows (GET /api/admin/system, admins only).
    admin = {"Authorization": f"Bearer {api_token(appliance, 'admin', appliance.admin_password)}"}
    system = requests.get(f"{appliance.url}/api/admin/system", headers=admin, timeout=10).json()
    status = system["fhir_push"]
    assert status["url"] == standin.url and status["counts"]["failed"] == 1
    assert status["failures"][0]["study_uid"] == refused and status["failures"][0]["status"] == 422


def test_a_deleted_study_is_deleted_from_the_fhir_server(pushing):
    standin, appliance, folder = pushing
    pushed, pushed_files, _ = write_study(folder, 1, Modality="CT", **PATIENT_B)
    assert storescu(appliance, pushed_files).returncode == 0
    wait_for(lambda: pushed in standin.stored, 60, "the study to be pushed")
    admin = {"Authorization": f"Bearer {api_token(appliance, 'admin', appliance.admin_password)}"}
    gone = requests.delete(f"{appliance.url}/api/studies/{pushed}", headers=admin, timeout=60)
    assert gone.status_code == 200, gone.text
    wait_for(lambda: pushed in standin.deleted, 30, "the conditional delete")
    wait_for(lambda: push_rows(appliance)[pushed]["state"] == "gone", 10, "state gone")
    assert pushed not in standin.stored
