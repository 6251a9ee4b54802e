"""The receiver's check that a data set is whole, and the header it reads for the journal,
match what pydicom reads; truncated, malformed and over-inflating data sets are refused."""

from __future__ import annotations

import io
import itertools
import re
import struct
import time
import timeit
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import encode

from appliance.ingest.header import HEADER_KEYWORDS, describe
from appliance.ingest.part10 import scan, scan_file
from bench.mutations import split_part10
from tests.support.samples import TEST_FILES

LIMIT = 64 * 1024**2
DEFLATED = "1.2.840.10008.1.2.1.99"


def _scan(stream: bytes, syntax: str, limit: int = LIMIT) -> pydicom.Dataset:
    return scan(io.BytesIO(stream), len(stream), syntax, HEADER_KEYWORDS, limit)


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("syntax", "implicit", "little"),
    [
        ("1.2.840.10008.1.2", True, True),
        ("1.2.840.10008.1.2.1", False, True),
        ("1.2.840.10008.1.2.2", False, False),
        (DEFLATED, False, True),
    ],
)
def test_scan_gives_the_journal_the_same_values(syntax, implicit, little) -> None:
    source = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    source.PatientName = "Müller^Jörg"
    source.SpecificCharacterSet = "ISO_IR 100"
    stream = _encode(source, implicit, little)
    header = _scan(_deflate(stream) if syntax == DEFLATED else stream, syntax)
    assert "PixelData" not in header
    assert header.file_meta.TransferSyntaxUID == syntax
    assert str(header.PatientName) == "Müller^Jörg"
    for keyword in HEADER_KEYWORDS:
        assert header.get(keyword) == source.get(keyword), keyword
    source.file_meta.TransferSyntaxUID = syntax
    assert describe(header) == describe(source)


def _part10_samples() -> list[tuple[Path, str]]:
    """pydicom's Part 10 files with a meta group length (the receiver's pynetdicom files
    always have one), except the deliberately broken ones, with their transfer syntax."""
    broken = {"MR_truncated.dcm", "rtplan_truncated.dcm", "SC_rgb_jpeg.dcm"}
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        head = path.read_bytes()[:136]
        if path.name not in broken and head[128:136] == b"DICM\x02\x00\x00\x00":
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            if "TransferSyntaxUID" in meta:
                found.append((path, str(meta.TransferSyntaxUID)))
    return found


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("path", "syntax"), _part10_samples(), ids=str)
def test_every_whole_sample_file_scans_to_its_end(path: Path, syntax: str) -> None:
    """Sequences, encapsulated pixel data, big endian, deflated: all of pydicom's files."""
    header = scan_file(path, syntax, HEADER_KEYWORDS, LIMIT)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.get("SOPInstanceUID") == ds.get("SOPInstanceUID")


@pytest.mark.parametrize(
    ("name", "element"),
    [("rtplan_truncated.dcm", "(300A,00B0)"), ("MR_truncated.dcm", "(7FE0,0010)")],
)
def test_a_truncated_file_is_refused_naming_the_element(name: str, element: str) -> None:
    syntax = str(pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID)
    with pytest.raises(ValueError, match=re.escape(f"data set truncated inside element {element}")):
        scan_file(TEST_FILES / name, syntax, HEADER_KEYWORDS, LIMIT)


def test_every_cut_inside_an_element_is_refused() -> None:
    """Cut anywhere but between two top-level elements (a cut there leaves a whole, shorter
    data set), including inside the plan's nested sequences: always refused."""
    plan = pydicom.dcmread(TEST_FILES / "rtplan.dcm")
    stream = _encode(plan, implicit=True, little=True)
    sizes = [len(_encode(pydicom.Dataset({e.tag: e}), True, True)) for e in plan]
    boundaries = set(itertools.accumulate(sizes))
    assert max(boundaries) == len(stream)
    for cut in sorted(set(range(1, len(stream))) - boundaries):
        with pytest.raises(ValueError, match="truncated"):
            _scan(stream[:cut], "1.2.840.10008.1.2")


def test_a_data_set_not_in_its_transfer_syntax_is_refused() -> None:
    stream = _encode(pydicom.dcmread(TEST_FILES / "CT_small.dcm"), implicit=True, little=True)
    with pytest.raises(ValueError, match="not in Explicit VR"):
        _scan(stream, "1.2.840.10008.1.2.1")


