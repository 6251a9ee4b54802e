"""Progressive HTJ2K in the real viewer (issue 16, item 5): real nginx, app, Orthanc and
Chromium.

Frames are served as HTJ2K with RPCL Options (``.4.202``); a byte range of a frame URL
passes the frame gate with the session cookie alone (cornerstone's range requests send
no Authorization header) and nginx answers 206 from the frame file. Cornerstone appends
the ranges and reads the one-part multipart body from what it has, so a range of the
file is what it expects. OHIF, with the ``stackRetrieveOptions`` of ``app-config.js``,
fetches a first range of each frame, decodes it at reduced resolution and shows it, then
fetches the rest and shows the full frame: read here from cornerstone's own image objects
as each one is rendered, on an emulated 20 Mbit/s link with 40 ms latency.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import requests

from appliance.store.frame_files import BOUNDARY, frame_relpath
from appliance.transcode.codestream import RPCL_SYNTAX
from bench.browser import correlation
from bench.synthetic import INTERCEPT
from bench.viewer_load import completes
from tests.support.browsing import (
    ARTIFACTS,
    Recorder,
    poll,
    sign_in,
    viewer_path,
)
from tests.support.running import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SLICES = 6
PATIENT_ID, PATIENT_NAME = "NNPROGRESSIVE01", "PROGRESSIVE^PHANTOM"
USER = "rad.progressive"
PASSWORD = "progressive frames test password"
CALLING_AE = "PROGRESSIVE"  # the study fixture (tests/browser/conftest.py) sends from it
ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
SUBRESOLUTION, FULL_RESOLUTION = 6, 8  # cornerstone's ImageQualityStatus
FIRST_RANGE = "bytes=0-32767"  # FIRST_RANGE_BYTES of packaging/fetch_ohif.py
LINK = {
    "offline": False,
    "latency": 40,
    "downloadThroughput": 20e6 / 8,
    "uploadThroughput": 20e6 / 8,
}
# Every image cornerstone renders in a viewport: quality, size and pixels (as displayed,
# after the modality LUT), when it was rendered.
RECORD_IMAGES = """
window.__renderedImages = [];
const watch = () => {
  const elements = window.cornerstone?.getEnabledElements?.() ?? [];
  const viewport = elements[0]?.viewport;
  if (!viewport?.element) return setTimeout(watch, 20);
  let last = null;
  viewport.element.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
    const image = viewport.csImage;
    if (!image || image === last) return;
    last = image;
    window.__renderedImages.push({
      at: performance.now(), imageId: image.imageId, quality: image.imageQualityStatus,
      rows: image.rows, columns: image.columns, pixels: Array.from(image.getPixelData()),
    });
  });
};
watch();
"""


def sop_of(response) -> str:
    return response.url.split("/instances/")[1].split("/")[0]


def test_byte_ranges_pass_the_gate_with_the_session_cookie(appliance, study) -> None:
    series, _ = study
    browser = requests.Session()
    browser.trust_env = False
    login = browser.post(f"{appliance.url}/api/auth/login", timeout=10,
                         json={"username": USER, "password": PASSWORD})  # fmt: skip
    assert login.status_code == 200
    relpath = frame_relpath(series.study_uid, series.series_uid, series.sop_uids[0], 1)
    url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[0]}/frames/1")  # fmt: skip
    on_disk = (appliance.settings.home / "frames" / relpath).read_bytes()
    assert f"transfer-syntax={RPCL_SYNTAX}".encode() in on_disk[:200]

    first = browser.get(url, headers={"Accept": ACCEPT, "Range": FIRST_RANGE}, timeout=10)
    assert first.status_code == 206, first.text
    assert first.headers["Content-Range"] == f"bytes 0-32767/{len(on_disk)}"
    assert first.headers["Content-Type"] == (
        f'multipart/related; type="application/octet-stream"; boundary={BOUNDARY}'
    )
    rest = browser.get(url, headers={"Accept": ACCEPT, "Range": "bytes=32768-"}, timeout=10)
    assert rest.status_code == 206
    assert first.content + rest.content == on_disk

    # Without a session the gate hands the range request to the app, which refuses it.
    anonymous = requests.get(url, headers={"Accept": ACCEPT, "Range": FIRST_RANGE}, timeout=10)
    assert anonymous.status_code == 401


def test_the_viewer_shows_a_first_pass_then_the_exact_frame(appliance, study, new_context):
    series, slices = study
    context = new_context()
    page = context.new_page()
    recorder = Recorder(page)
    requests_seen: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: requests_seen.append(r.headers) if "/frames/" in r.url else None,
    )
    page.add_init_script(RECORD_IMAGES)
    page.goto(f"{appliance.url}/login")
    sign_in(page, USER, PASSWORD)
    page.get_by_test_id("worklist").wait_for()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", LINK)
    page.goto(appliance.url + viewer_path(series.study_uid))

    def shown() -> list[dict]:
        return page.evaluate("window.__renderedImages")

    poll(page, lambda: any(i["quality"] == FULL_RESOLUTION for i in shown()), 60,
         "the viewport's first full-resolution frame", recorder)  # fmt: skip
    page.screenshot(path=ARTIFACTS / "progressive-final.png")
    images = shown()
    first_id = images[0]["imageId"]
    passes = [i for i in images if i["imageId"] == first_id]
    first, final = passes[0], next(i for i in passes if i["quality"] == FULL_RESOLUTION)

    # The final pass is the frame that was sent, pixel for pixel.
    full = np.array(final["pixels"]).reshape(final["rows"], final["columns"])
    matches = [
        k for k, s in enumerate(slices) if np.array_equal(s.astype(np.int64) + INTERCEPT, full)
    ]
    assert len(matches) == 1, "the full-resolution frame is not one of the slices sent"

    # The first pass came before it, from the first range, at half resolution (decode
    # level 1), and is the same picture: correlation with the full frame downsampled.
    assert first["quality"] == SUBRESOLUTION, [(i["quality"], i["rows"]) for i in passes]
    assert (first["rows"], first["columns"]) == (full.shape[0] // 2, full.shape[1] // 2)
    reduced = np.array(first["pixels"], dtype=np.float64).reshape(first["rows"], first["columns"])
    downsampled = full.reshape(reduced.shape[0], 2, reduced.shape[1], 2).mean(axis=(1, 3))
    score = correlation(reduced, downsampled)
    assert score >= 0.9, score

    # Every slice of the stack arrives whole (the prefetch fetches whole frames), not
    # only its first range.
    def all_whole() -> bool:
        whole = {sop_of(r) for r in recorder.frames if completes(r.status, r.headers)}
        return whole >= set(series.sop_uids)

    poll(page, all_whole, 60, "every frame of the series to arrive whole", recorder)

    # Range requests carry the session cookie, never an Authorization header.
    ranged = [h for h in requests_seen if "range" in h]
    assert ranged and all("authorization" not in h for h in ranged)
    assert {h["range"] for h in ranged} >= {FIRST_RANGE, "bytes=32768-"}
    frame_path = first_id.split("/instances/")[1]
    sizes = [len(r.body()) for r in recorder.frames if r.url.endswith(frame_path)]
    facts = {
        "link": "20 Mbit/s, 40 ms latency (Chrome's emulation)",
        "first_pass_correlation": round(score, 4),
        "first_pass_size": [first["rows"], first["columns"]],
        "first_pass_ms_after_navigation": round(first["at"]),
        "final_ms_after_navigation": round(final["at"]),
        "bytes_per_response_of_the_first_frame": sizes,
    }
    (ARTIFACTS / "progressive-facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(facts)


def test_relabel_while_the_appliance_runs_finds_every_new_frame_labelled(appliance, study):
    ran = run_cli(appliance, "frames", "relabel", "--reencode")
    assert ran.returncode == 0, ran.stderr
    found = re.findall(r"(\d+) (relabelled|re-encoded|already labelled)", ran.stdout)
    counts = {label: int(number) for number, label in found}
    assert counts["relabelled"] == counts["re-encoded"] == 0, ran.stdout
    assert counts["already labelled"] >= SLICES, ran.stdout
