"""The receiver's Part 10 header and header parsing match what pydicom and pynetdicom make."""

from __future__ import annotations

import io
import zlib

import pydicom
import pytest
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from samples import TEST_FILES

from appliance.journal import HEADER_KEYWORDS, describe
from appliance.part10 import PREFIX, file_header, read_header

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.840.113619.2.55.3.604688119.969.1268071029.3"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.201"])
def test_file_header_is_what_pynetdicom_encodes(sop: str, syntax: str) -> None:
    meta = create_file_meta(sop_class_uid=CT_IMAGE, sop_instance_uid=sop, transfer_syntax=syntax)
    assert file_header(CT_IMAGE, sop, syntax) == PREFIX + encode_file_meta(meta)


def test_a_file_with_that_header_reads_back() -> None:
    source = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    data = file_header(CT_IMAGE, source.SOPInstanceUID, "1.2.840.10008.1.2.1") + _encode(
        source, implicit=False, little=True
    )
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert back.PixelData == source.PixelData


def test_a_non_ascii_uid_is_refused() -> None:
    with pytest.raises(ValueError):
        file_header(CT_IMAGE, "1.2.é", "1.2.840.10008.1.2")


@pytest.mark.parametrize(
    ("syntax", "implicit", "little"),
    [
        ("1.2.840.10008.1.2", True, True),
        ("1.2.840.10008.1.2.1", False, True),
        ("1.2.840.10008.1.2.2", False, False),
        ("1.2.840.10008.1.2.1.99", False, True),
    ],
)
def test_read_header_gives_the_journal_the_same_values(syntax, implicit, little) -> None:
    source = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    source.PatientName = "Müller^Jörg"
    source.SpecificCharacterSet = "ISO_IR 100"
    stream = _encode(source, implicit, little)
    if syntax.endswith(".99"):
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        stream = packer.compress(stream) + packer.flush()
    header = read_header(stream, syntax, HEADER_KEYWORDS)
    assert "PixelData" not in header
    assert header.file_meta.TransferSyntaxUID == syntax
    assert str(header.PatientName) == "Müller^Jörg"
    for keyword in HEADER_KEYWORDS:
        assert header.get(keyword) == source.get(keyword), keyword
    source.file_meta.TransferSyntaxUID = syntax
    assert describe(header) == describe(source)


def test_a_deflated_stream_that_does_not_inflate_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="does not inflate"):
        read_header(b"not deflate data", "1.2.840.10008.1.2.1.99", HEADER_KEYWORDS)


def _encode(ds: pydicom.Dataset, implicit: bool, little: bool) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()
