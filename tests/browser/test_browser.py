"""The browser end to end: real headless Chromium against the real appliance.

One synthetic CT series is pushed with dcmtk's storescu and ingested (HTJ2K). Then, in
Chromium: log in through the React login page, find the study on the worklist, open it
in OHIF and check the picture on screen against the pixels that were sent; the viewer
behind nginx's ``auth_request`` (login and back); logout cutting the viewer off; the
worklist at tablet size; the admin system page.

Screenshots go to ``test-artifacts/browser/`` (repository root, git-ignored).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pydicom
import pytest
import requests

from appliance.health.doctor import CHECKS
from appliance.store.orthanc import OrthancStore
from bench.browser import (
    MIN_CORRELATION,
    best_match,
    block_means,
    correlation,
    windowed_views,
)
from bench.synthetic import make_slices, write_series
from tests.support.browsing import (
    ARTIFACTS,
    SESSION_COOKIE,
    Recorder,
    fetch_status,
    poll,
    sign_in,
    sign_in_to_the_viewer,
    viewer_path,
    wait_for_image,
)
from tests.support.clients import api_token
from tests.support.running import storescu, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.browser]

HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"  # frames are served as HTJ2K with RPCL Options
SLICES = 16
PATIENT_ID, PATIENT_NAME = "NNBROWSER01", "BROWSER^PHANTOM"  # found with the worklist search
USER = "rad.browser"
PASSWORD = "browser test password"
CALLING_AE = "BROWSERSCU"  # the study fixture (tests/browser/conftest.py) sends from it
JWT_RE = re.compile(r"eyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]{10,}")
TABLET = {"width": 820, "height": 1180}


def find_on_worklist(page, study_uid: str):
    """Search the worklist for the test patient; the study's row once it is listed."""
    page.get_by_test_id("worklist").wait_for()
    page.get_by_test_id("worklist-search").fill(PATIENT_ID)
    row = page.locator(f'[data-testid="study-row"][data-study-uid="{study_uid}"]')
    row.wait_for()
    return row


def storage_dump(page) -> str:
    return page.evaluate(
        """() => JSON.stringify({
            local: Object.fromEntries(Object.entries(localStorage)),
            session: Object.fromEntries(Object.entries(sessionStorage)),
        })"""
    )


def session_cookie(context) -> dict:
    cookies = {c["name"]: c for c in context.cookies()}
    assert SESSION_COOKIE in cookies, sorted(cookies)
    return cookies[SESSION_COOKIE]


# --------------------------------------------------------------------------- tests


def test_login_worklist_and_viewer_show_the_pushed_study(appliance, study, new_context):
    series, slices = study
    context = new_context()
    page = context.new_page()
    recorder = Recorder(page)

    page.goto(f"{appliance.url}/login")
    sign_in(page, USER, PASSWORD)
    row = find_on_worklist(page, series.study_uid)
    assert urlsplit(page.url).path == "/"
    text = row.inner_text()
    assert "BROWSER, PHANTOM" in text and f"1 / {SLICES}" in text and "stored" in text, text
    page.screenshot(path=ARTIFACTS / "01-worklist.png")

    # The session lives in an HttpOnly cookie; nothing token-like in JS storage.
    cookie = session_cookie(context)
    assert cookie["httpOnly"]
    stored = storage_dump(page)
    assert cookie["value"] not in stored and not JWT_RE.search(stored), stored

    row.get_by_test_id("open-viewer").click()
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?StudyInstanceUIDs="))
    assert parse_qs(urlsplit(page.url).query)["StudyInstanceUIDs"] == [series.study_uid]
    shown = wait_for_image(page, recorder, slices, "02-viewer")

    # OHIF's own timings were logged; the first image came reasonably fast.
    timings = shown["timings"]
    for name in ("studyToFirstImage", "displaySetsToFirstImage", "scriptToView"):
        assert name in timings, timings
    assert timings["studyToFirstImage"] < 15_000, timings

    # The picture is the phantom, not a black or wrong image: it correlates with the
    # windowed slice and not with the same slice upside down.
    views = windowed_views(slices)
    grid = block_means(shown["picture"])
    flipped = correlation(grid, views[shown["index"]][::-1])
    assert shown["score"] >= MIN_CORRELATION and shown["score"] - flipped > 0.3, (shown, flipped)
    black = best_match(np.zeros_like(shown["picture"]), views)[1]
    assert black < MIN_CORRELATION  # the measure itself tells a black viewport apart

    # Every frame the viewer fetched: 200 or, for the byte ranges of progressive loading,
    # 206; multipart/related; the part (at the start of a body) typed as HTJ2K with RPCL.
    poll(page, lambda: len({r.url for r in recorder.frames}) >= SLICES, 30,
         f"the viewer to fetch all {SLICES} frames")  # fmt: skip
    for response in recorder.frames:
        assert response.status in (200, 206), (response.status, response.url)
        assert response.headers["content-type"].startswith("multipart/related"), response.headers
        if response.status == 200 or response.headers["content-range"].startswith("bytes 0-"):
            head = response.body()[:400].decode("latin-1")
            assert f"transfer-syntax={HTJ2K_RPCL}" in head, head
    fetched = {r.url.split("/instances/")[1].split("/")[0] for r in recorder.frames}
    assert fetched == set(series.sop_uids)

    stored = storage_dump(page)
    assert cookie["value"] not in stored and not JWT_RE.search(stored), stored
    facts = {
        "ohif_timings_ms": timings,
        "slice_index": shown["index"],
        "correlation": round(shown["score"], 4),
        "flipped_correlation": round(flipped, 4),
    }
    (ARTIFACTS / "02-viewer-facts.json").write_text(json.dumps(facts, indent=2) + "\n")


