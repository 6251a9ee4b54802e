"""Who saw which patient: reads of patient data in the audit trail, aggregated and safe.

The end-to-end tests drive the real appliance through nginx (the frame gate included):
frames, metadata, downloads, QIDO searches and share links each leave one aggregated
row naming user, client, study and patient; control characters cannot forge a line of
``neuronova audit``; CSV and JSON exports parse back; a flood of bad tokens leaves a
handful of counted rows. The unit tests check the aggregation on a real SQLite file.
"""

from __future__ import annotations

import csv
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests

from appliance.cli import cli
from appliance.db import open_database
from appliance.security import audit
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.running import run_cli, storescu, wait_stored

PASSWORD = "phi audit test password"
PATIENT_ID, PATIENT_NAME = "NNBENCH0001", "BENCH^PHANTOM"  # bench/synthetic.py
ANY_SYNTAX = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FLOOD = 10_000


# --- unit: aggregation on a real database ---------------------------------------------


def test_a_key_counts_repeats_on_one_row_that_moves_to_the_end(db) -> None:
    for n in range(3):
        audit.record(db, audit.STUDY_QUERY, username="rad", key="k", filters=f"PatientID={n}")
        audit.record(db, audit.LOGOUT, username=f"u{n}")
    rows = audit.recent(db)
    assert [r["event"] for r in rows][:2] == [audit.LOGOUT, audit.STUDY_QUERY]
    (query,) = [r for r in rows if r["event"] == audit.STUDY_QUERY]
    assert query["count"] == 3 and query["detail"] == {"filters": "PatientID=2"}


def test_rejections_are_one_row_per_reason_user_client_and_minute(db) -> None:
    for reason in ["bad_signature"] * 50 + ["token_expired"] * 3:
        audit.record(db, audit.TOKEN_REJECTED, client="10.0.0.9", reason=reason, path="/x")
    audit.record(db, audit.TOKEN_REJECTED, client="10.0.0.7", reason="bad_signature")
    counts = {(r["client"], r["detail"]["reason"]): r["count"] for r in audit.recent(db)}
    assert counts == {
        ("10.0.0.9", "bad_signature"): 50,
        ("10.0.0.9", "token_expired"): 3,
        ("10.0.0.7", "bad_signature"): 1,
    }


def test_two_processes_ledgers_write_one_row_and_memory_is_bounded(db, tmp_path) -> None:
    db["studies"].insert({"study_uid": "1.2.3", "patient_id": "P1", "patient_name": "DOE^J"})
    other = open_database(tmp_path / "app.db")  # a second app process
    first, second = audit.ReadLedger(db, size=2), audit.ReadLedger(other, size=2)
    for ledger in (first, second, first):
        ledger.read("sess-a", "1.2.3", "view", username="rad", client="10.0.0.5", first="frames")
    for study in ("1.2.4", "1.2.5", "1.2.6"):
        first.read("sess-a", study, "view", username="rad", client="10.0.0.5", first="metadata")
    first.read("sess-a", "1.2.3", "view", username="rad", client="10.0.0.5", first="frames")
    assert len(first._seen) == 2
    rows = audit.recent(db, study_uid="1.2.3")
    assert len(rows) == 1
    assert rows[0]["patient_id"] == "P1" and rows[0]["detail"]["patient_name"] == "DOE^J"
    assert rows[0]["detail"]["session"] == "sess-a" and rows[0]["client"] == "10.0.0.5"
    other.close()


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("evil\nFAKE ROW", "evil\\nFAKE ROW"),
        ("a\rb\tc\\d", "a\\rb\\tc\\\\d"),
        ("x\x1b[2Jy\x00", "x\\u001b[2Jy\\u0000"),
        ("nel\x85ls\u2028rlo\u202e", "nel\\u0085ls\\u2028rlo\\u202e"),
        ("Müller^José", "Müller^José"),
    ],
)
def test_escape_keeps_every_value_on_one_line(text: str, escaped: str) -> None:
    assert audit.escape(text) == escaped
    assert len(audit.escape(text).splitlines()) == 1


