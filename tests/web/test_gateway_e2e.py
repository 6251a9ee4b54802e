"""The secure gateway end to end: real nginx, app, Orthanc, storescu and dicomweb-client.

A synthetic CT series is pushed with dcmtk's storescu, ingested as HTJ2K, then read back
through nginx with a bearer token; every forged token is refused at nginx's front door.
"""

from __future__ import annotations

import base64
import json
import socket
import time

import imagecodecs
import jwt
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from appliance.db import open_database
from appliance.security.tokens import AUDIENCE_WEB, ISSUER
from appliance.transcode.codestream import RPCL_SYNTAX
from bench.synthetic import make_slices, write_series
from tests.support.auth import forged
from tests.support.clients import api_token
from tests.support.running import run_cli, storescu, wait_stored

pytestmark = pytest.mark.slow
HTJ2K = "1.2.840.10008.1.2.4.201"
SLICES = 8
PASSWORD = "gateway test password"


def login(appliance, username: str) -> str:
    return api_token(appliance, username, PASSWORD)


@pytest.fixture(scope="module")
def pushed(appliance, tmp_path_factory):
    """(series, original slices, radiologist token, technologist token)."""
    for name, role in (("rad.e2e", "radiologist"), ("tech.e2e", "technologist")):
        added = run_cli(appliance, "user", "add", name, "--role", role, "--password-stdin",
                    stdin=PASSWORD + "\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
    slices = make_slices(SLICES)
    series = write_series(tmp_path_factory.mktemp("ct"), slices)
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    return series, slices, login(appliance, "rad.e2e"), login(appliance, "tech.e2e")


def client_for(appliance, token: str) -> DICOMwebClient:
    return DICOMwebClient(f"{appliance.url}/api/pacs/dicom-web",
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def test_qido_finds_the_pushed_study(appliance, pushed):
    series, _, token, _ = pushed
    studies = client_for(appliance, token).search_for_studies(
        search_filters={"StudyInstanceUID": series.study_uid}
    )
    assert len(studies) == 1
    found = client_for(appliance, token).search_for_instances(
        study_instance_uid=series.study_uid, series_instance_uid=series.series_uid
    )
    assert len(found) == SLICES


@pytest.mark.parametrize(
    ("filters", "found"),
    [
        ({"PatientName": "BENCH^PHANT*"}, 1),
        ({"PatientName": "bench^phantom"}, 1),
        ({"PatientName": "BENCH?PHANTOM"}, 1),
        ({"PatientName": "*^PHANTOM", "ModalitiesInStudy": "MR,CT"}, 1),
        ({"PatientName": "NOBODY*"}, 0),
        ({"ModalitiesInStudy": "MR,DX"}, 0),
    ],
)
def test_qido_wildcards_and_value_lists_reach_orthanc_as_sent(appliance, pushed, filters, found):
    """Orthanc 1.10.1 does not percent-decode query values: the gateway must not encode
    ``*``, ``?``, ``^`` or ``,`` (they matched nothing when it did)."""
    series, _, token, _ = pushed
    studies = client_for(appliance, token).search_for_studies(
        search_filters={"StudyInstanceUID": series.study_uid, **filters}
    )
    assert len(studies) == found


def test_metadata_comes_back_through_the_gateway(appliance, pushed):
    series, _, token, _ = pushed
    metadata = client_for(appliance, token).retrieve_series_metadata(
        series.study_uid, series.series_uid
    )
    assert len(metadata) == SLICES
    assert {m["00080018"]["Value"][0] for m in metadata} == set(series.sop_uids)


def test_frames_are_htj2k_and_pixel_identical(appliance, pushed):
    series, slices, token, _ = pushed
    dw = client_for(appliance, token)
    for index in (0, SLICES - 1):
        frames = dw.retrieve_instance_frames(
            series.study_uid, series.series_uid, series.sop_uids[index], [1],
            media_types=(("application/octet-stream", "*"),),
        )  # fmt: skip
        codestream = bytes(frames[0])
        assert codestream[:4] == b"\xff\x4f\xff\x51"  # SOC + SIZ: a J2K codestream
        pixels = imagecodecs.htj2k_decode(codestream)
        assert np.array_equal(pixels.astype(np.int16), slices[index])


def test_frame_part_names_the_htj2k_transfer_syntax(appliance, pushed):
    series, _, token, _ = pushed
    url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[0]}/frames/1")  # fmt: skip
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    resp = requests.get(url, headers={"Authorization": f"Bearer {token}", "Accept": accept},
                        timeout=10)  # fmt: skip
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("multipart/related")
    assert f"transfer-syntax={RPCL_SYNTAX}" in resp.content[:300].decode("latin-1")
    assert "X-Accel-Redirect" not in resp.headers and "X-Orthanc-Accept" not in resp.headers
    # A frame is data, never a page: the short headers, not the apps' script policy.
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in resp.headers


def test_whole_instance_retrieve_is_htj2k_with_identical_pixels(appliance, pushed):
    series, slices, token, _ = pushed
    ds = client_for(appliance, token).retrieve_instance(
        series.study_uid, series.series_uid, series.sop_uids[2]
    )
    assert ds.file_meta.TransferSyntaxUID == HTJ2K
    assert np.array_equal(ds.pixel_array, slices[2])


@pytest.mark.parametrize("accept", [None, "*/*", 'multipart/related; type="application/dicom"'])
def test_a_series_retrieve_naming_no_syntax_gets_the_objects_as_stored(appliance, pushed, accept):
    """Orthanc 1.10.1 answered 500 (it tried to transcode HTJ2K) for these (the fuzz run)."""
    series, slices, token, _ = pushed
    url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}")  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} | ({"Accept": accept} if accept else {})
    resp = requests.get(url, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    assert 'type="application/dicom"' in resp.headers["Content-Type"]
    datasets = client_for(appliance, token).retrieve_series(series.study_uid, series.series_uid)
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {HTJ2K}
    by_sop = {ds.SOPInstanceUID: ds for ds in datasets}
    assert np.array_equal(by_sop[series.sop_uids[1]].pixel_array, slices[1])


def test_a_retrieve_in_another_syntax_of_htj2k_objects_is_a_406(appliance, pushed):
    series, _, token, _ = pushed
    url = f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    resp = requests.get(url, headers={"Authorization": f"Bearer {token}", "Accept": accept},
                        timeout=10)  # fmt: skip
    assert resp.status_code == 406
    assert resp.json()["error"] == "not_acceptable"
    assert "transfer-syntax=*" in resp.json()["message"]


def test_rendered_and_thumbnail_of_htj2k_instances_series_and_studies_are_jpegs(appliance, pushed):
    series, _, token, _ = pushed
    base = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
            f"{series.series_uid}/instances/{series.sop_uids[0]}")  # fmt: skip
    series_url = base.rsplit("/instances/", 1)[0]
    study_url = series_url.rsplit("/series/", 1)[0]
    urls = [f"{base}/{kind}" for kind in ("rendered", "thumbnail", "frames/1/rendered")]
    urls += [f"{parent}/{kind}" for parent in (series_url, study_url)
             for kind in ("rendered", "thumbnail")]  # fmt: skip
    for url in urls:
        resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200, url
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.content[:2] == b"\xff\xd8"


