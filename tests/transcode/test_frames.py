"""Frame, rendered and thumbnail files that nginx serves for DICOMweb requests."""

from __future__ import annotations

import copy
import email
import email.policy
import io
import logging
import os
import stat
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from appliance.store.frame_files import BOUNDARY, instance_dir
from appliance.transcode import frames as frame_writer
from appliance.transcode.codec import TranscodeResult, dataset_to_bytes, transcode_to_htj2k
from appliance.transcode.frames import render, thumbnail, write_instance_files
from tests.support.samples import native_dataset, read

CONTENT_TYPE = f'multipart/related; type="application/octet-stream"; boundary={BOUNDARY}'


def ct_slice() -> Dataset:
    """512x512 signed CT: air -1000, soft tissue 40, bone 700 HU, window 40/400."""
    hu = np.full((512, 512), -1000, np.int16)
    hu[100:400, 100:400] = 40
    hu[200:260, 200:260] = 700
    hu += np.random.default_rng(3).integers(-5, 6, hu.shape, dtype=np.int16)
    stored = (hu + 1024).astype(np.int16)
    return native_dataset(
        stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400
    )


def write(root: Path, result: TranscodeResult, pixels: bool = True) -> Path:
    return write_instance_files(
        root,
        result.dataset,
        result.frames,
        result.transfer_syntax,
        result.pixels if pixels else None,
    )


