"""QIDO study searches answered from the app's study table give Orthanc's own answer.

Real appliance: a handful of studies sent with storescu, then each search is asked
through nginx with a token (the app answers it from its ``studies`` table) and of Orthanc
directly (what the gateway forwarded before); the two answers hold the same studies with
the same attributes. Searches the table cannot answer exactly still reach Orthanc.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from appliance.db import open_database
from appliance.ingest.journal import Journal
from appliance.lifecycle.study_details import fill_study_details
from appliance.store.orthanc import DICOMWEB_ROOT, OrthancStore, orthanc_auth_header, orthanc_url
from bench.synthetic import SeriesSpec, StudySpec, write_small_study
from tests.support.clients import api_token
from tests.support.running import run_cli, storescu, wait_stored

pytestmark = pytest.mark.slow
PASSWORD = "qido index test password"
OURS = "ISO_IR 192"  # the table's answers are UTF-8 JSON; Orthanc repeats the file's set
# (patient name, patient ID, sex, birth date, date, accession, description, referring,
#  StudyID, [(modality, images), ...])
STUDIES = [
    ("QUAYLE^ANN", "QID001", "F", "19700304", "20240110", "QACC1", "CT chest", "", "1",
     [("CT", 3)]),
    ("quayle^bob", "QID002", "M", "19851122", "20240215", "QACC2", "MR head", "WHO^DR", "S2",
     [("MR", 2), ("MR", 2)]),
    ("O_BRIEN^PAT", "QID003", "M", "19900101", "20240301", "qacc3", "Knee", "", "",
     [("CR", 1)]),
    ("OXBRIEN^PAT", "QID004", "F", "19591231", "20240301", "QACC[4]", "Mixed", "", "7",
     [("CT", 2), ("MR", 1)]),
    ("MÜLLER^ANNA", "QID005", "F", "19800808", "20231224", "QACC5", "Hand", "", "1",
     [("DX", 1)]),
]  # fmt: skip


def write_study(directory: Path, number: int, spec: tuple) -> tuple[str, list[Path]]:
    name, pid, sex, birth, date, accession, description, referring, study_id, series = spec
    study = StudySpec(name, pid, birth, sex, generate_uid(), date, "101500", accession,
                      description)  # fmt: skip
    specs = [SeriesSpec(generate_uid(), modality, index + 1, f"{modality} series", count, 8, 8)
             for index, (modality, count) in enumerate(series)]  # fmt: skip
    files = write_small_study(directory / str(number), study, specs, seed=number)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ReferringPhysicianName, ds.StudyID = referring, study_id
        ds.save_as(path, enforce_file_format=True)
    return study.study_uid, files


@pytest.fixture(scope="module")
def archive(appliance, tmp_path_factory):
    """(study UIDs in STUDIES' order, token) once every instance is stored."""
    added = run_cli(appliance, "user", "add", "rad.qido", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    directory = tmp_path_factory.mktemp("qido")
    written = [write_study(directory, n, spec) for n, spec in enumerate(STUDIES)]
    files = [path for _, paths in written for path in paths]
    sent = storescu(appliance, files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                            for p in files])  # fmt: skip
    return [uid for uid, _ in written], api_token(appliance, "rad.qido", PASSWORD)


def ask_gateway(appliance, token: str, query: dict[str, str]) -> list[dict]:
    resp = requests.get(f"{appliance.url}/api/pacs/dicom-web/studies", params=query,
                        headers={"Authorization": f"Bearer {token}",
                                 "Accept": "application/dicom+json"}, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()


def ask_orthanc(appliance, query: dict[str, str], uids: list[str]) -> list[dict]:
    """Orthanc's answer, as the gateway used to forward it (values sent unencoded)."""
    origin = urllib.parse.urlsplit(appliance.url)
    headers = {"Authorization": orthanc_auth_header(appliance.settings),
               "Forwarded": f"host={origin.netloc};proto={origin.scheme}"}  # fmt: skip
    encoded = urllib.parse.urlencode(query, safe="*?^,")
    url = f"{orthanc_url(appliance.settings)}{DICOMWEB_ROOT}/studies?{encoded}"
    resp = requests.get(url, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return [s for s in resp.json() if s["0020000D"]["Value"][0] in uids]


def charset(datasets: list[dict]) -> set[str]:
    return {d["00080005"]["Value"][0] for d in datasets}


def comparable(datasets: list[dict], uids: list[str]) -> list[dict]:
    """This test's studies (the shared appliance may hold others), by UID, without the
    character set (see :data:`OURS`)."""
    ours = [d for d in datasets if d["0020000D"]["Value"][0] in uids]
    return sorted(({k: v for k, v in d.items() if k != "00080005"} for d in ours),
                  key=lambda d: d["0020000D"]["Value"][0])  # fmt: skip


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"PatientName": "QUAYLE*"},
        {"PatientName": "O_B*"},  # _ is a character, not SQL's wildcard
        {"PatientID": "QID002"},
        {"PatientID": "QID00*"},
        {"StudyDate": "20240201-20240331"},
        {"StudyDate": "-20240131"},
        {"StudyDate": "20240301"},
        {"ModalitiesInStudy": "MR"},
        {"ModalitiesInStudy": "CR,DX"},
        {"StudyDate": "20240101-20240331", "ModalitiesInStudy": "CT"},
        {"AccessionNumber": "QACC*"},  # Orthanc matches identifiers without regard to case
        {"PatientID": "qid002"},
        {"StudyDescription": "M*"},
        {"StudyDescription": "m*"},
        {"PatientSex": "F", "PatientBirthDate": "19600101-19891231"},
        {"PatientID": "QID001", "includefield": "StudyDescription,00100030"},
        {"PatientName": "", "PatientID": "QID003"},  # universal matching
    ],
    ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()) or "all",
)
def test_the_table_answers_as_orthanc_does(appliance, archive, query):
    uids, token = archive
    answered = ask_gateway(appliance, token, query)
    assert not answered or charset(answered) == {OURS}  # the app answered, not Orthanc
    expected = comparable(ask_orthanc(appliance, query, uids), uids)
    assert comparable(answered, uids) == expected