def test_a_deflated_stream_that_does_not_inflate_is_refused() -> None:
    with pytest.raises(ValueError, match="does not inflate"):
        _scan(b"not deflate data", DEFLATED)


def test_a_deflate_bomb_is_refused_once_past_the_limit() -> None:
    """100 MB of zeros in a 100 KB stream: refused after inflating just past 1 MB."""
    ct = _encode(pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True),
                 implicit=False, little=True)  # fmt: skip
    pixels = b"\xe0\x7f\x10\x00OW\x00\x00" + (100 * 1024**2).to_bytes(4, "little")
    packer = zlib.compressobj(9, wbits=-zlib.MAX_WBITS)
    bomb = packer.compress(ct + pixels)
    zeros = bytes(1024**2)
    bomb += b"".join(packer.compress(zeros) for _ in range(100)) + packer.flush()
    assert len(bomb) < 200 * 1024
    with pytest.raises(ValueError, match="inflates beyond 1 MB"):
        _scan(bomb, DEFLATED, limit=1024**2)
    assert _scan(bomb, DEFLATED, limit=128 * 1024**2).SOPInstanceUID  # within a larger limit


def _encode(ds: pydicom.Dataset, implicit: bool, little: bool) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_a_header_element_declaring_a_huge_value_is_refused_unread() -> None:
    """Implicit VR: a Study Description (0008,1030) declaring 2 GB is refused before any of
    it is read into memory (the stream holds only the 8-byte element header)."""
    stream = b"\x08\x00\x30\x10" + (2 * 1024**3).to_bytes(4, "little")
    with pytest.raises(ValueError, match=r"\(0008,1030\) declares 2147483648 bytes"):
        _scan(stream, "1.2.840.10008.1.2", limit=4 * 1024**3)


def test_a_header_element_with_an_unknown_vr_is_refused() -> None:
    """(0008,0060) Modality sent as 'CW' got 0x0110 "Processing failure: NotImplementedError"
    (the fuzz run): the receiver's reason is now the element and its VR."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    stream = _encode(ds, implicit=False, little=True)
    at = stream.index(b"\x08\x00\x60\x00CS")
    stream = stream[: at + 4] + b"CW" + stream[at + 6 :]
    with pytest.raises(ValueError, match=r"\(0008,0060\) has an unknown VR 'CW'"):
        _scan(stream, "1.2.840.10008.1.2.1")


# ------------------------------------------------ nested lengths, as DCMTK reads them

IMPLICIT = "1.2.840.10008.1.2"
BEAMS, MANUFACTURER, DESCRIPTION = 0x300A00B0, 0x00080070, 0x00081030


def _element(tag: int, value: bytes, length: int | None = None) -> bytes:
    """An Implicit VR Little Endian element (or item, or delimiter) with ``length``
    declared (its real length by default)."""
    declared = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, declared) + value


def _item(content: bytes, length: int | None = None) -> bytes:
    return _element(0xFFFEE000, content, length)


def _then_more(stream: bytes) -> bytes:
    """``stream`` followed by a top-level element: whatever overruns inside the stream
    still lies inside the data set, so only the nested lengths can tell."""
    return stream + _element(DESCRIPTION, b"Whole plan")


def _ends(data: bytes, length: int | None = None) -> bytes:
    return _element(BEAMS, data, length)


NAME = _element(MANUFACTURER, b"Linac co. " * 2)  # 28 bytes
SEQUENCE_END = _element(0xFFFEE0DD, b"")
NESTED_REFUSALS = [
    ("an element longer than its item", _ends(_item(NAME, 10)),
     "(0008,0070) overruns its item by 18 bytes"),
    ("an item longer than its sequence", _ends(_item(NAME), 20),
     "an item overruns (300A,00B0) by 16 bytes"),
    ("an item delimiter past the end of its sequence",
     _ends(_item(NAME, 0xFFFFFFFF) + _element(0xFFFEE00D, b""), 36),
     "(FFFE,E00D) overruns (300A,00B0) by 8 bytes"),
    ("fragments past the end of their item",
     _ends(_item(_element(0x7FE00010, b"", 0xFFFFFFFF) + _item(b"\0" * 8) + SEQUENCE_END, 24)),
     "(7FE0,0010) overruns its item by 8 bytes"),
    ("a private sequence (known to DCMTK) with an element longer than its item",
     _element(0x00090010, b"CARDIO-D.R. 1.0 ") + _element(0x00091040, _item(NAME, 10)),
     "(0008,0070) overruns its item by 18 bytes"),
    ("a sequence delimiter in a defined-length sequence",
     _ends(_item(NAME) + SEQUENCE_END),
     "expected an item in (300A,00B0), found (FFFE,E0DD)"),
    ("an item delimiter in a defined-length item",
     _ends(_item(NAME + _element(0xFFFEE00D, b""))),
     "unexpected delimiter (FFFE,E00D) in the data set"),
    ("an undefined-length element that is no sequence",
     _element(MANUFACTURER, b"", 0xFFFFFFFF) + SEQUENCE_END,
     "(0008,0070) has an undefined length and is no sequence"),
    ("a pixel data fragment of undefined length",
     _element(0x7FE00010, b"", 0xFFFFFFFF) + _item(b"", 0xFFFFFFFF),
     "a fragment of (7FE0,0010) has an undefined length"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "reason"), [r[1:] for r in NESTED_REFUSALS], ids=[r[0] for r in NESTED_REFUSALS]
)
def test_nested_lengths_are_checked_as_dcmtk_checks_them(stream: bytes, reason: str) -> None:
    """Each of these got Success before: a defined-length sequence or item was skipped
    whole, so what lay inside it was never read (DCMTK refuses every one)."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        _scan(_then_more(stream), IMPLICIT)


