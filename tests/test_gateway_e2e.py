"""The secure gateway end to end: real nginx, app, Orthanc, storescu and dicomweb-client.

A synthetic CT series is pushed with dcmtk's storescu, ingested as HTJ2K, then read back
through nginx with a bearer token; every forged token is refused at nginx's front door.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import imagecodecs
import jwt
import numpy as np
import pydicom
import pytest
import requests
from conftest import wait_for
from dicomweb_client.api import DICOMwebClient

from appliance.db import open_database
from appliance.layout import HomeLayout
from appliance.tokens import AUDIENCE_WEB, ISSUER
from bench.synthetic import make_slices, write_series

pytestmark = pytest.mark.slow
HTJ2K = "1.2.840.10008.1.2.4.201"
SLICES = 8
PASSWORD = "gateway test password"


def cli(appliance, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a ``neuronova`` command on the appliance's home."""
    command = [sys.executable, "-m", "appliance", *args, "--home", str(appliance.settings.home)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True,
                          env=appliance.env, timeout=120)  # fmt: skip


def storescu(appliance, files, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    """Send files with dcmtk's storescu, as a modality would."""
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", "NEURONOVA", "127.0.0.1",
         str(appliance.settings.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def journal_states(appliance, sop_uids) -> dict[str, str]:
    db = open_database(HomeLayout(appliance.settings.home).database_file)
    marks = ",".join("?" for _ in sop_uids)
    rows = db.execute(f"SELECT sop_uid, state FROM instances WHERE sop_uid IN ({marks})",
                      list(sop_uids)).fetchall()  # fmt: skip
    db.close()
    return dict(rows)


def wait_stored(appliance, sop_uids, timeout: float = 120) -> None:
    wait_for(lambda: set(journal_states(appliance, sop_uids).values()) == {"stored"} and
             len(journal_states(appliance, sop_uids)) == len(sop_uids),
             timeout, f"{len(sop_uids)} objects to be stored")  # fmt: skip


def login(appliance, username: str) -> str:
    resp = requests.post(f"{appliance.url}/api/auth/login", timeout=10,
                         json={"username": username, "password": PASSWORD})  # fmt: skip
    resp.raise_for_status()
    return resp.json()["access_token"]


@pytest.fixture(scope="module")
def pushed(appliance, tmp_path_factory):
    """(series, original slices, radiologist token, technologist token)."""
    for name, role in (("rad.e2e", "radiologist"), ("tech.e2e", "technologist")):
        added = cli(appliance, "user", "add", name, "--role", role, "--password-stdin",
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
    assert f"transfer-syntax={HTJ2K}" in resp.content[:300].decode("latin-1")
    assert "X-Accel-Redirect" not in resp.headers and "X-Orthanc-Accept" not in resp.headers


def test_whole_instance_retrieve_is_htj2k_with_identical_pixels(appliance, pushed):
    series, slices, token, _ = pushed
    ds = client_for(appliance, token).retrieve_instance(
        series.study_uid, series.series_uid, series.sop_uids[2]
    )
    assert ds.file_meta.TransferSyntaxUID == HTJ2K
    assert np.array_equal(ds.pixel_array, slices[2])


def test_rendered_and_thumbnail_of_htj2k_instances_are_jpegs(appliance, pushed):
    series, _, token, _ = pushed
    base = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
            f"{series.series_uid}/instances/{series.sop_uids[0]}")  # fmt: skip
    for kind in ("rendered", "thumbnail", "frames/1/rendered"):
        resp = requests.get(f"{base}/{kind}", headers={"Authorization": f"Bearer {token}"},
                            timeout=10)  # fmt: skip
        assert resp.status_code == 200, kind
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


def forged(appliance, **changes) -> str:
    key = HomeLayout(appliance.settings.home).jwt_key_file.read_text().strip()
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE_WEB, "iat": now, "exp": now + 300, "jti": "j",
              "sub": "admin", "role": "admin", "sid": "nope"}  # fmt: skip
    algorithm = changes.pop("algorithm", "HS256")
    key = changes.pop("key", key)
    claims.update(changes)
    return jwt.encode(claims, key, algorithm=algorithm)


def attack(appliance, token: str, path: str = "/api/pacs/dicom-web/studies"):
    resp = requests.get(f"{appliance.url}{path}", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.status_code, resp.json()


def last_audit(appliance) -> dict:
    db = open_database(HomeLayout(appliance.settings.home).database_file)
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