def test_a_huge_offset_or_limit_is_an_empty_page_not_an_error(appliance, archive):
    _, token = archive
    huge = "9" * 40  # beyond SQLite's 64-bit integers
    assert ask_gateway(appliance, token, {"offset": huge, "limit": huge}) == []


def test_a_study_uid_list_and_paging_newest_first(appliance, archive):
    uids, token = archive
    listed = ask_gateway(appliance, token, {"StudyInstanceUID": f"{uids[0]},{uids[2]},{uids[4]}"})
    assert [d["0020000D"]["Value"][0] for d in listed] == [uids[2], uids[0], uids[4]]
    query = {"StudyInstanceUID": ",".join(uids), "limit": "2", "offset": "1"}
    page = ask_gateway(appliance, token, query)
    assert [d["00080020"]["Value"][0] for d in page] == ["20240301", "20240215"]


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ({"StudyDescription": "CT chest"}, [0]),  # Orthanc got "CT%20chest": nothing
        ({"PatientName": "MÜ*"}, [4]),  # Orthanc got "M%C3%9C*": nothing
        ({"PatientName": "mü*"}, [4]),
        # Orthanc 1.10.1 found nothing for each of these:
        ({"PatientName": "quayle^b?b"}, [1]),
        ({"PatientName": "QUAYLE^B?B"}, [1]),
        ({"PatientName": "*^PAT"}, [2, 3]),
        ({"00100010": "*^PAT"}, [2, 3]),
        ({"AccessionNumber": "QACC[4]"}, [3]),
    ],
    ids=lambda x: "&".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else "",
)
def test_what_orthanc_missed_is_found(appliance, archive, query, found):
    """Searches Orthanc 1.10.1 answered wrongly: it does not percent-decode query values,
    and missed some wildcard patterns and brackets."""
    uids, token = archive
    answered = [d["0020000D"]["Value"][0] for d in ask_gateway(appliance, token, query)]
    assert sorted(uid for uid in answered if uid in uids) == sorted(uids[n] for n in found)


@pytest.mark.parametrize(
    "query",
    [
        {"includefield": "all"},
        {"ReferringPhysicianName": "WHO*"},
        {"fuzzymatching": "true", "PatientName": "QUAYLE*"},
        {"StudyTime": "1000-1100"},
        {"ModalitiesInStudy": "C*"},
    ],
    ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()),
)
def test_what_the_table_cannot_answer_exactly_goes_to_orthanc(appliance, archive, query):
    uids, token = archive
    answered = ask_gateway(appliance, token, query)
    assert [d for d in answered if d["0020000D"]["Value"][0] in uids]
    assert OURS not in charset(answered)


def test_studies_from_before_the_details_are_answered_by_orthanc_until_filled(appliance, archive):
    """A study recorded before migration 4 lacks ReferringPhysicianName and StudyID:
    searches finding it go to Orthanc until the worker's task copies them from Orthanc."""
    uids, token = archive
    query = {"PatientID": "QID002"}
    db = open_database(appliance.settings.layout.database_file)
    with db.conn:
        db.execute("UPDATE studies SET referring_physician = NULL, dicom_study_id = NULL "
                   "WHERE study_uid = ?", [uids[1]])  # fmt: skip
    db.close()
    assert charset(ask_gateway(appliance, token, query)) == {"ISO_IR 100"}
    journal = Journal(appliance.settings.layout.database_file)
    assert fill_study_details(journal, OrthancStore(appliance.settings)) == 1
    answered = ask_gateway(appliance, token, query)
    assert charset(answered) == {OURS}
    assert answered[0]["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "WHO^DR"}]}
    assert answered[0]["00200010"] == {"vr": "SH", "Value": ["S2"]}
    assert fill_study_details(journal, OrthancStore(appliance.settings)) == 0