def test_a_whole_defined_length_sequence_is_accepted() -> None:
    stream = _then_more(_ends(_item(NAME) + _item(b"") + _item(NAME)))
    assert _scan(stream, IMPLICIT).StudyDescription == "Whole plan"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("how", ["pydicom dcmwrite", "pynetdicom encode"])
def test_the_truncated_plan_re_encoded_is_refused(how: str) -> None:
    """pydicom reads rtplan_truncated.dcm (its Beam Sequence cut short) and writes back
    what it read: the sequence's length now fits the file, its item's (968) does not.
    The receiver acknowledged that; DCMTK refuses it, and now the receiver too."""
    plan = pydicom.dcmread(TEST_FILES / "rtplan_truncated.dcm")
    if how == "pydicom dcmwrite":
        written = io.BytesIO()
        pydicom.dcmwrite(written, plan)
        body = split_part10(written.getvalue())[1]
    else:
        body = encode(plan, True, True)
    with pytest.raises(ValueError, match=re.escape("an item overruns (300A,00B0) by 265 bytes")):
        _scan(body, IMPLICIT)


# ---------------------------------------------------------------- linear time


def _nested(depth: int) -> bytes:
    """An item nested ``depth`` deep in defined-length sequences and items."""
    stream = NAME
    for _ in range(depth):
        stream = _ends(_item(stream))
    return stream


def _repeated(block: bytes, size: int) -> bytes:
    return block * (size // len(block))


ADVERSARIAL_STREAMS = {
    "items nested 32 deep, defined lengths": lambda n: _repeated(_nested(32), n),
    "tiny elements, deflated": lambda n: _repeated(b"\x08\x00\x70\x00LO\x00\x00", n),
    "tiny items in one sequence": lambda n: _ends(_repeated(_item(b""), n)),
}


@pytest.mark.parametrize("make", ADVERSARIAL_STREAMS.values(), ids=ADVERSARIAL_STREAMS.keys())
def test_the_check_runs_in_linear_time(make) -> None:
    """Eight times the bytes cost about eight times the time (a quadratic walk: 64)."""
    deflated = make is ADVERSARIAL_STREAMS["tiny elements, deflated"]

    def stream(size: int) -> bytes:
        return _deflate(make(size)) if deflated else make(size)

    syntax = DEFLATED if deflated else IMPLICIT
    streams = stream(128 * 1024), stream(1024**2)
    # CPU time (a busy machine preempts a long run more often than a short one), the best
    # of 5 taken in turns.
    timers = [timeit.Timer(lambda s=s: _scan(s, syntax), timer=time.process_time) for s in streams]
    runs = [[timer.timeit(number=1) for timer in timers] for _ in range(5)]
    small, large = (min(times) for times in zip(*runs, strict=True))
    assert large < 16 * small, f"{small * 1000:.1f} ms, then {large * 1000:.1f} ms"
    assert large < 2.0
