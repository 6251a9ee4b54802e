"""The receiver acknowledges only what it can keep: whole objects, of bounded size (also
inflated), that do not replace another source's instance or change a study's patient;
the health AE title may only C-ECHO; allow-list changes apply at once; slow callers are
cut off. dcmtk's storescu/echoscu and pynetdicom are the modalities, against the real
appliance.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, RTPlanStorage, Verification

from appliance.db import open_database
from appliance.ingest.modalities import add_modality, remove_modality
from appliance.ingest.requestor import HEALTH_AE_TITLE
from appliance.security import audit
from tests.support.running import (
    Appliance,
    journal_states,
    run_cli,
    running_appliance,
    storescu,
    wait_stored,
)
from tests.support.samples import TEST_FILES, renamed_copy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
NOT_AUTHORISED = 0x0124


@pytest.fixture(scope="module")
def receiver(tmp_path_factory) -> Iterator[Appliance]:
    """An appliance of this module's own: its tests change the allow-list."""
    with running_appliance(tmp_path_factory.mktemp("receiver")) as running:
        yield running


@pytest.fixture
def raw_sending() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes as they are (not re-encoded by pydicom)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = False


def send_raw(appliance: Appliance, path: Path, sop_class: str, syntax: str, aet: str = "RAW"):
    """C-STORE a Part 10 file's data set as it is; returns the response status Dataset."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", appliance.settings.dicom.port, ae_title="NEURONOVA")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def database(appliance: Appliance):
    return open_database(appliance.settings.layout.database_file)


def receiver_log(appliance: Appliance) -> str:
    return (appliance.settings.home / "logs" / "receiver.log").read_text()


def spool_files(appliance: Appliance) -> list[Path]:
    spool = appliance.settings.layout.spool_dir
    return [*spool.glob("*.dcm"), *(spool / "incoming").iterdir()]


# ----------------------------------------------------------------- whole objects only


def test_a_truncated_object_is_refused_with_the_reason(receiver, raw_sending, tmp_path):
    """rtplan_truncated.dcm used to get Success, then Orthanc refused it (HTTP 400)."""
    path = TEST_FILES / "rtplan_truncated.dcm"
    status = send_raw(receiver, path, RTPlanStorage, "1.2.840.10008.1.2")
    assert status.Status == 0xC000
    assert status.ErrorComment == "Cannot understand: data set truncated inside element (300A,00B0)"
    sop = pydicom.dcmread(path).SOPInstanceUID
    assert journal_states(receiver, [sop]) == {}
    assert not spool_files(receiver)


def test_a_re_encoded_object_truncated_inside_an_item_is_refused(receiver, tmp_path):
    """pynetdicom sends the plan pydicom reads from rtplan_truncated.dcm: its Beam
    Sequence's length fits, its item's does not. It got Success (DCMTK and Orthanc refuse
    it); now 0xC000 with the reason, nothing journaled or spooled, and the next object of
    the same association is stored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = pydicom.dcmread(TEST_FILES / "rtplan_truncated.dcm")
    plan.SOPInstanceUID = generate_uid()
    good = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    ae = AE(ae_title="REENCODE")
    ae.add_requested_context(RTPlanStorage, "1.2.840.10008.1.2")
    ae.add_requested_context(CTImageStorage, str(good.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", receiver.settings.dicom.port, ae_title="NEURONOVA")
    assert assoc.is_established
    try:
        refused, stored = assoc.send_c_store(plan), assoc.send_c_store(good)
    finally:
        assoc.release()
    assert refused.Status == 0xC000
    assert refused.ErrorComment == "Cannot understand: an item overruns (300A,00B0) by 265 bytes"
    assert stored.Status == 0x0000
    wait_stored(receiver, [good.SOPInstanceUID])
    assert journal_states(receiver, [plan.SOPInstanceUID]) == {}
    assert not spool_files(receiver)
    assert "an item overruns (300A,00B0) by 265 bytes" in receiver_log(receiver)


def deflate_bomb(path: Path, inflated: int) -> Path:
    """A Deflated CT whose pixel data is ``inflated`` bytes of zeros (about 1000:1)."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    ds.SOPInstanceUID = generate_uid()
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    packer = zlib.compressobj(9, wbits=-zlib.MAX_WBITS)
    pixels = b"\xe0\x7f\x10\x00OW\x00\x00" + inflated.to_bytes(4, "little")
    body = packer.compress(buffer.getvalue() + pixels)
    zeros = bytes(16 * 1024**2)
    body += b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros)))
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with open(path, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(out, meta)
        out.write(body + packer.flush())
    return path


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_a_deflate_bomb_is_refused_without_filling_memory(receiver, raw_sending, tmp_path):
    """1 GB of zeros in a 1 MB stream: the receiver's peak RSS went from 101 MB to 2154 MB
    and the bomb got Success; now it stops past [dicom] max_inflated_mb (256)."""
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 1024**3)
    assert bomb.stat().st_size < 2 * 1024**2
    pid = receiver.child_pid("receiver")
    status = send_raw(receiver, bomb, CTImageStorage, DeflatedExplicitVRLittleEndian)
    assert status.Status == 0xC000
    assert status.ErrorComment == "Cannot understand: the deflated data set inflates beyond 256 MB"
    assert peak_rss_mb(pid) < 400
    assert not spool_files(receiver)


def test_an_object_over_the_size_limit_aborts_the_association(appliance_factory, tmp_path):
    """With [dicom] max_object_mb = 1, a 2 MB object never reaches the disk whole."""
    small = appliance_factory({"dicom.max_object_mb": 1}).start()
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 1024, 1024
    ds.PixelData = bytes(2 * 1024**2)
    ds.save_as(big)
    sent = storescu(small, [big], "STORESCU", "-v")
    assert sent.returncode != 0
    # storescu hears the receiver's A-ABORT, or, still writing the object when the receiver
    # drops the connection after it, a broken pipe: the log line below says which side cut.
    cut = ("Association Aborted", "Peer aborted", "Broken pipe")
    assert any(word in sent.stderr for word in cut), sent.stderr
    wait_for(lambda: "an object exceeds 1 MB" in receiver_log(small), 5, "the abort logged")
    partial = spool_files(small)
    assert len(partial) == 1 and partial[0].stat().st_size <= 1024**2 + 256 * 1024
    past = time.time() - 61  # no association writes to it any more: the next one removes it
    os.utime(partial[0], (past, past))
    fits = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "fits.dcm")
    assert storescu(small, [tmp_path / "fits.dcm"]).returncode == 0
    wait_stored(small, [fits.SOPInstanceUID])
    assert not spool_files(small)


# ----------------------------------------------------------------- overwrite policy


def sent_status(result: subprocess.CompletedProcess) -> list[str]:
    """The status code of each C-STORE response storescu -d logged."""
    return re.findall(r"DIMSE Status\s+: (0x[0-9A-F]{4})", result.stderr)


def error_comments(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"LO \[([^\]]*)\]\s+#\s*\d+, 1 ErrorComment", result.stderr)


def test_only_the_first_source_may_replace_an_instance(receiver, tmp_path):
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    assert sent_status(storescu(receiver, [tmp_path / "ct.dcm"], "CT_A", "-d")) == ["0x0000"]
    wait_stored(receiver, [ds.SOPInstanceUID])
    other = storescu(receiver, [tmp_path / "ct.dcm"], "CT_B", "-d")
    assert sent_status(other) == ["0x0124"]
    assert error_comments(other) == ["Refused: the instance is archived from another source"]
    again = storescu(receiver, [tmp_path / "ct.dcm"], "CT_A", "-d")
    assert sent_status(again) == ["0x0000"]
    held = run_cli(receiver, "held", "list")
    assert f"dicom:CT_B  SOP {ds.SOPInstanceUID}" in held.stdout
    assert "is archived from dicom:CT_A; overwrite policy same-source" in held.stdout
    db = database(receiver)
    rows = audit.recent(db, event=audit.OBJECT_HELD)
    db.close()
    assert rows[0]["username"] == "dicom:CT_B" and rows[0]["study_uid"] == ds.StudyInstanceUID


def test_a_patient_change_is_held_until_an_admin_accepts_it(receiver, tmp_path):
    first = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "first.dcm")
    assert storescu(receiver, [tmp_path / "first.dcm"], "CT_A").returncode == 0
    wait_stored(receiver, [first.SOPInstanceUID])
    first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    first.PatientID, first.PatientName = "OTHER-42", "Other^Person"
    first.save_as(tmp_path / "second.dcm")
    sent = storescu(receiver, [tmp_path / "second.dcm"], "CT_A", "-d")
    assert sent_status(sent) == ["0x0124"]
    assert error_comments(sent) == ["Refused: patient differs from the archived study's"]
    assert journal_states(receiver, [first.SOPInstanceUID]) == {}
    db = database(receiver)
    held = db.execute("SELECT id, reason FROM held WHERE sop_uid = ?",
                      [first.SOPInstanceUID]).fetchone()  # fmt: skip
    assert "this object names ID 'OTHER-42', name 'Other^Person'" in held[1]
    accepted = run_cli(receiver, "held", "accept", str(held[0]))
    assert accepted.returncode == 0, accepted.stderr
    assert f"Accepted held object {held[0]}" in accepted.stdout
    wait_stored(receiver, [first.SOPInstanceUID])
    study = db["studies"].get(first.StudyInstanceUID)
    assert (study["patient_id"], study["patient_name"]) == ("OTHER-42", "Other^Person")
    assert not db.execute("SELECT 1 FROM held WHERE id = ?", [held[0]]).fetchone()
    db.close()
    again = run_cli(receiver, "held", "accept", str(held[0]))
    assert again.returncode == 1
    assert f"Error: no held object {held[0]} (see `neuronova held list`)" in again.stderr


def test_a_discarded_held_object_leaves_the_archive_as_it_was(receiver, tmp_path):
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    assert storescu(receiver, [tmp_path / "ct.dcm"], "CT_A").returncode == 0
    wait_stored(receiver, [ds.SOPInstanceUID])
    assert sent_status(storescu(receiver, [tmp_path / "ct.dcm"], "CT_C", "-d")) == ["0x0124"]
    db = database(receiver)
    held_id, name = db.execute("SELECT id, spool_path FROM held WHERE source = 'dicom:CT_C'"
                               ).fetchone()  # fmt: skip
    db.close()
    path = receiver.settings.layout.spool_file(name)
    assert path.exists()
    discarded = run_cli(receiver, "held", "discard", str(held_id))
    assert discarded.returncode == 0, discarded.stderr
    assert not path.exists()
    assert journal_states(receiver, [ds.SOPInstanceUID]) == {ds.SOPInstanceUID: "stored"}


# ------------------------------------------------------------ who may do what, and when


def test_the_health_ae_title_may_only_echo(receiver, tmp_path):
    ds = renamed_copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    db = database(receiver)
    add_modality(db, "CT_ROOM_1", "127.0.0.1")
    try:
        port = str(receiver.settings.dicom.port)
        echo = subprocess.run(["echoscu", "-aet", HEALTH_AE_TITLE, "-aec", "NEURONOVA",
                               "127.0.0.1", port], capture_output=True, text=True)  # fmt: skip
        assert echo.returncode == 0, echo.stderr
        sent = storescu(receiver, [tmp_path / "ct.dcm"], HEALTH_AE_TITLE, "-d")
        assert sent_status(sent) == ["0x0124"]
        assert error_comments(sent) == [f"Refused: {HEALTH_AE_TITLE} may only C-ECHO"]
        assert journal_states(receiver, [ds.SOPInstanceUID]) == {}
    finally:
        remove_modality(db, "CT_ROOM_1")
        db.close()


def echo_as(appliance: Appliance, aet: str) -> bool:
    result = subprocess.run(
        ["echoscu", "-aet", aet, "-aec", "NEURONOVA", "127.0.0.1",
         str(appliance.settings.dicom.port)],
        capture_output=True, text=True,
    )  # fmt: skip
    return result.returncode == 0


def test_allow_list_changes_apply_to_the_next_association(receiver):
    """It used to take up to 2 s (a cache), so a caller just removed could still send."""
    assert echo_as(receiver, "STRANGER")  # warm: the list is empty, anyone may call
    db = database(receiver)
    add_modality(db, "CT_ROOM_1")
    try:
        assert not echo_as(receiver, "STRANGER")
        assert echo_as(receiver, "CT_ROOM_1")
    finally:
        remove_modality(db, "CT_ROOM_1")
        db.close()
    assert echo_as(receiver, "STRANGER")


def test_a_silent_connection_is_closed_after_the_artim_timeout(receiver):
    """A caller that connects and sends nothing held its slot 30 s; now 10 s."""
    with socket.create_connection(("127.0.0.1", receiver.settings.dicom.port)) as sock:
        sock.settimeout(60)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 9 < time.monotonic() - started < 25  # 10 s; it was 30 s before


def test_one_address_cannot_take_every_association_slot(receiver):
    ae = AE(ae_title="GREEDY")
    ae.add_requested_context(Verification)
    port = receiver.settings.dicom.port
    held = []
    try:
        for _ in range(32):
            held.append(ae.associate("127.0.0.1", port, ae_title="NEURONOVA"))
        refused = [(n, a.is_rejected, a.is_aborted)
                   for n, a in enumerate(held) if not a.is_established]  # fmt: skip
        assert not refused, f"(number, rejected, aborted): {refused}\n{receiver_log(receiver)}"
        extra = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
        assert extra.is_rejected
        # The refusal reaches the wire before its log line reaches the file: wait for it.
        reason = "more than 32 associations from 127.0.0.1 at once"
        wait_for(lambda: reason in receiver_log(receiver), 10, "the refusal in the log")
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: echo_as(receiver, "GREEDY"), 10, "a slot once the others are released")
