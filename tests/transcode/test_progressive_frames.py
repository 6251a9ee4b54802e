"""HTJ2K with RPCL Options (``.4.202``): the codestream check, the encoder settings that
make every codestream qualify, the frame files' label and the relabelling of frames
written before (issue 16, item 5)."""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from pydicom.encaps import generate_frames

from appliance.cli import cli as neuronova_cli
from appliance.config import load_settings
from appliance.home import require_initialized
from appliance.store.frame_files import BOUNDARY, frame_file_paths, instance_dir
from appliance.transcode.codec import HTJ2K_ENCODE_OPTIONS, transcode_to_htj2k
from appliance.transcode.codestream import (
    RPCL_SYNTAX,
    colour_transform,
    decomposition_levels,
    rpcl_problem,
)
from appliance.transcode.frames import part_head, relabel_frame_file, write_instance_files
from tests.support.samples import native_dataset, read

HTJ2K = "1.2.840.10008.1.2.4.201"


def encoded(rows: int, columns: int, levels: int | None = None) -> bytes:
    pixels = np.random.default_rng(rows).integers(0, 4096, (rows, columns), dtype=np.uint16)
    if levels is None:
        return transcode_to_htj2k(native_dataset(pixels)).frames[0]
    return imagecodecs.htj2k_encode(pixels, resolutions=levels, **HTJ2K_ENCODE_OPTIONS)


def segment(codestream: bytes, marker: int) -> tuple[int, int]:
    """(offset, total length) of the first ``marker`` segment of the main header."""
    pos = 2
    while (found := struct.unpack_from(">H", codestream, pos)[0]) != marker:
        pos += 2 + struct.unpack_from(">H", codestream, pos + 2)[0]
        assert found != 0xFF90, f"no 0x{marker:04X} in the main header"
    return pos, 2 + struct.unpack_from(">H", codestream, pos + 2)[0]


@pytest.mark.parametrize(
    ("shape", "levels"),
    [((512, 512), 5), ((7, 5), 5), ((2048, 1), 5), ((2049, 16), 6), ((300, 4100), 7)],
)
def test_the_encoder_always_meets_the_conditions(shape, levels) -> None:
    assert decomposition_levels(*shape) == levels
    codestream = encoded(*shape)
    assert rpcl_problem(codestream) is None
    cod, _ = segment(codestream, 0xFF52)
    assert codestream[cod + 9] == levels  # the decomposition levels of COD


