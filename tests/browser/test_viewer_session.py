"""The viewer is NeuroNova's (issue 16, item 8): real Chromium against the real appliance.

OHIF opens with NeuroNova's logo and name, which link back to the worklist, and the
signed-in user with a working Sign out; a session that ends while the viewer is open
(signed out in another tab, ended by an admin) becomes a dialog whose link leads to the
login page and back to the viewer, never a grid of broken images; an access cookie that
merely expired is renewed with the refresh cookie without a dialog; a share link's viewer
has no Sign out, and a withdrawn link says so. The code under test is
``packaging/ohif_neuronova.js``, appended to the viewer's ``app-config.js``.

Screenshots go to ``test-artifacts/browser/`` (repository root, git-ignored).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import requests

from bench.synthetic import make_slices, write_series
from tests.support.browsing import (
    ARTIFACTS,
    SESSION_COOKIE,
    Recorder,
    add_radiologist,
    fetch_status,
    poll,
    send_as_patient,
    sign_in,
    sign_in_to_the_viewer,
    viewer_path,
    wait_for_image,
)
from tests.support.clients import api_token
from tests.support.running import run_cli, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SLICES = 8
PATIENT_ID, PATIENT_NAME = "NNVIEWERSESSION01", "SESSION^PHANTOM"
USER = "rad.session"
PASSWORD = "viewer session test password"
QIDO = "/api/pacs/dicom-web/studies"
SECOND_SERIES = "Second look"


@pytest.fixture(scope="module")
def study(appliance, tmp_path_factory):
    """(series, slices): a small CT study of two series pushed with storescu and stored as
    HTJ2K. The viewer shows the first; the second ("Second look") is loaded only when
    asked for, which gives a test a request of OHIF's own to make when it wants one."""
    add_radiologist(appliance, USER, PASSWORD)
    slices = make_slices(SLICES)
    series = write_series(tmp_path_factory.mktemp("session-ct"), slices)
    second = write_series(tmp_path_factory.mktemp("session-ct-2"), make_slices(SLICES, seed=7))
    patient = (PATIENT_ID, PATIENT_NAME)
    send_as_patient(appliance, series.files, patient, "SESSIONSCU", SeriesNumber=1)
    send_as_patient(appliance, second.files, patient, "SESSIONSCU", SeriesNumber=2,
                    StudyInstanceUID=series.study_uid, SeriesDescription=SECOND_SERIES)  # fmt: skip
    wait_stored(appliance, [*series.sop_uids, *second.sop_uids])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return series, slices


def open_viewer(appliance, new_context, study, name: str):
    """Sign in through the login page with ``next`` = the viewer; wait for the image."""
    series, slices = study
    context = new_context()
    page = context.new_page()
    recorder = Recorder(page)
    sign_in_to_the_viewer(appliance, page, series.study_uid, USER, PASSWORD)
    wait_for_image(page, recorder, slices, name)
    return context, page, recorder


def frame_url(recorder: Recorder) -> str:
    assert recorder.frames, "the viewer fetched no frame"
    return recorder.frames[0].url


def xhr_status(page, url: str) -> int:
    """A GET with XMLHttpRequest, as OHIF's DICOMweb client and frame loader make them."""
    return page.evaluate(
        """url => new Promise(resolve => {
            const xhr = new XMLHttpRequest();
            xhr.open('GET', url);
            xhr.onloadend = () => resolve(xhr.status);
            xhr.send();
        })""",
        url,
    )


def dialog_login_link(page, study_uid: str) -> str:
    """Wait for the session-ended dialog; its link's target (checked to come back here)."""
    dialog = page.get_by_test_id("nn-session-ended")
    dialog.wait_for(state="visible", timeout=15_000)
    assert "Your session has ended" in dialog.inner_text()
    # The dialog covers the whole viewer, images included.
    box = dialog.bounding_box()
    viewport = page.viewport_size
    assert box and box["width"] >= viewport["width"] and box["height"] >= viewport["height"]
    href = page.get_by_test_id("nn-session-ended-login").get_attribute("href")
    parts = urlsplit(href)
    assert parts.path == "/login", href
    assert unquote(parse_qs(parts.query)["next"][0]) == viewer_path(study_uid), href
    return href