def test_viewer_without_session_goes_to_login_and_back(appliance, study, new_context):
    series, slices = study
    context = new_context()
    page = context.new_page()
    recorder = Recorder(page)

    page.goto(appliance.url + viewer_path(series.study_uid))
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_test_id("login-username").wait_for()
    assert unquote(parse_qs(urlsplit(page.url).query)["next"][0]) == viewer_path(series.study_uid)
    assert recorder.frames == []
    page.screenshot(path=ARTIFACTS / "03-viewer-redirected-to-login.png")

    sign_in(page, USER, PASSWORD)
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?StudyInstanceUIDs="))
    assert parse_qs(urlsplit(page.url).query)["StudyInstanceUIDs"] == [series.study_uid]
    wait_for_image(page, recorder, slices, "04-viewer-after-login")


def test_logout_cuts_the_viewer_off(appliance, study, new_context):
    series, _ = study
    context = new_context()
    page = context.new_page()
    recorder = Recorder(page)
    sign_in_to_the_viewer(appliance, page, series.study_uid, USER, PASSWORD)
    poll(page, lambda: len(recorder.frames) > 0, 45, "the viewer's first frame request", recorder)
    frame_url = recorder.frames[0].url
    qido = "/api/pacs/dicom-web/studies"
    assert fetch_status(page, qido) == 200
    assert fetch_status(page, frame_url) == 200

    # Sign out in another tab of the same browser, as a user would.
    app = context.new_page()
    app.goto(appliance.url + "/")
    app.get_by_test_id("logout").click()
    app.wait_for_url(re.compile(r"/login"))
    app.screenshot(path=ARTIFACTS / "05-after-logout.png")
    assert SESSION_COOKIE not in {c["name"] for c in context.cookies()}

    # The open viewer's DICOMweb requests are refused now, and a reload goes to login.
    assert fetch_status(page, qido) == 401
    assert fetch_status(page, frame_url) == 401
    page.reload()
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_test_id("login-username").wait_for()
    page.screenshot(path=ARTIFACTS / "06-viewer-reload-after-logout.png")


@pytest.mark.parametrize("admin", [False, True], ids=["radiologist", "admin"])
def test_worklist_fits_a_tablet(appliance, study, new_context, admin):
    """Admins have one more button per row (Delete): it fits as well."""
    series, _ = study
    context = new_context(TABLET)
    page = context.new_page()
    page.goto(f"{appliance.url}/login")
    sign_in(page, "admin" if admin else USER, appliance.admin_password if admin else PASSWORD)
    row = find_on_worklist(page, series.study_uid)
    shot = f"07-worklist-tablet{'-admin' if admin else ''}.png"
    page.screenshot(path=ARTIFACTS / shot, full_page=True)
    sizes = page.evaluate(
        """() => ({
            inner: window.innerWidth,
            doc: document.documentElement.scrollWidth,
            body: document.body.scrollWidth,
        })"""
    )
    assert sizes["doc"] <= sizes["inner"] and sizes["body"] <= sizes["inner"], sizes
    # The study's "Open" button is on screen without scrolling sideways.
    button = row.get_by_test_id("open-viewer").bounding_box()
    assert button is not None, "the Open button is not rendered"
    assert button["x"] >= 0 and button["x"] + button["width"] <= TABLET["width"], button