def test_csv_cells_are_never_formulas(db) -> None:
    audit.record(db, audit.LOGIN_FAILED, username="=HYPERLINK(1)", client="+1", reason="-x")
    (row,) = csv.DictReader(io.StringIO(audit.to_csv(audit.recent(db))))
    assert row["username"] == "'=HYPERLINK(1)" and row["client"] == "'+1"
    assert json.loads(row["detail"]) == {"reason": "-x"}


def test_cli_filters_by_user_study_and_patient_and_exports_csv(home: Path, runner) -> None:
    db = open_database(home / "db" / "appliance.db")
    db["studies"].insert({"study_uid": "1.2.3", "patient_id": "P1", "patient_name": "DOE^J"})
    audit.ReadLedger(db).read("s1", "1.2.3", "view", username="rad", client="10.0.0.5")
    audit.record(db, audit.LOGIN_FAILED, username="evil\nFAKE ROW", client="10.0.0.9")
    db.close()
    table = runner.invoke(cli, ["audit", "--home", str(home)])
    assert table.exit_code == 0 and not any(
        line.startswith("FAKE ROW") for line in table.output.splitlines()
    )
    assert "evil\\nFAKE ROW" in table.output
    for option in (["--user", "rad"], ["--study", "1.2.3"], ["--patient", "P1"]):
        out = runner.invoke(cli, ["audit", "--home", str(home), "--format", "csv", *option])
        (row,) = csv.DictReader(io.StringIO(out.output))
        assert (row["event"], row["patient_id"], row["count"]) == ("study_read", "P1", "1")
    none = runner.invoke(cli, ["audit", "--home", str(home), "--patient", "P2", "--json"])
    assert json.loads(none.output) == []


# --- end to end: the real appliance through nginx --------------------------------------