def sign_in_again_from_dialog(page, recorder: Recorder, study, name: str) -> None:
    """Follow the dialog to the login page and back to the viewer, showing the image."""
    series, slices = study
    page.get_by_test_id("nn-session-ended-login").click()
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_test_id("login-username").wait_for()
    sign_in(page, USER, PASSWORD)
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?StudyInstanceUIDs="))
    assert parse_qs(urlsplit(page.url).query)["StudyInstanceUIDs"] == [series.study_uid]
    recorder.refused.clear()  # the 401s of the ended session are expected
    wait_for_image(page, recorder, slices, name)
    assert page.get_by_test_id("nn-session-ended").count() == 0


# --------------------------------------------------------------------------- tests


def test_viewer_shows_neuronova_the_user_and_a_way_back(appliance, study, new_context):
    series, _ = study
    context, page, _recorder = open_viewer(appliance, new_context, study, "10-viewer-neuronova")

    brand = page.get_by_test_id("nn-brand")
    brand.wait_for()
    link = page.get_by_test_id("nn-worklist-link")
    assert link.get_attribute("href") == "/"
    assert link.inner_text().strip() == "NeuroNova"
    assert link.locator("svg").count() == 1  # the logo
    page.get_by_test_id("nn-user").wait_for()
    assert page.get_by_test_id("nn-user").inner_text().strip() == USER
    assert page.get_by_test_id("nn-sign-out").is_visible()
    assert page.title() == "NeuroNova viewer"
    icons = page.locator('link[rel~="icon"]')
    assert icons.count() == 1 and icons.get_attribute("href") == "/favicon.svg"
    assert page.request.get(appliance.url + "/favicon.svg").ok
    header = page.locator("body").inner_text()
    assert "Open Health Imaging Foundation" not in header
    assert page.locator('[aria-label="OHIF logo"]').count() == 0
    # The brand sits in OHIF's header, left of its toolbar, clear of it.
    box = brand.bounding_box()
    assert box and box["y"] < 48 and box["x"] < 20 and box["x"] + box["width"] < 250, box
    page.screenshot(path=ARTIFACTS / "10-viewer-neuronova.png")
    page.screenshot(path=ARTIFACTS / "10-viewer-neuronova-header.png",
                    clip={"x": 0, "y": 0, "width": 640, "height": 60})  # fmt: skip

    # The logo leads back to the worklist.
    link.click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    page.get_by_test_id("worklist").wait_for()
    assert page.get_by_test_id("current-user").inner_text().strip() == USER

    # Back in the viewer, Sign out ends the session and shows the login page.
    page.go_back()
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?"))
    page.get_by_test_id("nn-sign-out").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/login")
    page.get_by_test_id("login-username").wait_for()
    assert SESSION_COOKIE not in {c["name"] for c in context.cookies()}
    assert fetch_status(page, QIDO) == 401
    page.screenshot(path=ARTIFACTS / "11-viewer-signed-out.png")
    # And the viewer no longer opens without signing in again.
    page.goto(appliance.url + viewer_path(series.study_uid))
    page.wait_for_url(re.compile(r"/login\?next="))


def test_signing_out_in_another_tab_becomes_a_dialog_and_back(appliance, study, new_context):
    series, _ = study
    context, page, recorder = open_viewer(appliance, new_context, study, "12-viewer-before-logout")
    url = frame_url(recorder)
    assert page.get_by_test_id("nn-session-ended").count() == 0

    # Sign out in another tab of the same browser, as a user would.
    app = context.new_page()
    app.goto(appliance.url + "/")
    app.get_by_test_id("logout").click()
    app.wait_for_url(re.compile(r"/login"))
    app.close()

    # The viewer's next DICOMweb request, one of OHIF's own (the second series, opened
    # from the study browser), is refused: the dialog, not broken images.
    assert page.get_by_test_id("nn-session-ended").count() == 0
    recorder.refused.clear()
    page.get_by_text(SECOND_SERIES).first.dblclick()
    dialog_login_link(page, series.study_uid)
    assert recorder.refused and {r.status for r in recorder.refused} == {401}, recorder.refused
    # A request made like OHIF's DICOMweb client makes them (XMLHttpRequest): refused too.
    assert xhr_status(page, url) == 401
    page.screenshot(path=ARTIFACTS / "13-viewer-session-ended.png")
    sign_in_again_from_dialog(page, recorder, study, "14-viewer-after-signing-in-again")