def test_each_condition_is_checked() -> None:
    good = encoded(512, 512)
    cod, _ = segment(good, 0xFF52)
    lrcp = bytearray(good)
    lrcp[cod + 5] = 0  # progression order LRCP
    assert rpcl_problem(bytes(lrcp)) == "progression order is not RPCL throughout"
    tlm, length = segment(good, 0xFF55)  # tile-part lengths are relative: drop the TLM
    assert rpcl_problem(good[:tlm] + good[tlm + length :]) == "no TLM marker segment"
    assert rpcl_problem(encoded(4096, 8, levels=5)) == (
        "5 decomposition levels leave a lowest resolution of 128 pixels"
    )
    assert rpcl_problem(b"") == "truncated or malformed marker segments"
    assert rpcl_problem(b"\xff\xd8\xff\xe0") == "does not start with SOC"
    for cut in (3, cod + 4, len(good) // 2):
        assert rpcl_problem(good[:cut]) is not None, cut


def test_openjpeg_lrcp_codestreams_do_not_qualify() -> None:
    ds = read("MR_small_jp2klossless.dcm")
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert rpcl_problem(codestream) == "progression order is not RPCL throughout"


def frame_file(root: Path, ds) -> Path:
    directory = instance_dir(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return directory / "frames" / "1"


def test_frames_are_served_as_rpcl_and_old_ones_are_relabelled_in_place(tmp_path: Path) -> None:
    result = transcode_to_htj2k(read("CT_small.dcm"))
    assert result.transfer_syntax == HTJ2K  # stored as .201; only the frames say .202
    write_instance_files(tmp_path, result.dataset, result.frames, result.transfer_syntax)
    path = frame_file(tmp_path, result.dataset)
    new = path.read_bytes()
    assert new.startswith(part_head(RPCL_SYNTAX))
    old = part_head(HTJ2K) + new[len(part_head(RPCL_SYNTAX)) :]
    path.write_bytes(old)  # as written before this change
    inode = path.stat().st_ino
    assert relabel_frame_file(path) == "relabelled"
    assert path.read_bytes() == new and path.stat().st_ino == inode
    assert relabel_frame_file(path) == "already"

    short = transcode_to_htj2k(native_dataset(np.zeros((4096, 8), np.uint16)))
    few = encoded(4096, 8, levels=5)
    write_instance_files(tmp_path, short.dataset, [few], HTJ2K, images=False)
    kept = frame_file(tmp_path, short.dataset)
    assert kept.read_bytes().startswith(part_head(HTJ2K))  # too few levels: stays .201
    assert relabel_frame_file(kept) == "re-encode"
    assert kept.read_bytes().startswith(part_head(HTJ2K))

    jpeg = transcode_to_htj2k(read("JPEG-lossy.dcm"))
    write_instance_files(tmp_path, jpeg.dataset, jpeg.frames, jpeg.transfer_syntax)
    assert relabel_frame_file(frame_file(tmp_path, jpeg.dataset)) == "other"
    assert len(frame_file_paths(tmp_path)) == 3


def test_cli_relabels_a_home_then_reencodes_and_resumes(home: Path, runner) -> None:
    frames_dir = require_initialized(load_settings(home, {})).frames_dir
    result = transcode_to_htj2k(read("CT_small.dcm"))
    write_instance_files(frames_dir, result.dataset, result.frames, result.transfer_syntax)
    path = frame_file(frames_dir, result.dataset)
    path.write_bytes(part_head(HTJ2K) + path.read_bytes()[len(part_head(RPCL_SYNTAX)) :])
    (path.parent / ".1.abc.tmp").write_bytes(b"a partial write")
    big = native_dataset(np.zeros((2, 2), np.uint8))
    write_instance_files(frames_dir, big, [encoded(4096, 8, levels=5)], HTJ2K, images=False)

    def relabel(*extra: str) -> str:
        output = runner.invoke(neuronova_cli, ["frames", "relabel", *extra, "--home", str(home)])
        assert output.exit_code == 0, output.output
        return output.output

    said = relabel()
    assert "2 frame files: 1 relabelled, 0 re-encoded, 0 already labelled" in said
    assert "1 HTJ2K frames do not meet the conditions" in said
    assert path.read_bytes().startswith(part_head(RPCL_SYNTAX))
    assert "0 relabelled, 1 re-encoded, 1 already labelled" in relabel("--reencode")
    assert frame_file(frames_dir, big).read_bytes().startswith(part_head(RPCL_SYNTAX))
    said = relabel("--reencode")
    assert "0 relabelled, 0 re-encoded, 2 already labelled" in said
    assert "do not meet" not in said


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb-rct"])
def test_frames_that_do_not_qualify_are_reencoded_on_request(tmp_path: Path, colour) -> None:
    shape = (4100, 4, 3) if colour else (4100, 4)
    pixels = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    few = imagecodecs.htj2k_encode(pixels, rgb=colour, resolutions=5, **HTJ2K_ENCODE_OPTIONS)
    assert rpcl_problem(few) is not None
    ds = native_dataset(np.zeros((2, 2), np.uint8))  # its UIDs name the files
    write_instance_files(tmp_path, ds, [few], HTJ2K, images=False)
    path = frame_file(tmp_path, ds)
    assert relabel_frame_file(path) == "re-encode"
    assert relabel_frame_file(path, reencode=True) == "re-encoded"
    data = path.read_bytes()
    assert data.startswith(part_head(RPCL_SYNTAX))
    codestream = data[len(part_head(RPCL_SYNTAX)) : -len(f"\r\n--{BOUNDARY}--\r\n")]
    assert rpcl_problem(codestream) is None
    assert colour_transform(codestream) is colour
    np.testing.assert_array_equal(imagecodecs.htj2k_decode(codestream), pixels)
    assert relabel_frame_file(path, reencode=True) == "already"


def test_a_codestream_that_cannot_be_reencoded_is_left(tmp_path: Path) -> None:
    ds = read("MR_small_jp2klossless.dcm")  # JPEG 2000 part 1: OpenJPH cannot decode it
    j2k = next(generate_frames(ds.PixelData, number_of_frames=1))
    write_instance_files(tmp_path, ds, [j2k], HTJ2K, images=False)
    path = frame_file(tmp_path, ds)
    before = path.read_bytes()
    assert relabel_frame_file(path, reencode=True) == "failed"
    assert path.read_bytes() == before
