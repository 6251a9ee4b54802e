"""The web app at unit level: aiohttp's test client on a real temporary home.

nginx and Orthanc are not running here, which is the point of the X-Accel tests: the app
answers a DICOMweb read without ever contacting Orthanc.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from appliance.db import open_database
from appliance.ingest.intake import Ingest
from appliance.jobs.queue import create_queue
from appliance.security import audit
from appliance.store import worklist
from tests.support.auth import PASSWORD, audit_events, bearer, login

CT = get_testdata_file("CT_small.dcm")


async def test_login_sets_httponly_strict_cookies_and_returns_a_token(client):
    resp = await login(client)
    assert resp.status == 200
    body = await resp.json()
    assert body["user"] == {"username": "rad", "role": "radiologist"}
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 900
    cookies = resp.headers.getall("Set-Cookie")
    session = next(c for c in cookies if c.startswith("nn_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Secure" not in session
    csrf = next(c for c in cookies if c.startswith("nn_csrf="))
    assert "HttpOnly" not in csrf


async def test_cookies_are_secure_under_tls(client):
    resp = await login(client, **{"X-Forwarded-Proto": "https"})
    assert all("Secure" in c for c in resp.headers.getall("Set-Cookie"))


async def test_wrong_password_is_401_and_audited(client, settings):
    resp = await login(client, password="wrong password!")
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_credentials"
    (row,) = audit_events(settings, audit.LOGIN_FAILED)
    assert row["username"] == "rad" and row["detail"]["reason"] == "bad_password"
    assert PASSWORD not in str(row) and "wrong password" not in str(row)


async def test_unknown_user_and_disabled_user_get_the_same_answer(client, settings):
    unknown = await login(client, username="nobody")
    assert unknown.status == 401
    reasons = [r["detail"]["reason"] for r in audit_events(settings, audit.LOGIN_FAILED)]
    assert reasons == ["unknown_user"]


async def test_repeated_failures_throttle_the_user(client, settings):
    for _ in range(5):
        assert (await login(client, password="wrong password!")).status == 401
    resp = await login(client)  # even the right password is refused now
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "too_many_attempts" and body["retry_after"] > 0
    assert int(resp.headers["Retry-After"]) == body["retry_after"]
    assert audit_events(settings, audit.LOGIN_THROTTLED)
    assert (await login(client, username="tech")).status == 200  # other users unaffected


async def test_repeated_failures_throttle_the_client_address(client):
    headers = {"X-Forwarded-For": "203.0.113.9"}
    for n in range(20):
        await login(client, username=f"guess{n}", password="wrong password!", **headers)
    assert (await login(client, username="tech", **headers)).status == 429
    assert (await login(client, username="tech")).status == 200


async def test_refresh_rotates_and_reuse_revokes_the_session(client, settings):
    first = await login(client)
    old_refresh = first.cookies["nn_refresh"].value
    csrf = {"X-CSRF-Token": first.cookies["nn_csrf"].value}
    second = await client.post("/api/auth/refresh", headers=csrf)
    assert second.status == 200
    assert second.cookies["nn_refresh"].value != old_refresh
    access = (await second.json())["access_token"]
    client.session.cookie_jar.clear()
    stolen = f"nn_refresh={old_refresh}; nn_csrf={csrf['X-CSRF-Token']}"
    replay = await client.post("/api/auth/refresh", headers={**csrf, "Cookie": stolen})
    assert replay.status == 401
    assert audit_events(settings, audit.REFRESH_REUSED)
    after = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert after.status == 401 and (await after.json())["error"] == "token_revoked"


async def test_refresh_without_csrf_header_is_refused(client):
    await login(client)
    assert (await client.post("/api/auth/refresh")).status == 403


async def test_logout_revokes_the_access_token(client):
    headers = await bearer(client)
    assert (await client.post("/api/auth/logout", headers=headers)).status == 204
    resp = await client.get("/api/auth/me", headers=headers)
    assert resp.status == 401 and (await resp.json())["error"] == "token_revoked"


async def test_cookie_post_without_csrf_header_is_refused(client, settings):
    resp = await login(client)
    csrf = resp.cookies["nn_csrf"].value
    payload = {"study_uid": "1.2.3", "expires_in_hours": 1}
    refused = await client.post("/api/shares", json=payload)
    assert refused.status == 403 and (await refused.json())["error"] == "csrf_rejected"
    assert audit_events(settings, audit.CSRF_REJECTED)
    accepted = await client.post("/api/shares", json=payload, headers={"X-CSRF-Token": csrf})
    assert accepted.status == 201


async def test_wrong_role_is_403_and_audited(client, settings):
    resp = await client.get("/api/admin/users", headers=await bearer(client, "tech"))
    assert resp.status == 403 and (await resp.json())["error"] == "role_denied"
    (row,) = audit_events(settings, audit.ROLE_DENIED)
    assert row["username"] == "tech" and row["detail"]["path"] == "/api/admin/users"


async def test_missing_token_is_401_json(client):
    resp = await client.get("/api/studies")
    assert resp.status == 401
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == "missing_token"


async def test_dicomweb_read_is_an_empty_x_accel_redirect(client):
    """Reads other than study searches (answered from the study table: test_qido_from_index)."""
    url = "/api/pacs/dicom-web/studies/1.2.3/series?Modality=CT&limit=5"
    resp = await client.get(url, headers=await bearer(client))
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["X-Accel-Redirect"] == (
        "/internal-orthanc/api/pacs/dicom-web/studies/1.2.3/series?Modality=CT&limit=5"
    )


async def test_frames_request_never_reads_image_bytes(client, settings):
    """With a prepared frame file, the app names it; it never opens it (or Orthanc)."""
    st, se, so = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    frame = settings.layout.frames_dir / st / se / so / "frames" / "1"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"x")
    os.chmod(frame, 0)  # unreadable: the app must not need to read it
    url = f"/api/pacs/dicom-web/studies/{st}/series/{se}/instances/{so}/frames/1"
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    resp = await client.get(url, headers={**await bearer(client), "Accept": accept})
    assert resp.status == 200 and await resp.read() == b""
    assert resp.headers["X-Accel-Redirect"] == f"/internal-frames/{st}/{se}/{so}/frames/1"


async def test_bad_dicomweb_path_is_400_json(client):
    resp = await client.get("/api/pacs/dicom-web/studies/1.2.x", headers=await bearer(client))
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_dicomweb_request"


async def test_radiologist_may_not_stow(client):
    resp = await client.post(
        "/api/pacs/dicom-web/studies", data=b"", headers=await bearer(client, "rad")
    )
    assert resp.status == 403


def stored_study(settings, study_uid: str) -> None:
    """A study of one stored instance, as the journal records it."""
    db = open_database(settings.layout.database_file)
    with db.conn:
        db["studies"].insert({"study_uid": study_uid, "patient_name": "DOE^J",
                              "referring_physician": "", "dicom_study_id": ""})  # fmt: skip
        db["series"].insert({"series_uid": study_uid + ".1", "study_uid": study_uid,
                             "modality": "CT"})  # fmt: skip
        instance = {"sop_uid": study_uid + ".1.1", "spool_path": "/s/" + study_uid,
                    "study_uid": study_uid, "series_uid": study_uid + ".1", "state": "stored",
                    "received_at": "t", "updated_at": "t"}  # fmt: skip
        db["instances"].insert(instance)
    db.close()


async def test_share_link_opens_one_study_only(client, settings):
    for study_uid in ("1.2.3", "9.9"):
        stored_study(settings, study_uid)
    headers = await bearer(client)
    created = await client.post("/api/shares", json={"study_uid": "1.2.3"}, headers=headers)
    share = await created.json()
    assert share["url"].endswith(share["token"]) or "token=" in share["url"]
    as_share = {"Authorization": f"Bearer {share['token']}"}
    for query in ("StudyInstanceUID=9.9", "PatientName=DOE*"):  # the app's study table
        qido = await client.get(f"/api/pacs/dicom-web/studies?{query}", headers=as_share)
        assert [s["0020000D"]["Value"] for s in await qido.json()] == [["1.2.3"]]
    orthanc = await client.get("/api/pacs/dicom-web/studies?StudyTime=&StudyInstanceUID=9.9",
                               headers=as_share)  # fmt: skip
    assert orthanc.headers["X-Accel-Redirect"].endswith("?StudyTime=&StudyInstanceUID=1.2.3")
    other = await client.get("/api/pacs/dicom-web/studies/9.9/metadata", headers=as_share)
    assert other.status == 403 and (await other.json())["error"] == "study_not_shared"
    assert (await client.get("/api/studies", headers=as_share)).status == 403
    revoked = await client.delete(f"/api/shares/{share['id']}", headers=headers)
    assert revoked.status == 204
    after = await client.get("/api/pacs/dicom-web/studies/1.2.3/metadata", headers=as_share)
    assert after.status == 401


async def test_share_link_url_sets_the_cookie_and_opens_the_viewer(client):
    created = await client.post(
        "/api/shares", json={"study_uid": "1.2.3"}, headers=await bearer(client)
    )
    token = (await created.json())["token"]
    resp = await client.get(f"/api/shares/open?token={token}", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/pacs-viewer/viewer?StudyInstanceUIDs=1.2.3"
    assert resp.cookies["nn_session"].value == token


async def test_admin_manages_users_and_disabling_ends_sessions(client):
    admin = await bearer(client, "boss")
    victim = await bearer(client, "rad")
    created = await client.post(
        "/api/admin/users",
        headers=admin,
        json={"username": "new.one", "role": "technologist", "password": "long enough pw"},
    )
    assert created.status == 201
    dup = await client.post(
        "/api/admin/users",
        headers=admin,
        json={"username": "new.one", "role": "admin", "password": "x" * 12},
    )
    assert dup.status == 409
    patched = await client.patch("/api/admin/users/rad", json={"disabled": True}, headers=admin)
    assert patched.status == 200 and (await patched.json())["disabled"] is True
    assert (await client.get("/api/auth/me", headers=victim)).status == 401
    listed = await (await client.get("/api/admin/users", headers=admin)).json()
    assert {u["username"] for u in listed["items"]} >= {"admin", "boss", "new.one", "rad"}
    assert all("password_hash" not in u for u in listed["items"])


async def test_modality_allow_list_api(client):
    admin = await bearer(client, "boss")
    empty = await (await client.get("/api/admin/modalities", headers=admin)).json()
    assert empty == {"items": [], "open": True}
    added = await client.post(
        "/api/admin/modalities", headers=admin, json={"ae_title": "CT_ROOM_1", "host": "192.0.2.10"}
    )
    assert added.status == 201
    bad = await client.post("/api/admin/modalities", headers=admin, json={"ae_title": "x\\y"})
    assert bad.status == 400 and "invalid AE title" in (await bad.json())["message"]
    listed = await (await client.get("/api/admin/modalities", headers=admin)).json()
    assert listed["open"] is False and listed["items"][0]["host"] == "192.0.2.10"
    assert (await client.delete("/api/admin/modalities/CT_ROOM_1", headers=admin)).status == 204


def _ingest_copies(settings, count: int) -> None:
    """Journal ``count`` studies (copies of CT_small with new UIDs), as the receiver would."""
    ingest = Ingest(settings, create_queue(settings))
    for n in range(count):
        ds = pydicom.dcmread(CT)
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1.{n}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.2.{n}"
        sop = f"1.2.826.0.1.3680043.10.3.{n}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientName = f"Doe^Patient{n:03d}"
        ds.PatientID = f"PID{n:03d}"
        ds.StudyDate = f"2026{(n % 12) + 1:02d}01"
        path = Path(settings.home) / f"in{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ingest.accept(path.read_bytes(), ds, source="test")


async def test_worklist_searches_sorts_and_pages(client, settings, monkeypatch):
    _ingest_copies(settings, 30)
    headers = await bearer(client)
    resp = await client.get("/api/studies?limit=10&sort=patient_name", headers=headers)
    page = await resp.json()
    assert page["total"] == 30 and page["total_exact"] and len(page["items"]) == 10
    assert page["items"][0]["patient_name"] == "Doe^Patient000"
    progress = {"received": 1, "transcoded": 0, "stored": 0, "failed": 0}
    assert page["items"][0]["progress"] == progress
    assert page["items"][0]["modalities"] == ["CT"] and page["items"][0]["series_count"] == 1
    found = await (await client.get("/api/studies?q=PID017", headers=headers)).json()
    assert [s["patient_id"] for s in found["items"]] == ["PID017"]
    partly = await (await client.get("/api/studies?q=PID01", headers=headers)).json()
    assert partly["total"] == 10  # the search matches parts of IDs and names
    exact = await (await client.get("/api/studies?patient_id=PID01", headers=headers)).json()
    assert exact["total"] == 0  # a launch's patient filter does not
    one = await (await client.get("/api/studies?patient_id=PID017", headers=headers)).json()
    assert [s["patient_id"] for s in one["items"]] == ["PID017"]
    dated = await (await client.get("/api/studies?date_from=20261201", headers=headers)).json()
    assert dated["total"] == 2
    monkeypatch.setattr(worklist, "COUNT_AHEAD", 5)  # counts 5 studies past the page
    second = await (await client.get("/api/studies?limit=10&offset=10", headers=headers)).json()
    assert (second["total"], second["total_exact"], len(second["items"])) == (25, False, 10)
    last = await (await client.get("/api/studies?limit=10&offset=20", headers=headers)).json()
    assert (last["total"], last["total_exact"]) == (30, True)
    bad = await client.get("/api/studies?sort=password_hash", headers=headers)
    assert bad.status == 400


async def test_invalid_json_body_is_400_json(client):
    resp = await client.post(
        "/api/auth/login", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"


async def test_audit_is_readable_by_admins(client):
    await login(client, password="wrong password!")
    resp = await client.get("/api/admin/audit?limit=5", headers=await bearer(client, "boss"))
    events = [row["event"] for row in (await resp.json())["items"]]
    assert "login_failed" in events and "login_ok" in events


async def test_series_progress_of_a_study(client, settings):
    _ingest_copies(settings, 1)
    headers = await bearer(client)
    resp = await client.get("/api/studies/1.2.826.0.1.3680043.10.1.0/series", headers=headers)
    (series,) = (await resp.json())["items"]
    assert series["series_uid"] == "1.2.826.0.1.3680043.10.2.0"
    assert series["progress"]["received"] == 1 and series["first_received_at"]
    bad = await client.get("/api/studies/x'--/series", headers=headers)
    assert bad.status == 400