def test_stow_by_a_technologist_goes_through_the_pipeline(appliance, pushed, tmp_path):
    _, _, rad_token, tech_token = pushed
    slices = make_slices(2)
    series = write_series(tmp_path / "stow", slices)
    datasets = [pydicom.dcmread(path) for path in series.files]
    with pytest.raises(requests.HTTPError) as refused:
        client_for(appliance, rad_token).store_instances(datasets)
    assert refused.value.response.status_code == 403
    result = client_for(appliance, tech_token).store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == 2
    wait_stored(appliance, series.sop_uids)
    ds = client_for(appliance, rad_token).retrieve_instance(
        series.study_uid, series.series_uid, series.sop_uids[0]
    )
    assert ds.file_meta.TransferSyntaxUID == HTJ2K


def stow(appliance, token: str, path, origin: str = "") -> requests.Response:
    """POST one Part 10 file as a STOW-RS upload to ``origin`` (the HTTP listener if empty)."""
    body = (b"--xx\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes()
            + b"\r\n--xx--\r\n")  # fmt: skip
    return requests.post(
        f"{origin or appliance.url}/api/pacs/dicom-web/studies", data=body, timeout=30,
        verify=False,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=xx'},
    )  # fmt: skip


def test_stow_follows_the_overwrite_policy(appliance, pushed, tmp_path):
    """An upload replaced any archived copy (same-source applied to C-STORE only): now an
    instance another source sent is held for an admin (0x0124), as the receiver does."""
    series, _, _, tech_token = pushed
    sent_by_modality = series.files[0]
    resp = stow(appliance, tech_token, sent_by_modality)
    assert resp.status_code == 409, resp.text[:300]
    failed = resp.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0x0124]
    held = run_cli(appliance, "held", "list")
    assert series.sop_uids[0] in held.stdout and "stow:tech.e2e" in held.stdout
    own = write_series(tmp_path / "own", make_slices(1))
    assert stow(appliance, tech_token, own.files[0]).status_code == 200
    wait_stored(appliance, own.sop_uids)
    assert stow(appliance, tech_token, own.files[0]).status_code == 200  # the same source