def test_a_session_ended_by_an_admin_becomes_a_dialog(appliance, study, new_context):
    series, _ = study
    _context, page, recorder = open_viewer(appliance, new_context, study, "15-viewer-before-revoke")
    url = frame_url(recorder)

    # Disabling the account ends its sessions at once; enabled again, it may sign in.
    disabled = run_cli(appliance, "user", "disable", USER)
    assert disabled.returncode == 0, disabled.stderr
    try:
        # cornerstone's streaming and byte-range loaders use fetch(): the dialog too.
        assert fetch_status(page, url) == 401
        dialog_login_link(page, series.study_uid)
        page.screenshot(path=ARTIFACTS / "16-viewer-session-revoked.png")
    finally:
        enabled = run_cli(appliance, "user", "enable", USER)
        assert enabled.returncode == 0, enabled.stderr
    sign_in_again_from_dialog(page, recorder, study, "17-viewer-after-revocation")


def test_an_expired_access_cookie_is_renewed_without_a_dialog(appliance, study, new_context):
    context, page, recorder = open_viewer(appliance, new_context, study, "18-viewer-renewal")
    url = frame_url(recorder)
    cookie = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)

    # The access cookie stops opening anything (as after the computer slept past its
    # 15 minutes); the refresh cookie still holds: the request is made again, no dialog.
    context.add_cookies([{**cookie, "value": "expired." + cookie["value"][8:]}])
    assert fetch_status(page, url) == 200
    renewed = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)
    assert renewed["value"] not in (cookie["value"], "expired." + cookie["value"][8:])
    assert any("session cookie was renewed" in text for text in recorder.console)
    assert xhr_status(page, url) == 200
    poll(page, lambda: True, 1, "nothing")  # let any dialog appear, if one would
    assert page.get_by_test_id("nn-session-ended").count() == 0


def test_a_share_link_has_no_sign_out_and_a_withdrawn_one_says_so(appliance, study, new_context):
    series, slices = study
    auth = {"Authorization": f"Bearer {api_token(appliance, USER, PASSWORD)}"}
    made = requests.post(f"{appliance.url}/api/shares", timeout=10, headers=auth,
                         json={"study_uid": series.study_uid, "expires_in_hours": 1})  # fmt: skip
    made.raise_for_status()
    share = made.json()
    page = new_context().new_page()
    recorder = Recorder(page)
    page.goto(f"{appliance.url}/api/shares/open?token={quote(share['token'])}")
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?"))
    wait_for_image(page, recorder, slices, "19-viewer-share-link")
    page.get_by_test_id("nn-user").wait_for()
    assert page.get_by_test_id("nn-user").inner_text().strip() == "Shared study"
    assert page.get_by_test_id("nn-sign-out").count() == 0
    assert page.get_by_test_id("nn-worklist-link").is_visible()

    revoked = requests.delete(f"{appliance.url}/api/shares/{share['id']}", headers=auth, timeout=10)
    assert revoked.ok, revoked.text
    recorder.refused.clear()
    page.get_by_text(SECOND_SERIES).first.dblclick()
    dialog = page.get_by_test_id("nn-session-ended")
    dialog.wait_for(state="visible", timeout=15_000)
    assert "This shared study is no longer open" in dialog.inner_text()
    assert recorder.refused and {r.status for r in recorder.refused} == {401}, recorder.refused
    page.screenshot(path=ARTIFACTS / "20-viewer-share-withdrawn.png")
