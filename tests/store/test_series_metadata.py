"""Series metadata prepared at ingest (appliance.store.series_metadata).

The unit tests build series files in a temporary tree, workers in processes of their own;
the differential test stores a few kinds of series in a real appliance and compares the
file nginx sends with what Orthanc's DICOMweb plugin answers for the same series.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.store import series_metadata
from appliance.store.orthanc import DICOMWEB_ROOT, orthanc_auth_header, orthanc_url
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.running import run_cli, storescu, wait_stored
from tests.support.samples import TEST_FILES, renamed_copy
from tests.support.waiting import wait_for

ST, SE = "1.2.3", "1.2.3.4"
PASSWORD = "series metadata test password"


def instance(sop: str) -> bytes:
    return json.dumps({"00080018": {"vr": "UI", "Value": [sop]}}).encode()


def read_series(root: Path) -> list[dict]:
    return json.loads(gzip.decompress((root / ST / SE / series_metadata.FILE_NAME).read_bytes()))


def store_one(root: Path, sop: str, stored: list[str]) -> bool:
    return series_metadata.update_series(root, ST, SE, sop, instance(sop), lambda: set(stored))


def test_the_series_file_holds_every_stored_instance(tmp_path):
    assert not store_one(tmp_path, "1.5.1", ["1.5.1", "1.5.2"])  # 1.5.2 has no part yet
    assert not (tmp_path / ST / SE / series_metadata.FILE_NAME).exists()
    assert store_one(tmp_path, "1.5.2", ["1.5.1", "1.5.2"])
    assert [item["00080018"]["Value"][0] for item in read_series(tmp_path)] == ["1.5.1", "1.5.2"]


def test_an_instance_without_metadata_leaves_the_series_to_orthanc(tmp_path):
    assert store_one(tmp_path, "1.5.1", ["1.5.1"])
    both = {"1.5.1", "1.5.2"}
    assert not series_metadata.update_series(tmp_path, ST, SE, "1.5.2", None, lambda: both)
    assert not (tmp_path / ST / SE / series_metadata.FILE_NAME).exists()


def test_a_series_stored_before_prepared_metadata_is_not_written(tmp_path):
    """Older instances have no part: the file would miss them, so Orthanc answers."""
    assert not store_one(tmp_path, "1.5.9", ["1.5.1", "1.5.9"])
    assert not (tmp_path / ST / SE / series_metadata.FILE_NAME).exists()


def _worker(root: str, sops: list[str], everyone: list[str]) -> None:
    for sop in sops:
        store_one(Path(root), sop, everyone)


def test_concurrent_workers_on_one_series_lose_no_instance(tmp_path):
    """Four processes store 40 instances of one series at once; the last rebuild of the
    series file (each under the lock) holds all of them."""
    everyone = [f"1.5.{n}" for n in range(1, 41)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(str(tmp_path), everyone[k::4], everyone))
               for k in range(4)]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    found = sorted(item["00080018"]["Value"][0] for item in read_series(tmp_path))
    assert found == sorted(everyone)


def sops_in(root: Path) -> list[str]:
    return [item["00080018"]["Value"][0] for item in read_series(root)]


def _grown_body(root: Path) -> bytes:
    """The grown file up to its cut (what the next append keeps)."""
    series = root / ST / SE
    state = json.loads((series / series_metadata.STATE).read_bytes().partition(b"\n")[0])
    return (series / series_metadata.GROWN).read_bytes()[: state["body_end"]]


def test_each_instance_is_appended_not_rebuilt(tmp_path):
    """The series file grows by appends (the bytes before the cut are kept, and it reads
    as one gzip member); an instance the journal no longer has, or a part replaced by a
    newer copy, makes it anew (no duplicate, no stale copy)."""
    stored: list[str] = []
    for n in range(1, 6):
        stored.append(f"1.5.{n}")
        before = _grown_body(tmp_path) if n > 1 else b""
        assert store_one(tmp_path, f"1.5.{n}", stored)
        assert _grown_body(tmp_path).startswith(before)
        assert sops_in(tmp_path) == stored
    newer = json.dumps({"00080018": {"vr": "UI", "Value": ["1.5.3"]}, "x": 1}).encode()
    assert series_metadata.update_series(tmp_path, ST, SE, "1.5.3", newer, lambda: set(stored))
    assert sorted(sops_in(tmp_path)) == stored
    assert by_sop(read_series(tmp_path))["1.5.3"]["x"] == 1
    stored.remove("1.5.2")
    assert store_one(tmp_path, "1.5.6", [*stored, "1.5.6"])
    assert sorted(sops_in(tmp_path)) == [*stored, "1.5.6"]


@pytest.mark.parametrize("damage", ["state", "grown", "both"])
def test_a_lost_or_stale_state_costs_a_rebuild_not_the_file(tmp_path, damage):
    """A crash can leave the state file out of step with the grown file (it is written
    without an fsync), or either missing: the next instance rebuilds from the parts."""
    stored = ["1.5.1", "1.5.2"]
    for sop in stored:
        store_one(tmp_path, sop, stored)
    series = tmp_path / ST / SE
    if damage in ("state", "both"):
        state = series / series_metadata.STATE
        state.write_bytes(state.read_bytes().replace(b'"body_end": ', b'"body_end": 1'))
    if damage in ("grown", "both"):
        (series / series_metadata.GROWN).unlink()
    stored.append("1.5.3")
    assert store_one(tmp_path, "1.5.3", stored)
    assert sops_in(tmp_path) == stored


def _cpu_seconds_to_store(root: Path, count: int) -> float:
    """CPU time of storing ``count`` instances of one series, each with a part of about 2
    KB (a CT slice's DICOM JSON is 2-5 KB), one after the other as the worker does."""
    stored: list[str] = []
    started = time.thread_time()
    for n in range(count):
        sop = f"1.5.{n}"
        stored.append(sop)
        part = json.dumps({"00080018": {"vr": "UI", "Value": [sop]},
                           "00200032": {"vr": "DS", "Value": [0, 0, n]},
                           "filler": [f"{sop}-{k}" for k in range(150)]}).encode()  # fmt: skip
        series_metadata.update_series(root, ST, SE, sop, part, lambda: set(stored))
    return time.thread_time() - started


def test_the_cost_of_a_series_grows_linearly(tmp_path):
    """Storing 8x the instances costs about 8x (rebuilding the file for each instance
    made it about 8^2 = 64x: 40 vs 320 instances measured 50x before appends)."""
    small = _cpu_seconds_to_store(tmp_path / "small", 40)
    large = _cpu_seconds_to_store(tmp_path / "large", 320)
    assert len(read_series(tmp_path / "large")) == 320
    assert large / small < 16, (small, large)


def test_bulk_data_uris_lose_the_origin_also_in_sequences():
    origin = "http://neuronova.invalid"
    answer = json.dumps([{
        "7FE00010": {"vr": "OW", "BulkDataURI": f"{origin}/api/x/bulk/7FE00010"},
        "00880200": {"vr": "SQ", "Value": [
            {"7FE00010": {"vr": "OW", "BulkDataURI": f"{origin}/api/x/bulk/00880200/1/7FE00010"}}
        ]},
    }]).encode()  # fmt: skip
    element = json.loads(series_metadata.instance_json(answer, origin))
    assert element["7FE00010"]["BulkDataURI"] == "/api/x/bulk/7FE00010"
    nested = element["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert nested == "/api/x/bulk/00880200/1/7FE00010"


# ------------------------------------------------------------------ on a real appliance


def native_copy(name: str, target: Path) -> Dataset:
    """One of pydicom's files under fresh UIDs, decoded to Explicit VR Little Endian
    (Debian's storescu cannot convert RLE)."""
    renamed_copy(TEST_FILES / name, target)
    ds = pydicom.dcmread(target)
    ds.decompress()
    ds.save_as(target)
    return ds


def with_sequence(target: Path) -> Dataset:
    """CT_small under fresh UIDs, with a sequence holding an icon image (bulk data inside
    a sequence) and a referenced image."""
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", target)
    icon = Dataset()
    icon.Rows = icon.Columns = 16
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = generate_uid()
    ds.IconImageSequence = [icon]
    ds.ReferencedImageSequence = [reference]
    ds.save_as(target)
    return ds


@pytest.fixture(scope="module")
def stored_series(appliance, tmp_path_factory):
    """(token, [(study, series, SOP UIDs)]): a 6-slice CT, an RGB image, a 2-frame RGB image
    and a CT with sequences, stored through the receiver."""
    added = run_cli(appliance, "user", "add", "rad.meta", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    folder = tmp_path_factory.mktemp("metadata")
    ct = write_series(folder / "ct", make_slices(6))
    names = ("SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm")
    singles = [native_copy(name, folder / name) for name in names]
    singles.append(with_sequence(folder / "sequence.dcm"))
    files = [*ct.files, *(folder / name for name in names), folder / "sequence.dcm"]
    sent = storescu(appliance, files)
    assert sent.returncode == 0, sent.stderr
    series = [(ct.study_uid, ct.series_uid, ct.sop_uids)]
    series += [(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), [str(ds.SOPInstanceUID)])
               for ds in singles]  # fmt: skip
    wait_stored(appliance, [sop for *_, sops in series for sop in sops])
    frames_dir = appliance.settings.layout.frames_dir
    for study, uid, _ in series:
        path = Path(frames_dir, study, uid, series_metadata.FILE_NAME)
        wait_for(path.exists, 30, f"the prepared metadata of series {uid}")
    return api_token(appliance, "rad.meta", PASSWORD), series


def metadata_url(appliance, study: str, series: str) -> str:
    return f"{appliance.url}{DICOMWEB_ROOT}/studies/{study}/series/{series}/metadata"


def from_orthanc(appliance, study: str, series: str) -> requests.Response:
    """Orthanc's own answer, asked directly with its credentials, for the host the client
    of the gateway uses (its BulkDataURIs are built from the Forwarded header)."""
    host = appliance.url.removeprefix("http://")
    path = f"{DICOMWEB_ROOT}/studies/{study}/series/{series}/metadata"
    headers = {"Authorization": orthanc_auth_header(appliance.settings),
               "Forwarded": f"host={host};proto=http"}  # fmt: skip
    return requests.get(orthanc_url(appliance.settings) + path, headers=headers, timeout=30)


def bulk_uris(element: object) -> list[str]:
    """Every BulkDataURI in DICOM JSON, sequences included."""
    if isinstance(element, list):
        return [uri for item in element for uri in bulk_uris(item)]
    if not isinstance(element, dict):
        return []
    found = [element["BulkDataURI"]] if "BulkDataURI" in element else []
    return found + [uri for value in element.values() for uri in bulk_uris(value)]


def by_sop(metadata: list[dict]) -> dict[str, dict]:
    return {item["00080018"]["Value"][0]: item for item in metadata}


def test_prepared_metadata_equals_orthancs(appliance, stored_series):
    """Field for field, for each kind of series; BulkDataURIs name our routes from the
    root where Orthanc's start with the client's origin."""
    token, series = stored_series
    for study, uid, sops in series:
        ours = requests.get(metadata_url(appliance, study, uid), timeout=30,
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert ours.status_code == 200, ours.text
        assert ours.headers["Content-Encoding"] == "gzip"
        assert ours.headers["Content-Type"] == "application/dicom+json"
        assert "ETag" in ours.headers and "X-Accel-Redirect" not in ours.headers
        theirs = from_orthanc(appliance, study, uid)
        assert theirs.status_code == 200, theirs.text
        theirs_text = theirs.text.replace(f'"{appliance.url}/', '"/')
        assert appliance.url not in theirs_text
        assert by_sop(ours.json()) == by_sop(json.loads(theirs_text))
        assert set(by_sop(ours.json())) == set(sops)
        for uri in bulk_uris(ours.json()):
            assert uri.startswith(f"{DICOMWEB_ROOT}/studies/{study}/series/{uid}/instances/")
    assert bulk_uris(ours.json())  # the last series' has them, in its sequence too


def test_prepared_metadata_revalidates_and_inflates(appliance, stored_series):
    """304 for its ETag; a client that does not take gzip gets the same JSON inflated;
    no token, no metadata."""
    token, [(study, uid, _), *_] = stored_series
    url, auth = metadata_url(appliance, study, uid), {"Authorization": f"Bearer {token}"}
    first = requests.get(url, headers=auth, timeout=30)
    again = requests.get(url, headers={**auth, "If-None-Match": first.headers["ETag"]}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    plain = requests.get(url, headers={**auth, "Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert json.loads(plain.content) == first.json()
    assert requests.get(url, timeout=30).status_code == 401


def test_a_series_without_prepared_metadata_comes_from_orthanc(appliance, stored_series):
    """Series stored before metadata was prepared: Orthanc answers through the gateway,
    the same JSON with BulkDataURIs on the client's origin (not http://"host"/...)."""
    token, [*_, (study, uid, _)] = stored_series
    path = Path(appliance.settings.layout.frames_dir, study, uid)
    prepared = path / series_metadata.FILE_NAME
    kept = path / "kept.json.gz"
    shutil.copyfile(prepared, kept)
    ours = json.loads(gzip.decompress(kept.read_bytes()))
    prepared.unlink()
    try:
        answer = requests.get(metadata_url(appliance, study, uid), timeout=30,
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status_code == 200 and "ETag" not in answer.headers
        uris = bulk_uris(answer.json())
        assert uris and all(uri.startswith(f"{appliance.url}{DICOMWEB_ROOT}/") for uri in uris)
        theirs = json.loads(answer.text.replace(f'"{appliance.url}/', '"/'))
        assert by_sop(theirs) == by_sop(ours)  # the order is not part of the answer
    finally:
        kept.rename(prepared)


def test_frames_metadata_prepares_series_stored_before(appliance, stored_series):
    """`neuronova frames metadata` writes the file of a series that has none (nor parts),
    the same as the worker wrote at ingest."""
    _, [(study, uid, _), *_] = stored_series
    path = Path(appliance.settings.layout.frames_dir, study, uid)
    written = json.loads(gzip.decompress((path / series_metadata.FILE_NAME).read_bytes()))
    shutil.rmtree(path / series_metadata.PARTS)
    (path / series_metadata.FILE_NAME).unlink()
    done = run_cli(appliance, "frames", "metadata")
    assert "prepared now" in done.stdout, done.stderr
    again = json.loads(gzip.decompress((path / series_metadata.FILE_NAME).read_bytes()))
    assert by_sop(again) == by_sop(written)
    twice = run_cli(appliance, "frames", "metadata")  # the shared appliance: others' series too
    assert "already prepared" in twice.stdout, twice.stderr
