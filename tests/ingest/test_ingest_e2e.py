"""Ingest end to end: dcmtk's storescu as the modality, the real receiver, queue and Orthanc.

Objects in many transfer syntaxes go in; what comes out through the gateway has the
same pixels, as HTJ2K when it was lossless, as received when it was lossy or has none.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from appliance.db import open_database
from appliance.ingest.modalities import add_modality, remove_modality
from appliance.transcode import pixels
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token, dicomweb
from tests.support.running import storescu
from tests.support.samples import TEST_FILES, renamed_copy
from tests.support.tools import DCMTK_STORESCU
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
HTJ2K = "1.2.840.10008.1.2.4.201"
# storescu proposes only uncompressed syntaxes unless told which compressed one to offer.
STORESCU_FLAG = {
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}
# (file, expected action): lossless images become HTJ2K, the rest are kept as received.
SAMPLES = [
    ("CT_small.dcm", "transcoded"),  # explicit little endian
    ("MR_small_implicit.dcm", "transcoded"),
    ("MR_small_bigendian.dcm", "transcoded"),
    ("image_dfl.dcm", "transcoded"),  # deflated
    ("MR_small_RLE.dcm", "transcoded"),
    ("MR_small_jpeg_ls_lossless.dcm", "transcoded"),
    ("MR_small_jp2klossless.dcm", "transcoded"),
    ("SC_rgb_rle_2frame.dcm", "transcoded"),  # colour, multi-frame
    ("SC_rgb_small_odd.dcm", "transcoded"),
    ("examples_palette.dcm", "transcoded"),
    ("JPEG2000.dcm", "kept"),  # lossy J2K
    ("JPEG-lossy.dcm", "kept"),  # lossy JPEG extended
    ("SC_rgb_jpeg_dcmtk.dcm", "kept"),  # lossy JPEG baseline
    ("JPEGLSNearLossless_08.dcm", "kept"),
    ("rtplan.dcm", "kept"),  # no pixel data
    ("test-SR.dcm", "kept"),
]


def journal(appliance) -> dict[str, dict]:
    db = open_database(appliance.settings.layout.database_file)
    rows = {r["sop_uid"]: r for r in db["instances"].rows}
    db.close()
    return rows


def wait_settled(appliance, sop_uids, timeout: float = 180) -> dict[str, dict]:
    def settled() -> bool:
        rows = journal(appliance)
        return all(rows.get(s, {}).get("state") in ("stored", "failed") for s in sop_uids)

    wait_for(settled, timeout, f"{len(sop_uids)} objects to settle")
    return journal(appliance)


@pytest.fixture(scope="module")
def token(appliance) -> str:
    return api_token(appliance, "admin", appliance.admin_password)


@pytest.mark.parametrize(("name", "action"), SAMPLES)
def test_every_transfer_syntax_is_stored_with_identical_pixels(
    appliance, token, tmp_path, name, action
):
    ds = renamed_copy(TEST_FILES / name, tmp_path / name)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    flag = [STORESCU_FLAG[syntax]] if syntax in STORESCU_FLAG else []
    sent = storescu(appliance, [tmp_path / name], "STORESCU", *flag)
    assert sent.returncode == 0, sent.stderr
    row = wait_settled(appliance, [ds.SOPInstanceUID])[ds.SOPInstanceUID]
    assert row["state"] == "stored", row["error"]
    assert row["action"] == action, row["reason"]
    assert row["ts_out"] == (HTJ2K if action == "transcoded" else syntax)
    if action == "kept":
        assert row["reason"]
    back = dicomweb(appliance, token).retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert back.file_meta.TransferSyntaxUID == row["ts_out"]
    if "PixelData" not in ds:
        return
    if action == "kept":  # the very bytes the modality sent
        assert back.PixelData == ds.PixelData
    else:  # the original decoded as the worker does (its lossless JPEG / JPEG-LS plugin)
        assert pixels.DECODER_DEPENDENCIES
        assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_unregistered_caller_is_rejected_at_association(appliance):
    db = open_database(appliance.settings.layout.database_file)
    add_modality(db, "CT_ROOM_1", "127.0.0.1")
    try:
        port = str(appliance.settings.dicom.port)
        stranger = subprocess.run(
            ["echoscu", "-aet", "INTRUDER", "-aec", "NEURONOVA", "127.0.0.1", port],
            capture_output=True,
            text=True,
        )
        assert stranger.returncode != 0
        assert "Association Rejected" in stranger.stderr
        known = subprocess.run(
            ["echoscu", "-aet", "CT_ROOM_1", "-aec", "NEURONOVA", "127.0.0.1", port],
            capture_output=True,
            text=True,
        )
        assert known.returncode == 0, known.stderr
        log = (appliance.settings.home / "logs" / "receiver.log").read_text()
        assert "rejected association from INTRUDER" in log
        assert "not on the modality allow-list" in log
    finally:
        remove_modality(db, "CT_ROOM_1")
        db.close()


def test_wrong_called_ae_title_is_rejected(appliance):
    result = subprocess.run(
        ["echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(appliance.settings.dicom.port)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "Association Rejected" in result.stderr


def test_twenty_modalities_sending_at_once(appliance, tmp_path):
    series = [write_series(tmp_path / f"m{n}", make_slices(3)) for n in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(
            pool.map(
                lambda s: storescu(appliance, s[1].files, f"MODALITY{s[0]}"),
                enumerate(series),
            )
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    sops = [sop for s in series for sop in s.sop_uids]
    rows = wait_settled(appliance, sops)
    assert {rows[s]["state"] for s in sops} == {"stored"}


def test_the_same_instance_twice_is_stored_once(appliance, token, tmp_path):
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "dup.dcm")
    for _ in range(2):
        assert storescu(appliance, [tmp_path / "dup.dcm"]).returncode == 0
    # Both copies handled: each spooled copy is removed once its task has run. Only this
    # SOP's copies: the appliance is shared by the session, and other modules leave failed
    # objects' spool files behind on purpose (kept for `ingest retry`).
    spool = appliance.settings.home / "spool"
    copies = f"{ds.SOPInstanceUID}.*.dcm"
    wait_for(lambda: not list(spool.glob(copies)), 60, "both spooled copies to be removed")
    wait_settled(appliance, [ds.SOPInstanceUID])
    found = dicomweb(appliance, token).search_for_instances(study_instance_uid=ds.StudyInstanceUID)
    assert len(found) == 1


def test_nearly_full_disk_answers_out_of_resources(appliance_factory, tmp_path):
    full = appliance_factory({"dicom.min_free_mb": 10**9}).start()  # more than any disk has
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "a.dcm")
    sent = storescu(full, [tmp_path / "a.dcm"], "STORESCU", "-v")
    assert "Received Store Response (Refused: OutOfResources)" in sent.stderr, sent.stderr
    assert ds.SOPInstanceUID not in journal(full)
    assert not list((full.settings.home / "spool").glob("*.dcm"))
    _, report = full.health()
    assert any("disk nearly full" in w for w in report["warnings"])


def _successes(storescu_log: str) -> list[str]:
    """Files storescu -v got a Success response for, in order."""
    sent, done = None, []
    for line in storescu_log.splitlines():
        if match := re.search(r"Sending file: (\S+)", line):
            sent = match.group(1)
        elif "Received Store Response (Success)" in line and sent:
            done.append(sent)
    return done


def test_kill_9_during_a_push_loses_nothing(appliance_factory, tmp_path):
    appliance = appliance_factory()
    appliance.start()
    series = write_series(tmp_path / "big", make_slices(60))
    log = tmp_path / "storescu.log"
    with open(log, "w") as out:
        push = subprocess.Popen(
            [
                DCMTK_STORESCU,
                "-v",
                "-aec",
                "NEURONOVA",
                "127.0.0.1",
                str(appliance.settings.dicom.port),
                *map(str, series.files),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: len(journal(appliance)) >= 15, 60, "15 objects received")
        os.kill(appliance.process.pid, signal.SIGKILL)  # children follow (PDEATHSIG)
        appliance.process.wait()
        push.wait(timeout=60)
    acknowledged = _successes(log.read_text())
    assert 10 <= len(acknowledged) < 60  # killed mid-push, after some were acknowledged
    wait_for(
        lambda: (
            not subprocess.run(
                ["pgrep", "-f", str(appliance.settings.home)], capture_output=True
            ).stdout
        ),
        10,
        "no process left",
    )
    appliance.start()
    by_path = dict(zip(map(str, series.files), series.sop_uids, strict=True))
    sops = [by_path[path] for path in acknowledged]
    rows = wait_settled(appliance, sops)
    assert {rows[s]["state"] for s in sops} == {"stored"}
    assert not list((appliance.settings.home / "spool").glob("*.dcm"))
    # The JPEGs written after "stored" (a lower-priority task) survive the kill as well.
    wait_for(lambda: all(journal(appliance)[s]["images_at"] for s in sops), 120, "JPEGs")
    frames = appliance.settings.layout.frames_dir / series.study_uid / series.series_uid
    for sop in sops:
        assert all(
            (frames / sop / name).stat().st_size for name in ("rendered.jpg", "thumbnail.jpg")
        )
    client = dicomweb(appliance, api_token(appliance, "admin", appliance.admin_password))
    found = client.search_for_instances(study_instance_uid=series.study_uid)
    uids = [f["00080018"]["Value"][0] for f in found]
    assert len(uids) == len(set(uids)) and set(sops) <= set(uids)
    slices = make_slices(60)
    for index, sop in enumerate(series.sop_uids):
        if sop in sops:
            ds = client.retrieve_instance(series.study_uid, series.series_uid, sop)
            assert ds.file_meta.TransferSyntaxUID == HTJ2K
            assert np.array_equal(ds.pixel_array, slices[index])