def parse_frame_file(path: Path) -> tuple[str, bytes]:
    """(Content-Type of the single part, its bytes), checked with the email parser too."""
    body = path.read_bytes()
    message = email.message_from_bytes(
        f"Content-Type: {CONTENT_TYPE}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert len(parts) == 1
    assert parts[0].get_content_type() == "application/octet-stream"
    head, sep, rest = body.partition(b"\r\n\r\n")
    assert sep and head.startswith(f"--{BOUNDARY}\r\nContent-Type: ".encode())
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    assert rest.endswith(tail)
    assert parts[0].get_payload(decode=True) == rest[: -len(tail)]
    return head.split(b"Content-Type: ", 1)[1].decode(), rest[: -len(tail)]


def jpeg(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    return imagecodecs.jpeg8_decode(data)


def test_frame_file_is_a_multipart_body_holding_the_codestream(tmp_path: Path) -> None:
    ds = ct_slice()
    result = transcode_to_htj2k(ds)
    directory = write(tmp_path, result)
    assert directory == tmp_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / ds.SOPInstanceUID
    path = instance_dir(tmp_path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path = path / "frames" / "1"
    content_type, data = parse_frame_file(path)
    # an RPCL codestream with TLM and 5 levels: served as HTJ2K with RPCL Options
    assert content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.202"
    assert data == result.frames[0]
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(data), result.pixels)
    assert not (path.parent / "2").exists()
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask


def test_rendered_and_thumbnail_use_the_window(tmp_path: Path) -> None:
    directory = write(tmp_path, transcode_to_htj2k(ct_slice()))
    rendered = jpeg(directory / "rendered.jpg")
    assert rendered.shape == (512, 512)
    assert rendered[20:80, 20:80].mean() < 3  # air, below the window
    assert abs(float(rendered[120:180, 120:180].mean()) - 128) < 6  # 40 HU, window centre
    assert rendered[210:250, 210:250].mean() > 252  # bone, above the window
    small = jpeg(directory / "thumbnail.jpg")
    assert small.shape == (128, 128)
    assert abs(float(small[30:45, 30:45].mean()) - 128) < 6


def test_without_pixels_the_htj2k_dataset_is_decoded_to_the_same_images(tmp_path: Path) -> None:
    result = transcode_to_htj2k(ct_slice())
    given = write(tmp_path / "given", result)
    stored = pydicom.dcmread(io.BytesIO(dataset_to_bytes(result.dataset)))
    decoded = write_instance_files(
        tmp_path / "decoded", stored, result.frames, "1.2.840.10008.1.2.4.201"
    )
    for name in ("rendered.jpg", "thumbnail.jpg"):
        assert (given / name).read_bytes() == (decoded / name).read_bytes()


def test_monochrome1_is_inverted_and_no_window_uses_min_max() -> None:
    ds = ct_slice()
    pixels = np.frombuffer(ds.PixelData, np.int16).reshape(512, 512)
    del ds.WindowCenter, ds.WindowWidth
    mono2 = render(ds, pixels, "MONOCHROME2")
    assert (mono2.min(), mono2.max()) == (0, 255)
    np.testing.assert_array_equal(render(ds, pixels, "MONOCHROME1"), 255 - mono2)


def test_colour_is_kept_and_thumbnail_keeps_aspect(tmp_path: Path) -> None:
    source = read("examples_rgb_color.dcm")  # 240 x 320 RGB
    result = transcode_to_htj2k(source)
    assert result.dataset.PhotometricInterpretation == "YBR_RCT"
    directory = write(tmp_path, result)
    rendered = jpeg(directory / "rendered.jpg")
    assert rendered.shape == (240, 320, 3)
    assert np.abs(rendered.astype(int) - source.pixel_array).mean() < 4
    assert jpeg(directory / "thumbnail.jpg").shape == (96, 128, 3)
    np.testing.assert_array_equal(render(source, source.pixel_array, "RGB"), source.pixel_array)


def test_palette_colour_renders_through_the_lookup_table() -> None:
    source = read("examples_palette.dcm")
    image = render(source, source.pixel_array, "PALETTE COLOR")
    assert image.shape == (350, 800, 3) and image.dtype == np.uint8
    lut = pydicom.pixels.apply_color_lut(source.pixel_array, source)
    np.testing.assert_array_equal(image, (lut >> 8).astype(np.uint8))


def test_thumbnail_never_enlarges_and_averages() -> None:
    small = np.zeros((64, 64), np.uint8)
    assert thumbnail(small, 128) is small
    checker = np.indices((512, 256)).sum(axis=0) % 2 * 255
    shrunk = thumbnail(checker.astype(np.uint8), 128)
    assert shrunk.shape == (128, 64)
    assert np.all(np.abs(shrunk.astype(int) - 128) <= 1)


def test_multiframe_writes_every_frame_and_drops_stale_ones(tmp_path: Path) -> None:
    source = read("SC_rgb_rle_2frame.dcm")
    result = transcode_to_htj2k(source)
    directory = write(tmp_path, result)
    three = [*result.frames, result.frames[0]]
    write_instance_files(tmp_path, result.dataset, three, result.transfer_syntax, result.pixels)
    assert (directory / "frames" / "3").exists()
    write(tmp_path, result)
    assert sorted(p.name for p in (directory / "frames").iterdir()) == ["1", "2"]
    for n, codestream in enumerate(result.frames, start=1):
        assert parse_frame_file(directory / "frames" / str(n))[1] == codestream


def test_kept_objects_get_frames_in_their_own_syntax(tmp_path: Path) -> None:
    lossy = transcode_to_htj2k(read("SC_rgb_jpeg_dcmtk.dcm"))
    directory = write(tmp_path, lossy)
    content_type, data = parse_frame_file(directory / "frames" / "1")
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.4.50")
    assert data == lossy.frames[0]
    assert jpeg(directory / "rendered.jpg").shape == (100, 100, 3)
    dose = transcode_to_htj2k(read("rtdose.dcm"))  # 32-bit, implicit VR little endian
    assert dose.transfer_syntax == "1.2.840.10008.1.2"
    directory = write(tmp_path, dose)
    content_type, data = parse_frame_file(directory / "frames" / "15")
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")
    assert data == dose.frames[14]


def test_undecodable_kept_object_gets_frames_but_no_jpegs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = transcode_to_htj2k(read("JPGExtended.dcm"))  # 12-bit JPEG: no decoder here
    with caplog.at_level(logging.WARNING, logger="neuronova.transcode.frames"):
        directory = write(tmp_path, result)
    assert (directory / "frames" / "1").exists()
    assert not (directory / "rendered.jpg").exists()
    assert "rendered/thumbnail not written" in caplog.text


def test_object_without_pixels_gets_no_files(tmp_path: Path) -> None:
    directory = write(tmp_path, transcode_to_htj2k(read("test-SR.dcm")))
    assert not [p for p in directory.rglob("*") if p.is_file()]


def test_frame_containing_the_boundary_is_refused(tmp_path: Path) -> None:
    result = transcode_to_htj2k(ct_slice())
    bad = [result.frames[0] + f"\r\n--{BOUNDARY}--".encode()]
    with pytest.raises(ValueError, match="boundary"):
        write_instance_files(tmp_path, result.dataset, bad, result.transfer_syntax, result.pixels)


@pytest.mark.parametrize(
    "uid", ["", "..", "../etc", "1.2/3", "1..2", ".1.2", "1.2.", "1.2.a", "1" * 65, None, 12]
)
def test_bad_uids_raise(tmp_path: Path, uid: object) -> None:
    for uids in [("1.2", "1.3", uid), (uid, "1.3", "1.4"), ("1.2", uid, "1.4")]:
        with pytest.raises(ValueError):
            instance_dir(tmp_path, *uids)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_uid_in_dataset_raises_before_writing(tmp_path: Path) -> None:
    result = transcode_to_htj2k(ct_slice())
    ds = copy.copy(result.dataset)
    ds.add_new("SOPInstanceUID", "UI", "../../escape")
    with pytest.raises(ValueError):
        write_instance_files(tmp_path, ds, result.frames, result.transfer_syntax, result.pixels)
    assert not list(tmp_path.iterdir())


def test_valid_uid_paths(tmp_path: Path) -> None:
    uid = "1.2.840.10008.5.1.4.1.1.2." + "9" * 38
    assert len(uid) == 64
    assert instance_dir(tmp_path, "1.2", "1.3", uid) == tmp_path / "1.2" / "1.3" / uid


def test_only_the_folders_made_now_are_reported_for_their_parents_fsync(tmp_path):
    """write_instance_files fsyncs the parent of each folder it made, not every ancestor:
    the first instance of a study makes study, series, instance and frames folders; the
    next instance of the series only its own two."""
    first = tmp_path / "1.2" / "1.2.3" / "1.2.3.4" / "frames"
    assert frame_writer._make_folders(first) == [
        tmp_path / "1.2",
        tmp_path / "1.2" / "1.2.3",
        first.parent,
        first,
    ]
    second = tmp_path / "1.2" / "1.2.3" / "1.2.3.5" / "frames"
    assert frame_writer._make_folders(second) == [second.parent, second]
    assert frame_writer._make_folders(second) == [] and second.is_dir()
