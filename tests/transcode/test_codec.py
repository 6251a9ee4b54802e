"""Transcoding to HTJ2K lossless: real pydicom test files in many transfer syntaxes."""

from __future__ import annotations

import copy
import io
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames, parse_basic_offsets
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2KLossless

from appliance.transcode import codec
from appliance.transcode.codec import (
    TranscodeError,
    TranscodeResult,
    dataset_to_bytes,
    transcode_to_htj2k,
)
from tests.support.samples import TEST_FILES, native_dataset, read
from tests.support.tools import require_tool

pytestmark = pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
TRANSCODED = [
    "CT_small.dcm",  # explicit VR little endian, signed 16-bit
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "J2K_pixelrep_mismatch.dcm",  # 13-bit signed J2K stored as unsigned
    "GDCMJ2K_TextGBR.dcm",  # J2K lossless, YBR_RCT
    "image_dfl.dcm",  # deflated explicit VR little endian
    "ExplVR_BigEnd.dcm",  # RGB, big endian
    "SC_rgb_small_odd.dcm",  # 3x3 RGB
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, RGB
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "examples_palette.dcm",
    "examples_overlay.dcm",  # 12 bits stored of 16
    "examples_rgb_color.dcm",
]


def main_header_markers(codestream: bytes) -> dict[int, bytes]:
    """Marker segments of a J2K main header (up to the first SOT), by marker code."""
    assert codestream[:2] == b"\xff\x4f", "no SOC marker"
    markers, pos = {}, 2
    while True:
        marker = int.from_bytes(codestream[pos : pos + 2], "big")
        if marker == 0xFF90:
            return markers
        length = int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        markers[marker] = codestream[pos + 4 : pos + 2 + length]
        pos += 2 + length


def assert_round_trip(source: Dataset, result: TranscodeResult) -> Dataset:
    """The stored file re-reads and decodes (pydicom + OpenJPEG) to the source pixels."""
    assert result.transcoded and result.reason is None
    assert result.transfer_syntax == HTJ2KLossless == result.frame_transfer_syntax
    stored = pydicom.dcmread(io.BytesIO(dataset_to_bytes(result.dataset)))
    assert stored.file_meta.TransferSyntaxUID == HTJ2KLossless
    assert stored.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert stored["PixelData"].VR == "OB"
    assert stored["PixelData"].is_undefined_length
    frames = int(source.get("NumberOfFrames", 1) or 1)
    assert len(result.frames) == frames
    assert len(parse_basic_offsets(stored.PixelData)) == frames
    decoded = stored.pixel_array  # pylibjpeg-openjpeg decodes HTJ2K
    expected = source.pixel_array
    assert decoded.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(decoded, expected)
    if source.SamplesPerPixel == 3:
        assert stored.PhotometricInterpretation == "YBR_RCT"
        assert stored.PlanarConfiguration == 0
    else:
        assert stored.PhotometricInterpretation == source.PhotometricInterpretation
    assert stored.get("LossyImageCompression") == source.get("LossyImageCompression")
    return stored


@pytest.mark.parametrize("name", TRANSCODED)
def test_pydicom_test_files_round_trip_exactly(name: str) -> None:
    source = read(name)
    before = (source.file_meta.TransferSyntaxUID, source.PhotometricInterpretation)
    pixel_data = source.PixelData
    result = transcode_to_htj2k(source)
    assert_round_trip(source, result)
    # the input dataset is left as it was
    assert (source.file_meta.TransferSyntaxUID, source.PhotometricInterpretation) == before
    assert source.PixelData is pixel_data


def test_frames_are_the_encapsulated_codestreams() -> None:
    result = transcode_to_htj2k(read("SC_rgb_rle_2frame.dcm"))
    fragments = list(generate_frames(result.dataset.PixelData, number_of_frames=2))
    assert [f[: len(c)] for f, c in zip(fragments, result.frames, strict=True)] == result.frames
    for codestream in result.frames:
        assert codestream.endswith(b"\xff\xd9")


def test_codestream_is_rpcl_reversible_with_tlm_and_rct_only_for_colour() -> None:
    grey = transcode_to_htj2k(read("CT_small.dcm")).frames[0]
    colour = transcode_to_htj2k(read("SC_rgb_rle.dcm")).frames[0]
    for codestream, mct in ((grey, 0), (colour, 1)):
        markers = main_header_markers(codestream)
        cod = markers[0xFF52]
        assert cod[1] == 2, "progression order is not RPCL"
        assert cod[4] == mct, "multiple component transform"
        assert cod[9] == 1, "not the reversible 5/3 wavelet"
        assert 0xFF55 in markers, "no TLM marker"
        assert codestream.count(b"\xff\x90") > 1, "not one tile-part per resolution"


def test_pixels_are_the_first_frame() -> None:
    source = read("SC_rgb_rle_2frame.dcm")
    result = transcode_to_htj2k(source)
    np.testing.assert_array_equal(result.pixels, source.pixel_array[0])