def test_admin_system_page_shows_every_component_ok(appliance, new_context):
    context = new_context()
    page = context.new_page()
    page.goto(f"{appliance.url}/login")
    sign_in(page, "admin", appliance.admin_password)
    page.get_by_test_id("worklist").wait_for()
    page.get_by_test_id("nav-system").click()
    page.wait_for_url(re.compile(r"/admin/system$"))
    page.get_by_test_id("components").wait_for()
    names = ["nginx", "app", "orthanc", "queue", "receiver"]

    def all_listed() -> bool:
        found = page.locator('[data-testid="component"]').evaluate_all(
            "els => els.map(e => [e.dataset.component, e.dataset.status])"
        )
        return {name for name, _ in found} >= set(names)

    poll(page, all_listed, 15, "every component on the system page")
    found = dict(
        page.locator('[data-testid="component"]').evaluate_all(
            "els => els.map(e => [e.dataset.component, e.dataset.status])"
        )
    )
    page.get_by_test_id("doctor-row").first.wait_for(timeout=15_000)
    checks = dict(
        page.locator('[data-testid="doctor-row"]').evaluate_all(
            "els => els.map(e => [e.querySelector('td').textContent, e.dataset.status])"
        )
    )
    page.get_by_test_id("queue-kind").first.wait_for(timeout=15_000)
    kinds = page.locator('[data-testid="queue-kind"]').evaluate_all(
        "els => els.map(e => e.dataset.kind)"
    )
    page.screenshot(path=ARTIFACTS / "08-admin-system.png", full_page=True)
    assert len(checks) == len(CHECKS) and "FAIL" not in checks.values(), checks
    assert {"ingest", "previews", "retention", "backups"} <= set(kinds), kinds
    assert {name: found[name] for name in names} == dict.fromkeys(names, "ok"), found
    assert "All services are running" in page.get_by_test_id("system-status").inner_text()


def test_admin_audit_page_shows_who_read_the_patient_and_exports_it(appliance, study, new_context):
    series, _ = study
    token = api_token(appliance, USER, PASSWORD)
    metadata = requests.get(
        f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/metadata",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert metadata.status_code == 200
    page = new_context().new_page()
    page.goto(f"{appliance.url}/login")
    sign_in(page, "admin", appliance.admin_password)
    page.get_by_test_id("worklist").wait_for()
    page.get_by_test_id("nav-audit").click()
    page.wait_for_url(re.compile(r"/admin/audit$"))
    page.get_by_test_id("audit-patient").fill(PATIENT_ID)
    page.get_by_test_id("audit-apply").click()
    row = page.get_by_test_id("audit-trail-row").filter(has_text="study_read").first
    row.wait_for()
    text = row.inner_text()
    assert USER in text and PATIENT_ID in text and series.study_uid in text
    page.screenshot(path=ARTIFACTS / "09-admin-audit.png", full_page=True)
    with page.expect_download() as download:
        page.get_by_test_id("audit-export-csv").click()
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert exported and {r["patient_id"] for r in exported} == {PATIENT_ID}
    assert any(r["event"] == "study_read" and r["username"] == USER for r in exported)


def test_an_admin_deletes_a_study_from_the_worklist(appliance, study, new_context, tmp_path):
    series = write_series(tmp_path, make_slices(2))
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = PATIENT_ID, "DOOMED^PHANTOM"
        ds.save_as(path, enforce_file_format=True)
    assert storescu(appliance, series.files, "BROWSERSCU").returncode == 0
    wait_stored(appliance, series.sop_uids)
    page = new_context().new_page()
    page.goto(f"{appliance.url}/login")
    sign_in(page, "admin", appliance.admin_password)
    row = find_on_worklist(page, series.study_uid)
    row.get_by_test_id("delete-study").click()
    message = page.get_by_test_id("delete-study-message")
    message.wait_for()
    # Cancel has the focus and Escape cancels: nothing is deleted.
    cancel = page.get_by_test_id("confirm-cancel")
    assert cancel.evaluate("button => button === document.activeElement")
    page.keyboard.press("Escape")
    message.wait_for(state="detached")
    assert row.count() == 1
    row.get_by_test_id("delete-study").click()
    message.wait_for()
    assert "DOOMED, PHANTOM" in message.inner_text() and PATIENT_ID in message.inner_text()
    page.screenshot(path=ARTIFACTS / "10-delete-study-confirmation.png")
    page.get_by_test_id("confirm-ok").click()
    row.wait_for(state="detached")
    assert OrthancStore(appliance.settings).fetch(series.sop_uids[0]) is None
    other = page.locator(f'[data-testid="study-row"][data-study-uid="{study[0].study_uid}"]')
    assert other.count() == 1  # the module's study stays