@pytest.fixture(scope="module")
def study(appliance, tmp_path_factory):
    """(series, admin token) with a radiologist ``rad.phi`` and a pushed 4-slice series."""
    added = run_cli(
        appliance,
        "user",
        "add",
        "rad.phi",
        "--role",
        "radiologist",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    series = write_series(tmp_path_factory.mktemp("phi"), make_slices(4))
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    return series, api_token(appliance, "admin", appliance.admin_password)


def rows(appliance, where: str, args: list) -> list[dict]:
    """Audit rows (the table's own columns, detail parsed) matching an SQL condition."""
    db = open_database(appliance.settings.layout.database_file)
    found = [
        {**r, "detail": json.loads(r["detail"] or "{}")}
        for r in db.query(f"SELECT * FROM audit WHERE {where} ORDER BY id", args)
    ]
    db.close()
    return found


def session_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def frame_urls(appliance, series) -> list[str]:
    return [
        f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
        f"{series.series_uid}/instances/{sop}/frames/1"
        for sop in series.sop_uids
    ]


@pytest.mark.slow
def test_a_hundred_frame_reads_leave_one_row_naming_the_patient(appliance, study):
    series, _ = study
    token = api_token(appliance, "rad.phi", PASSWORD)
    urls = frame_urls(appliance, series)
    with requests.Session() as http:
        http.headers.update({"Authorization": f"Bearer {token}", "Accept": ANY_SYNTAX})
        statuses = {http.get(urls[n % len(urls)], timeout=10).status_code for n in range(100)}
        assert statuses == {200}
        base = urls[0].rsplit("/instances/", 1)[0]
        for _ in range(3):  # metadata is another view of the same study: no new row
            got = http.get(
                f"{base}/metadata", headers={"Accept": "application/dicom+json"}, timeout=10
            )
            assert got.status_code == 200
        instance = urls[0].rsplit("/frames/", 1)[0]
        for _ in range(2):  # a download is recorded apart, once
            got = http.get(
                instance,
                headers={
                    "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'
                },
                timeout=30,
            )
            assert got.status_code == 200
    reads = rows(
        appliance,
        "event = 'study_read' AND study_uid = ? AND json_extract(detail, '$.session') = ?",
        [series.study_uid, session_of(token)],
    )
    assert [(r["detail"]["access"], r["detail"]["first"]) for r in reads] == [
        ("view", "frames"),  # the frame gate recorded it: the app never saw those requests
        ("download", "retrieve"),
    ]
    for read in reads:
        assert read["username"] == "rad.phi" and read["client"] == "127.0.0.1"
        assert read["patient_id"] == PATIENT_ID
        assert read["detail"]["patient_name"] == PATIENT_NAME


@pytest.mark.slow
def test_each_session_gets_its_own_first_read(appliance, study):
    series, _ = study
    url = frame_urls(appliance, series)[1]
    tokens = [api_token(appliance, "rad.phi", PASSWORD) for _ in range(2)]
    for token in tokens * 3:
        headers = {"Authorization": f"Bearer {token}", "Accept": ANY_SYNTAX}
        assert requests.get(url, headers=headers, timeout=10).status_code == 200
    sessions = [
        r["detail"]["session"]
        for r in rows(
            appliance,
            "event = 'study_read' AND study_uid = ? AND username = 'rad.phi'",
            [series.study_uid],
        )
    ]
    assert all(sessions.count(session_of(t)) == 1 for t in tokens)


@pytest.mark.slow
def test_qido_filters_are_recorded_once_per_session_and_shape_with_a_count(appliance, study):
    series, _ = study
    token = api_token(appliance, "rad.phi", PASSWORD)
    headers = {"Authorization": f"Bearer {token}"}
    search = f"{appliance.url}/api/pacs/dicom-web/studies"
    for offset in range(5):  # paging is the same search
        params = {"PatientID": PATIENT_ID, "limit": "10", "offset": str(offset)}
        assert requests.get(search, params=params, headers=headers, timeout=10).status_code == 200
    params = {"StudyInstanceUID": series.study_uid, "includefield": "00081030"}
    assert requests.get(search, params=params, headers=headers, timeout=10).status_code == 200
    queries = rows(
        appliance,
        "event = 'study_query' AND json_extract(detail, '$.session') = ?",
        [session_of(token)],
    )
    assert [
        (q["count"], q["detail"]["filters"], q["patient_id"], q["study_uid"]) for q in queries
    ] == [
        (5, f"PatientID={PATIENT_ID}", PATIENT_ID, None),
        (1, f"StudyInstanceUID={series.study_uid}", None, series.study_uid),
    ]


@pytest.mark.slow
def test_share_link_opens_and_reads_are_recorded(appliance, study):
    series, _ = study
    token = api_token(appliance, "rad.phi", PASSWORD)
    made = requests.post(
        f"{appliance.url}/api/shares",
        json={"study_uid": series.study_uid},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert made.status_code == 201
    share, link = made.json()["id"], made.json()["token"]
    with requests.Session() as browser:
        for _ in range(3):
            opened = browser.get(
                f"{appliance.url}/api/shares/open",
                params={"token": link},
                allow_redirects=False,
                timeout=10,
            )
            assert opened.status_code == 302
        for url in frame_urls(appliance, series):
            assert browser.get(url, headers={"Accept": ANY_SYNTAX}, timeout=10).status_code == 200
    (opens,) = rows(
        appliance, "event = 'share_opened' AND json_extract(detail, '$.share') = ?", [share]
    )
    assert opens["count"] == 3 and opens["study_uid"] == series.study_uid
    assert opens["patient_id"] == PATIENT_ID and opens["client"] == "127.0.0.1"
    (read,) = rows(appliance, "event = 'study_read' AND username = ?", [f"share:{share}"])
    assert read["study_uid"] == series.study_uid and read["patient_id"] == PATIENT_ID


@pytest.mark.slow
def test_control_characters_cannot_forge_a_line_of_neuronova_audit(appliance, study):
    forged = requests.post(
        f"{appliance.url}/api/auth/login",
        timeout=10,
        json={"username": "evil\nFAKE ROW", "password": "x" * 12},
    )
    assert forged.status_code == 401
    token = api_token(appliance, "rad.phi", PASSWORD)
    search = requests.get(
        f"{appliance.url}/api/pacs/dicom-web/studies",
        timeout=10,
        params={"PatientName": "A\u2028FAKE ROW\x85FAKE ROW"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert search.status_code == 200
    out = run_cli(appliance, "audit", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()  # str.splitlines also breaks at \x85 and \u2028
    assert lines[0].startswith("TIME (UTC)")
    assert all(line[:2] == "20" and line[4] == "-" for line in lines[1:]), lines
    assert "evil\\nFAKE ROW" in out.stdout
    assert "PatientName=A\\u2028FAKE ROW\\u0085FAKE ROW" in out.stdout


@pytest.mark.slow
def test_csv_and_json_exports_parse_back_alike(appliance, study):
    series, admin = study
    requests.post(
        f"{appliance.url}/api/auth/login",
        timeout=10,
        json={"username": 'q"uote,comma\r\nnew', "password": "y" * 12},
    )
    cli_json = json.loads(run_cli(appliance, "audit", "--limit", "500", "--json").stdout)
    cli_csv = list(
        csv.DictReader(
            io.StringIO(run_cli(appliance, "audit", "--limit", "500", "--format", "csv").stdout)
        )
    )
    headers = {"Authorization": f"Bearer {admin}"}
    export = f"{appliance.url}/api/admin/audit/export"
    api_csv = requests.get(export, params={"limit": "500"}, headers=headers, timeout=10)
    api_json = requests.get(
        export, params={"limit": "500", "format": "json"}, headers=headers, timeout=10
    )
    assert api_csv.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in api_csv.headers["Content-Disposition"]
    for as_json, as_csv in (
        (cli_json, cli_csv),
        (api_json.json(), list(csv.DictReader(io.StringIO(api_csv.text)))),
    ):
        assert [int(r["id"]) for r in as_csv] == [r["id"] for r in as_json]
        for j, c in zip(as_json, as_csv, strict=True):
            assert c["username"] == audit.escape(j["username"] or "")
            assert c["study_uid"] == (j["study_uid"] or "") and int(c["count"]) == j["count"]
            assert json.loads(c["detail"] or "{}") == j["detail"]
    assert any(r["username"] == 'q"uote,comma\r\nnew' for r in cli_json)
    reads = requests.get(
        f"{appliance.url}/api/admin/audit",
        headers=headers,
        timeout=10,
        params={"event": "study_read", "patient": PATIENT_ID},
    )
    assert reads.status_code == 200 and reads.json()["items"]
    assert {r["study_uid"] for r in reads.json()["items"]} >= {series.study_uid}
    for wrong in ({"format": "xml"}, {"since": "yesterday"}, {"event": "nope"}):
        bad = requests.get(export, params=wrong, headers=headers, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_query", wrong


@pytest.mark.slow
def test_a_flood_of_bad_tokens_leaves_a_bounded_number_of_rows(appliance, study):
    series, _ = study
    url = frame_urls(appliance, series)[0]
    started = audit.iso_ago(1)

    def send(worker: int) -> set[int]:
        with requests.Session() as http:
            return {
                http.get(
                    url, timeout=10, headers={"Authorization": f"Bearer flood-{worker}-{n}"}
                ).status_code
                for n in range(FLOOD // 8)
            }

    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = set().union(*pool.map(send, range(8)))
    minutes = (time.monotonic() - began) / 60
    assert statuses == {401}
    flood = rows(
        appliance,
        "event = 'token_rejected' AND last_ts >= ? AND "
        "json_extract(detail, '$.reason') = 'malformed_token'",
        [started],
    )
    assert sum(r["count"] for r in flood) == FLOOD
    assert len(flood) <= int(minutes) + 2