def phantom_ct(dtype: str, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    hu = np.full(shape, -1000.0)
    hu[(x / 0.8) ** 2 + (y / 0.6) ** 2 < 1] = 40
    hu[((x - 0.3) / 0.2) ** 2 + (y / 0.3) ** 2 < 1] = -850
    hu[(x / 0.1) ** 2 + ((y - 0.4) / 0.1) ** 2 < 1] = 900
    hu += rng.normal(0, 15, shape)
    stored = hu + 1024 if dtype == "uint16" else hu
    return np.clip(np.round(stored), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_synthetic_512_ct_slice(dtype: str) -> None:
    pixels = phantom_ct(dtype)
    ds = native_dataset(pixels, RescaleIntercept=-1024 if dtype == "uint16" else 0, RescaleSlope=1)
    result = transcode_to_htj2k(ds)
    assert_round_trip(ds, result)
    assert imagecodecs.htj2k_decode(result.frames[0]).dtype == pixels.dtype
    assert len(result.frames[0]) < pixels.nbytes / 2


def test_odd_sizes_and_12_bits_stored() -> None:
    pixels = (phantom_ct("uint16", (37, 511)) & 0x0FFF).astype(np.uint16)
    assert_round_trip(
        ds := native_dataset(pixels, BitsStored=12, HighBit=11), transcode_to_htj2k(ds)
    )
    tiny = np.arange(15, dtype=np.uint8).reshape(3, 5)
    assert_round_trip(ds := native_dataset(tiny), transcode_to_htj2k(ds))


def test_high_bits_above_bits_stored_are_not_kept() -> None:
    """pydicom's pixel values (bits above Bits Stored cleared) are what gets encoded."""
    pixels = np.full((8, 8), 0xF123, np.uint16)
    ds = native_dataset(pixels, BitsStored=12, HighBit=11)
    result = transcode_to_htj2k(ds)
    assert (imagecodecs.htj2k_decode(result.frames[0]) == 0x0123).all()


@pytest.fixture(scope="module")
def dcmtk_lossless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CT_small compressed by DCMTK to lossless JPEG (SV1 and predictor 7) and JPEG-LS."""
    dcmcjpeg, dcmcjpls = require_tool("dcmcjpeg", "dcmtk"), require_tool("dcmcjpls", "dcmtk")
    folder = tmp_path_factory.mktemp("dcmtk")
    commands = {
        "jpeg_sv1": [dcmcjpeg, "+e1"],
        "jpeg_p14_sv7": [dcmcjpeg, "+el", "+sv", "7"],
        "jpeg_ls": [dcmcjpls],
    }
    files = {}
    for name, command in commands.items():
        files[name] = folder / f"{name}.dcm"
        subprocess.run([*command, TEST_FILES / "CT_small.dcm", files[name]], check=True)
    return files


@pytest.mark.parametrize("name", ["jpeg_sv1", "jpeg_p14_sv7", "jpeg_ls"])
def test_lossless_jpeg_and_jpeg_ls_from_dcmtk(dcmtk_lossless: dict[str, Path], name: str) -> None:
    source = pydicom.dcmread(dcmtk_lossless[name])
    assert source.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    result = transcode_to_htj2k(source)
    stored = pydicom.dcmread(io.BytesIO(dataset_to_bytes(result.dataset)))
    np.testing.assert_array_equal(stored.pixel_array, read("CT_small.dcm").pixel_array)


def big_endian_copy(ds: Dataset) -> Dataset:
    """``ds`` written as Explicit VR Big Endian (OW values swapped) and read back."""
    be = copy.deepcopy(ds)
    for elem in be:
        if elem.VR == "OW":
            elem.value = np.frombuffer(elem.value, "<u2").astype(">u2").tobytes()
    be.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, be, implicit_vr=False, little_endian=False, force_encoding=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def test_big_endian_ow_lookup_tables_are_written_little_endian() -> None:
    source = read("examples_palette.dcm")
    be = big_endian_copy(source)
    assert be.RedPaletteColorLookupTableData != source.RedPaletteColorLookupTableData
    stored = assert_round_trip(be, transcode_to_htj2k(be))
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        assert stored[keyword].value == source[keyword].value
    assert be.RedPaletteColorLookupTableData != source.RedPaletteColorLookupTableData


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ],
)
def test_lossy_input_is_kept_with_its_frames(name: str, syntax: str) -> None:
    source = read(name)
    result = transcode_to_htj2k(source)
    assert not result.transcoded
    assert result.dataset is source
    assert "lossy" in result.reason
    assert result.transfer_syntax == syntax == result.frame_transfer_syntax
    frames = int(source.get("NumberOfFrames", 1) or 1)
    assert result.frames == list(generate_frames(source.PixelData, number_of_frames=frames))


def test_lossy_multiframe_jpeg_keeps_every_frame() -> None:
    result = transcode_to_htj2k(read("examples_ybr_color.dcm"))
    assert not result.transcoded and len(result.frames) == 30
    assert all(frame.startswith(b"\xff\xd8") for frame in result.frames)


def test_lossy_image_compression_01_is_never_recompressed() -> None:
    source = read("CT_small.dcm")
    source.LossyImageCompression = "01"
    result = transcode_to_htj2k(source)
    assert not result.transcoded and "Lossy Image Compression" in result.reason
    assert result.frames == [source.PixelData]


def test_native_ybr_422_kept_frames_stay_subsampled() -> None:
    source = read("SC_ybr_full_422_uncompressed.dcm")  # Lossy Image Compression 01
    result = transcode_to_htj2k(source)
    assert not result.transcoded
    assert result.frames == [source.PixelData[: source.Rows * source.Columns * 2]]


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_objects_without_pixel_data_are_kept(name: str) -> None:
    result = transcode_to_htj2k(read(name))
    assert (result.transcoded, result.reason, result.frames) == (False, "no pixel data", [])
    assert result.frame_transfer_syntax == ExplicitVRLittleEndian


def test_one_bit_is_kept_with_packed_little_endian_frames() -> None:
    little, big = read("liver_1frame.dcm"), read("liver_expb_1frame.dcm")
    results = [transcode_to_htj2k(ds) for ds in (little, big)]
    for result in results:
        assert not result.transcoded and result.reason.startswith("Bits Allocated 1")
        assert result.frame_transfer_syntax == ExplicitVRLittleEndian
    packed = np.packbits(little.pixel_array.ravel(), bitorder="little").tobytes()
    assert results[0].frames == results[1].frames == [packed]


def test_32_bit_multiframe_is_kept_and_big_endian_frames_are_swapped() -> None:
    little, big = read("rtdose.dcm"), read("rtdose_expb.dcm")
    results = [transcode_to_htj2k(ds) for ds in (little, big)]
    assert all(not r.transcoded and "Bits Allocated 32" in r.reason for r in results)
    assert len(results[0].frames) == 15
    assert results[0].frames == results[1].frames
    assert b"".join(results[0].frames) == little.PixelData


def test_float_pixel_data_is_kept() -> None:
    ds = native_dataset(np.zeros((4, 4), np.uint16))
    del ds.PixelData, ds.PixelRepresentation
    ds.BitsAllocated = 32
    values = np.linspace(-1, 1, 16, dtype="<f4")
    ds.FloatPixelData = values.tobytes()
    result = transcode_to_htj2k(ds)
    assert (result.transcoded, result.reason) == (False, "float pixel data")
    assert result.frames == [values.tobytes()]


def test_htj2k_lossless_input_is_kept_but_verified() -> None:
    first = transcode_to_htj2k(read("SC_rgb_rle_2frame.dcm"))
    received = pydicom.dcmread(io.BytesIO(dataset_to_bytes(first.dataset)))
    result = transcode_to_htj2k(received)
    assert (result.transcoded, result.reason) == (False, "already HTJ2K lossless")
    assert result.dataset is received
    assert [f[: len(c)] for f, c in zip(result.frames, first.frames, strict=True)] == first.frames
    np.testing.assert_array_equal(result.pixels, first.pixels)


def test_damaged_htj2k_input_raises_naming_the_instance() -> None:
    ds = native_dataset(np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    with pytest.raises(TranscodeError, match=ds.SOPInstanceUID):
        transcode_to_htj2k(ds)


def test_truncated_pixel_data_raises_naming_the_instance() -> None:
    ds = read("MR_truncated.dcm")
    with pytest.raises(TranscodeError, match=f"{ds.SOPInstanceUID}: cannot decode"):
        transcode_to_htj2k(ds)


def test_missing_transfer_syntax_raises() -> None:
    ds = native_dataset(np.zeros((8, 8), np.uint8))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(TranscodeError, match="Transfer Syntax UID"):
        transcode_to_htj2k(ds)


def test_verification_mismatch_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that returns other pixels (a fault that cannot be produced for real)."""
    real_decode = imagecodecs.htj2k_decode

    def corrupting_decode(data: bytes, **kwargs: object) -> np.ndarray:
        decoded = real_decode(data, **kwargs)
        decoded.flat[0] ^= 1
        return decoded

    monkeypatch.setattr(codec.imagecodecs, "htj2k_decode", corrupting_decode)
    ds = read("CT_small.dcm")
    with pytest.raises(TranscodeError, match=f"{ds.SOPInstanceUID}: frame 1: .*not exact"):
        transcode_to_htj2k(ds)


def test_part10_bytes_have_preamble_and_prefix() -> None:
    data = dataset_to_bytes(transcode_to_htj2k(read("MR_small.dcm")).dataset)
    assert data[:128] == bytes(128) and data[128:132] == b"DICM"


def test_extended_offset_table_when_offsets_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 4 GB the Basic Offset Table cannot hold the offsets (limit lowered here)."""
    monkeypatch.setattr(codec, "_MAX_BOT_OFFSET", 100)
    source = read("SC_rgb_rle_2frame.dcm")
    stored = pydicom.dcmread(io.BytesIO(dataset_to_bytes(transcode_to_htj2k(source).dataset)))
    assert parse_basic_offsets(stored.PixelData) == []
    assert len(stored.ExtendedOffsetTable) == len(stored.ExtendedOffsetTableLengths) == 16
    np.testing.assert_array_equal(stored.pixel_array, source.pixel_array)
