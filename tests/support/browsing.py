"""Driving the appliance's pages and the viewer in headless Chromium (playwright): sign-in,
a study pushed as a patient of a module's own, and waiting for OHIF's first image.

Screenshots go to ``test-artifacts/browser/`` (repository root, git-ignored).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import pydicom

from bench.browser import MIN_CORRELATION, best_match, canvas_picture, windowed_views
from tests.support.paths import ARTIFACTS as ALL_ARTIFACTS
from tests.support.running import run_cli, storescu

ARTIFACTS = ALL_ARTIFACTS / "browser"
SESSION_COOKIE = "nn_session"


def add_radiologist(appliance, username: str, password: str) -> None:
    """A radiologist account for a module's browser tests."""
    added = run_cli(appliance, "user", "add", username, "--role", "radiologist",
                    "--password-stdin", stdin=password + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr


def send_as_patient(appliance, files, patient: tuple[str, str], calling_ae: str,
                    **attributes: object) -> None:  # fmt: skip
    """Send ``files`` with storescu as a patient of their own (ID, name) among the shared
    appliance's studies, each file's other ``attributes`` set first."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient
        for name, value in attributes.items():
            setattr(ds, name, value)
        ds.save_as(path, enforce_file_format=True)
    sent = storescu(appliance, files, calling_ae)
    assert sent.returncode == 0, sent.stderr


def sign_in_to_the_viewer(appliance, page, study_uid: str, username: str, password: str):
    """Open the viewer on ``study_uid`` through the login page (``next``), signed in."""
    page.goto(f"{appliance.url}/login?next={viewer_path(study_uid).replace('?', '%3F')}")
    sign_in(page, username, password)
    page.wait_for_url(re.compile(r"/pacs-viewer/viewer\?"))


class Recorder:
    """Console messages and DICOMweb frame responses of one page, as they happen."""

    def __init__(self, page) -> None:
        self.page = page
        self.console: list[str] = []
        self.frames: list[object] = []
        self.refused: list[object] = []
        page.on("console", lambda message: self.console.append(message.text))
        page.on("response", self._response)

    def _response(self, response) -> None:
        if "/api/pacs/dicom-web/" not in response.url:
            return
        if "/frames/" in response.url:
            self.frames.append(response)
        if response.status >= 400:
            self.refused.append(response)

    def fail_fast(self) -> None:
        """Stop waiting as soon as the viewer cannot succeed: say why."""
        if self.refused:
            response = self.refused[0]
            try:
                body = response.text()[:300]
            except Exception:  # the body may be gone already
                body = "?"
            raise AssertionError(
                f"the gateway refused a viewer request: HTTP {response.status} "
                f"{response.url[:300]} {body}"
            )
        if "/pacs-viewer/notfoundstudy" in self.page.url:
            raise AssertionError(f"OHIF could not load the study; console: {self.console[-10:]}")

    def timings(self) -> dict[str, float]:
        """OHIF's console timings (``console.timeEnd``): name -> milliseconds."""
        found = {}
        for text in self.console:
            match = re.fullmatch(r"(\w+): ([0-9.]+) ms", text.strip())
            if match:
                found[match[1]] = float(match[2])
        return found


def poll(page, condition: Callable[[], bool], timeout: float, what: str,
         recorder: Recorder | None = None) -> None:  # fmt: skip
    """Like :func:`tests.support.waiting.wait_for`, letting playwright deliver page events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if recorder is not None:
            recorder.fail_fast()
        if condition():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sign_in(page, username: str, password: str) -> None:
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def viewer_path(study_uid: str) -> str:
    return f"/pacs-viewer/viewer?StudyInstanceUIDs={study_uid}"


def viewport_picture(page) -> tuple[bytes, np.ndarray]:
    """OHIF's image canvas: (PNG screenshot, the image area in gray 0..1)."""
    png = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return png, canvas_picture(png)


def wait_for_image(page, recorder: Recorder, slices, name: str, timeout: float = 90) -> dict:
    """Wait until OHIF reports its first image and the canvas shows one of the slices.

    Returns facts for the assertions: OHIF's timings, the matching slice and scores.
    """
    poll(page, lambda: "studyToFirstImage" in recorder.timings(), timeout,
         "OHIF's studyToFirstImage console timing", recorder)  # fmt: skip
    views = windowed_views(slices)
    result: dict = {}

    def shows_a_slice() -> bool:
        png, picture = viewport_picture(page)
        index, score = best_match(picture, views)
        result.update(index=index, score=score, std=float(picture.std()), picture=picture, png=png)
        return score >= MIN_CORRELATION

    try:
        poll(page, shows_a_slice, 15, "the viewport to show the pushed image", recorder)
    except AssertionError as exc:
        page.screenshot(path=ARTIFACTS / f"{name}.png")
        (ARTIFACTS / f"{name}-viewport.png").write_bytes(result.get("png", b""))
        raise AssertionError(
            f"{exc}; viewport best matches slice {result.get('index')} with correlation "
            f"{result.get('score', 0):.3f} (std {result.get('std', 0):.3f}); "
            f"see {ARTIFACTS / name}.png; console tail: {recorder.console[-15:]}"
        ) from None
    (ARTIFACTS / f"{name}-viewport.png").write_bytes(result["png"])
    page.screenshot(path=ARTIFACTS / f"{name}.png")
    result["timings"] = recorder.timings()
    return result


def fetch_status(page, url: str) -> int:
    return page.evaluate(
        "async url => (await fetch(url, {credentials: 'same-origin', cache: 'no-store'})).status",
        url,
    )