def test_stow_over_https_names_https_retrieve_urls(appliance, pushed, tmp_path):
    """The RetrieveURL a STOW-RS answer gives is the address the browser used: behind the
    HTTPS listener it says https:// and that port, though nginx reaches the app by HTTP."""
    _, _, _, tech_token = pushed
    own = write_series(tmp_path / "own-tls", make_slices(1))
    origin = f"https://127.0.0.1:{appliance.settings.web.https_port}"
    resp = stow(appliance, tech_token, own.files[0], origin)
    assert resp.status_code == 200, resp.text[:300]
    item = resp.json()["00081199"]["Value"][0]
    assert item["00081190"]["Value"] == [f"{origin}/api/pacs/dicom-web/studies"]
    plain = stow(appliance, tech_token, own.files[0])
    assert plain.json()["00081199"]["Value"][0]["00081190"]["Value"][0].startswith(
        f"{appliance.url}/"
    )


def test_stow_of_garbage_reports_a_failure(appliance, pushed):
    _, _, _, tech_token = pushed
    body = b"--xx\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--xx--\r\n"
    resp = requests.post(
        f"{appliance.url}/api/pacs/dicom-web/studies", data=body, timeout=10,
        headers={"Authorization": f"Bearer {tech_token}",
                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=xx'},
    )  # fmt: skip
    assert resp.status_code == 409
    assert "00081198" in resp.json()


# --- attacks, each through nginx: 401/403 with a JSON reason and an audit row -----------


def attack(appliance, token: str, path: str = "/api/pacs/dicom-web/studies"):
    resp = requests.get(f"{appliance.url}{path}", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.status_code, resp.json()


def last_audit(appliance) -> dict:
    db = open_database(appliance.settings.layout.database_file)
    row = db.execute("SELECT event, detail FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    db.close()
    return {"event": row[0], **json.loads(row[1] or "{}")}


def test_expired_token_is_refused(appliance, pushed):
    _, _, token, _ = pushed
    claims = jwt.decode(token, options={"verify_signature": False})
    expired = forged(appliance, sid=claims["sid"], exp=int(time.time()) - 60)
    status, body = attack(appliance, expired)
    assert status == 401 and body["error"] == "token_expired"
    assert last_audit(appliance)["reason"] == "token_expired"


def test_tampered_token_is_refused(appliance, pushed):
    _, _, token, _ = pushed
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["role"] = "admin"
    evil = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    status, body = attack(appliance, f"{header}.{evil}.{signature}", "/api/admin/users")
    assert status == 401 and body["error"] == "bad_signature"
    assert last_audit(appliance) == {"event": "token_rejected", "reason": "bad_signature",
                                     "method": "GET", "path": "/api/admin/users"}  # fmt: skip


def test_alg_none_token_is_refused(appliance):
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE_WEB, "sub": "admin", "role": "admin"},
                          None, algorithm="none")  # fmt: skip
    status, body = attack(appliance, unsigned)
    assert status == 401 and body["error"] == "wrong_algorithm"
    assert last_audit(appliance)["reason"] == "wrong_algorithm"


def test_wrong_algorithm_token_is_refused(appliance):
    status, body = attack(appliance, forged(appliance, algorithm="HS384"))
    assert status == 401 and body["error"] == "wrong_algorithm"


def test_wrong_audience_token_is_refused(appliance):
    status, body = attack(appliance, forged(appliance, aud="orthanc"))
    assert status == 401 and body["error"] == "wrong_audience"
    assert last_audit(appliance)["reason"] == "wrong_audience"


def test_wrong_key_token_is_refused(appliance):
    status, body = attack(appliance, forged(appliance, key="not-the-appliance-key" * 3))
    assert status == 401 and body["error"] == "bad_signature"


def test_revoked_token_is_refused(appliance, pushed):
    token = login(appliance, "rad.e2e")
    out = requests.post(f"{appliance.url}/api/auth/logout", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert out.status_code == 204
    status, body = attack(appliance, token)
    assert status == 401 and body["error"] == "token_revoked"
    assert last_audit(appliance)["reason"] == "token_revoked"


def test_valid_token_with_wrong_role_is_forbidden(appliance, pushed):
    _, _, _, tech_token = pushed
    status, body = attack(appliance, tech_token, "/api/admin/audit")
    assert status == 403 and body["error"] == "role_denied"
    assert last_audit(appliance)["event"] == "role_denied"


@pytest.mark.parametrize(
    "path",
    [
        "/internal-orthanc/system",
        "/internal-orthanc/api/pacs/dicom-web/studies",
        "/internal-frames/",
        "/internal-app/api/auth/me",
        "/%69nternal-orthanc/system",
        "/internal-orthanc/../internal-orthanc/system",
        "/api/../internal-orthanc/system",
    ],
)
def test_internal_locations_are_not_reachable_directly(appliance, path):
    resp = requests.get(f"{appliance.url}{path}", timeout=10)
    assert resp.status_code == 404
    assert "Orthanc" not in resp.text and "Version" not in resp.text


def test_x_accel_redirect_sent_by_a_client_is_ignored(appliance, pushed):
    _, _, token, _ = pushed
    resp = requests.get(f"{appliance.url}/api/auth/me", timeout=10,
                        headers={"Authorization": f"Bearer {token}",
                                 "X-Accel-Redirect": "/internal-orthanc/system"})  # fmt: skip
    assert resp.status_code == 200 and resp.json()["username"] == "rad.e2e"


# The frame gate (appliance/web/frame_gate.py): nginx sends single-frame reads to it.


def frame_url(appliance, series, index: int = 0, study: str | None = None) -> str:
    return (f"{appliance.url}/api/pacs/dicom-web/studies/{study or series.study_uid}/series/"
            f"{series.series_uid}/instances/{series.sop_uids[index]}/frames/1")  # fmt: skip


@pytest.mark.parametrize(
    "reason, changes",
    [
        ("token_expired", {"exp": int(time.time()) - 60}),
        ("wrong_algorithm", {"algorithm": "HS384"}),
        ("wrong_audience", {"aud": "orthanc"}),
        ("bad_signature", {"key": "not-the-appliance-key" * 3}),
    ],
)
def test_forged_tokens_on_the_frame_path_are_refused_with_an_audit_row(
    appliance, pushed, reason, changes
):
    series, _, token, _ = pushed
    claims = jwt.decode(token, options={"verify_signature": False})
    status, body = attack(
        appliance, forged(appliance, sid=claims["sid"], **changes),
        frame_url(appliance, series).removeprefix(appliance.url),
    )  # fmt: skip
    assert status == 401 and body["error"] == reason
    assert last_audit(appliance)["reason"] == reason


def test_logout_stops_frames_at_once(appliance, pushed):
    series, _, _, _ = pushed
    token = login(appliance, "rad.e2e")
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(frame_url(appliance, series), headers=headers, timeout=10).ok
    requests.post(f"{appliance.url}/api/auth/logout", headers=headers, timeout=10)
    after = requests.get(frame_url(appliance, series), headers=headers, timeout=10)
    assert after.status_code == 401 and after.json()["error"] == "token_revoked"


def test_frames_open_with_the_session_cookie_and_an_old_cookie_is_renewed(appliance, pushed):
    series, _, _, _ = pushed
    web = requests.Session()
    web.post(f"{appliance.url}/api/auth/login", timeout=10,
             json={"username": "rad.e2e", "password": PASSWORD}).raise_for_status()  # fmt: skip
    fresh = web.get(frame_url(appliance, series), timeout=10)
    assert fresh.status_code == 200 and "Set-Cookie" not in fresh.headers
    sid = jwt.decode(web.cookies["nn_session"], options={"verify_signature": False})["sid"]
    old = forged(appliance, sid=sid, exp=int(time.time()) + 60)  # second half of its life
    resp = requests.get(frame_url(appliance, series), timeout=10,
                        headers={"Cookie": f"nn_session={old}"})  # fmt: skip
    assert resp.status_code == 200 and resp.content[:2] == b"--"
    assert "nn_session=" in resp.headers["Set-Cookie"]
    expired = forged(appliance, sid=sid, exp=int(time.time()) - 60)
    resp = requests.get(frame_url(appliance, series), timeout=10,
                        headers={"Cookie": f"nn_session={expired}"})  # fmt: skip
    assert resp.status_code == 401 and resp.json()["error"] == "token_expired"


def test_a_share_link_reads_frames_of_its_study_only(appliance, pushed):
    series, _, token, _ = pushed
    made = requests.post(f"{appliance.url}/api/shares", timeout=10,
                         headers={"Authorization": f"Bearer {token}"},
                         json={"study_uid": series.study_uid, "expires_in_hours": 1})  # fmt: skip
    made.raise_for_status()
    share = {"Authorization": f"Bearer {made.json()['token']}"}
    assert requests.get(frame_url(appliance, series), headers=share, timeout=10).ok
    other = requests.get(frame_url(appliance, series, study="1.2.3.4"), headers=share, timeout=10)
    assert other.status_code == 403 and other.json()["error"] == "study_not_shared"


def test_frames_of_htj2k_in_another_transfer_syntax_are_not_acceptable(appliance, pushed):
    """The gate hands it over; the app refuses (Orthanc would mislabel HTJ2K bytes)."""
    series, _, token, _ = pushed
    accept = (
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
    )
    resp = requests.get(frame_url(appliance, series), timeout=30,
                        headers={"Authorization": f"Bearer {token}", "Accept": accept})  # fmt: skip
    assert resp.status_code == 406 and resp.json()["error"] == "not_acceptable"
    as_list = requests.get(frame_url(appliance, series).replace("/frames/1", "/frames/1,2"),
                           timeout=30, headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert as_list.status_code == 406


def gate_exchange(appliance, raw: bytes) -> bytes:
    """Send raw bytes to the frame gate's loopback port; everything it answers until it closes
    or goes quiet."""
    with socket.create_connection(
        ("127.0.0.1", appliance.settings.internal.gate_port), timeout=5
    ) as s:
        s.sendall(raw)
        s.settimeout(0.5)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def gate_request(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gate", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_the_gate_says_yes_itself_and_hands_every_doubt_to_the_app(appliance, pushed):
    series, _, token, _ = pushed
    path = frame_url(appliance, series).removeprefix(appliance.url)
    bearer = f"Authorization: Bearer {token}"
    answers = gate_exchange(appliance, gate_request(path, bearer) * 3)
    assert answers.count(b"X-Accel-Redirect: /internal-frames/") == 3  # one keep-alive connection
    for doubtful in (
        gate_request(path),  # no token
        gate_request(path, "Authorization: Bearer nonsense"),
        gate_request(path, bearer, bearer),  # two tokens: let the app judge
        gate_request(path + "?x=1", bearer),
        gate_request(path.replace("/frames/1", "/frames/1,2"), bearer),
        gate_request(path.replace("1.2", "1%2e2", 1), bearer),
    ):
        assert b"X-Accel-Redirect: /internal-app/\r\n" in gate_exchange(appliance, doubtful)


def test_the_gate_refuses_other_methods_and_malformed_http(appliance):
    post = gate_exchange(appliance, gate_request("/api/pacs/dicom-web/studies", method="POST"))
    assert post.startswith(b"HTTP/1.1 405 ") and b'"error": "method_not_allowed"' in post
    garbage = gate_exchange(appliance, b"\x16\x03\x01 not http\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    huge = gate_exchange(appliance, gate_request("/x", "X-Pad: " + "a" * 40_000))
    assert huge.startswith(b"HTTP/1.1 431 ")
    long_url = gate_exchange(appliance, gate_request("/x" * 20_000))
    assert long_url.startswith(b"HTTP/1.1 431 ")


def test_a_preview_still_queued_answers_503_with_retry_after(appliance, pushed):
    """Previews of a series' other instances are made after 'stored'; until then, 503."""
    series, _, token, _ = pushed
    sop = series.sop_uids[-1]
    layout = appliance.settings.layout
    db = open_database(layout.database_file)
    with db.conn:
        db.execute("UPDATE instances SET images_at = NULL WHERE sop_uid = ?", [sop])
    db.close()
    instance_dir = layout.frames_dir / series.study_uid / series.series_uid / sop
    (instance_dir / "rendered.jpg").unlink(missing_ok=True)
    resp = requests.get(f"{frame_url(appliance, series, -1).rsplit('/frames/', 1)[0]}/rendered",
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert resp.status_code == 503 and resp.json()["error"] == "preview_pending"
    assert int(resp.headers["Retry-After"]) > 0
