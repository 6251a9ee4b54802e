"""Writing the files nginx serves directly for DICOMweb frames, rendered and thumbnail
requests, in the layout of :mod:`appliance.store.frame_files`.

Every file is written atomically (temporary file in the same directory, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.uid import HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL

from appliance.durable import fsync_dir, write_atomic
from appliance.store.frame_files import BOUNDARY, IMAGE_NAMES, instance_dir
from appliance.transcode.codec import TranscodeError, frame_transfer_syntax, reencode_htj2k
from appliance.transcode.codestream import RPCL_SYNTAX, rpcl_problem

log = logging.getLogger("neuronova.transcode.frames")

THUMBNAIL_SIZE = 128
JPEG_QUALITY = 90
_DELIMITER = b"--" + BOUNDARY.encode()
_TAIL = b"\r\n" + _DELIMITER + b"--\r\n"
_HTJ2K_SYNTAXES = (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)


def write_instance_files(
    root: str | os.PathLike[str],
    ds: Dataset,
    frames: list[bytes],
    transfer_syntax: str,
    pixels: np.ndarray | None = None,
    images: bool = True,
) -> Path:
    """Write the frame files, ``rendered.jpg`` and ``thumbnail.jpg`` of an instance.

    Parameters
    ----------
    root
        Root of the frame tree.
    ds
        The stored dataset (its UIDs name the directories; its image attributes drive
        the rendering).
    frames
        Per-frame bytes, as ``TranscodeResult.frames``.
    transfer_syntax
        Transfer syntax UID of the stored dataset; native syntaxes give frames typed
        Explicit VR Little Endian, and HTJ2K lossless frames that qualify are typed HTJ2K
        with RPCL Options (:func:`served_syntax`).
    pixels
        Decoded first frame (rows, columns[, samples]; colour as RGB unless the
        dataset says YBR_FULL), e.g. ``TranscodeResult.pixels``; decoded from ``ds``
        when None. Without decodable pixels no JPEGs are written (logged).
    images
        False to write the frame files only (the JPEGs come later, from
        :func:`write_images`).

    Returns
    -------
    Path
        The instance directory.

    Raises
    ------
    ValueError
        A UID is invalid, or a frame contains the multipart boundary.
    """
    directory = instance_dir(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frames_dir = directory / "frames"
    created = _make_folders(frames_dir)
    syntax = frame_transfer_syntax(str(transfer_syntax))
    for n, data in enumerate(frames, start=1):
        if _DELIMITER in data:
            raise ValueError(f"{ds.SOPInstanceUID}: frame {n} contains the multipart boundary")
        write_atomic(frames_dir / str(n), part_head(served_syntax(syntax, data)), data, _TAIL)
    _remove_frames_after(frames_dir, len(frames))
    if frames and images:
        _write_jpegs(directory, ds, transfer_syntax, pixels)
    _fsync_dirs({frames_dir, directory, *(folder.parent for folder in created)})
    return directory


def write_images(root: str | os.PathLike[str], ds: Dataset, transfer_syntax: str) -> bool:
    """Write ``rendered.jpg`` and ``thumbnail.jpg`` of an instance whose frames exist.

    Parameters
    ----------
    root
        Root of the frame tree.
    ds
        The stored dataset, with its pixel data (the first frame is decoded).
    transfer_syntax
        Transfer syntax UID of ``ds``.

    Returns
    -------
    bool
        False when the instance directory is gone (the instance was removed or replaced
        meanwhile) and nothing was written.

    Raises
    ------
    ValueError
        A UID is invalid.
    """
    directory = instance_dir(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    if not (directory / "frames").is_dir():
        return False
    _write_jpegs(directory, ds, transfer_syntax, _first_htj2k_frame(ds, transfer_syntax))
    fsync_dir(directory)
    return True


def _first_htj2k_frame(ds: Dataset, transfer_syntax: str) -> np.ndarray | None:
    """The first frame of an HTJ2K dataset decoded with OpenJPH (2 ms for a CT slice,
    where pydicom's OpenJPEG plugin takes 5.6 ms); None for other syntaxes or on failure
    (pydicom's decoders then try)."""
    if transfer_syntax not in _HTJ2K_SYNTAXES:
        return None
    try:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        return imagecodecs.htj2k_decode(
            next(generate_frames(ds.PixelData, number_of_frames=count)), planar=False
        )
    except Exception as exc:  # damaged data: let pydicom's decoders say why
        log.warning("%s: OpenJPH could not decode the first frame: %s", ds.SOPInstanceUID, exc)
        return None


def served_syntax(transfer_syntax: str, frame: bytes) -> str:
    """The transfer syntax a frame is served in: HTJ2K with RPCL Options (``.4.202``) for
    an HTJ2K lossless (``.4.201``) codestream that meets its conditions, so that viewers
    may fetch and decode its first part (:mod:`appliance.transcode.codestream`); else
    ``transfer_syntax`` itself."""
    if transfer_syntax == HTJ2KLossless and rpcl_problem(frame) is None:
        return RPCL_SYNTAX
    return transfer_syntax


def part_head(transfer_syntax: str) -> bytes:
    """The start of a frame file: the boundary and the part's Content-Type."""
    return (
        f"--{BOUNDARY}\r\n"
        f"Content-Type: application/octet-stream; transfer-syntax={transfer_syntax}\r\n\r\n"
    ).encode("ascii")


def relabel_frame_file(path: Path, reencode: bool = False) -> str:
    """Label a frame file written before frames were served as ``.4.202`` the way
    :func:`write_instance_files` now would.

    A codestream that qualifies is relabelled in place: the two labels have the same
    length and differ in one byte, so a reader sees the old label or the new one, both
    right for the codestream, and nothing else of the file changes. One that does not
    qualify is, with ``reencode``, encoded again (:func:`~appliance.transcode.codec.
    reencode_htj2k`, verified to give the same pixels) and the file replaced atomically,
    unless the worker replaced it meanwhile; the object stored in Orthanc keeps its own
    codestream (serving a frame in another lossless syntax is a transcoding DICOMweb
    allows). A labelled file is recognised by its first bytes, so a run resumes cheaply.

    Returns
    -------
    str
        ``"relabelled"``, ``"re-encoded"``, ``"already"`` (already ``.4.202``),
        ``"re-encode"`` (does not qualify; ``reencode`` not asked), ``"failed"`` (the
        codestream could not be re-encoded exactly; the file is left), ``"gone"``
        (removed or replaced meanwhile) or ``"other"`` (another transfer syntax).
    """
    old, new = part_head(str(HTJ2KLossless)), part_head(RPCL_SYNTAX)
    try:
        with path.open("r+b") as file:
            data = file.read(len(new))
            if data == new:
                return "already"
            data += file.read()
            if not (data.startswith(old) and data.endswith(_TAIL)):
                return "other"
            codestream = data[len(old) : -len(_TAIL)]
            if rpcl_problem(codestream) is None:
                file.seek(0)
                file.write(new)
                return "relabelled"
            if not reencode:
                return "re-encode"
            read = os.fstat(file.fileno())
    except FileNotFoundError:
        return "gone"
    try:
        encoded = reencode_htj2k(codestream)
        if _DELIMITER in encoded:
            raise TranscodeError("the new codestream contains the multipart boundary")
    except TranscodeError as exc:
        log.warning("%s: frame not re-encoded: %s", path, exc)
        return "failed"
    try:
        now = path.stat()
    except FileNotFoundError:
        return "gone"
    if (now.st_ino, now.st_mtime_ns) != (read.st_ino, read.st_mtime_ns):
        return "gone"
    write_atomic(path, new, encoded, _TAIL)
    fsync_dir(path.parent)
    return "re-encoded"


def _remove_frames_after(frames_dir: Path, count: int) -> None:
    """Remove frame files numbered above ``count`` (left by an earlier version)."""
    for entry in frames_dir.iterdir():
        if entry.name.isdigit() and int(entry.name) > count:
            entry.unlink(missing_ok=True)


def _make_folders(path: Path) -> list[Path]:
    """``mkdir -p path``; the folders it created, outermost first.

    Only a folder that gained an entry needs an fsync: the series, study and root
    folders of a CT slice's frames rarely do, and each fsync of one (a disk cache flush
    even when nothing changed) was two of the five directory fsyncs per instance, taken from
    the receiver's own fsyncs on the same disk. (A folder made by an earlier call that
    failed before its fsync is left to the file system's periodic commit, 5 s on ext4.)
    """
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:  # another worker made it meanwhile (and fsyncs its parent)
            pass
    return created


def _fsync_dirs(directories: Iterable[Path]) -> None:
    for directory in directories:
        fsync_dir(directory)


def _write_jpegs(
    directory: Path, ds: Dataset, transfer_syntax: str, pixels: np.ndarray | None
) -> None:
    if pixels is None:
        decoded = _decode_first_frame(ds, transfer_syntax)
        if decoded is None:
            return
        pixels, photometric = decoded
    else:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    image = render(ds, pixels, photometric)
    write_atomic(directory / IMAGE_NAMES["rendered"], _jpeg(image))
    write_atomic(directory / IMAGE_NAMES["thumbnail"], _jpeg(thumbnail(image, THUMBNAIL_SIZE)))


def _decode_first_frame(ds: Dataset, transfer_syntax: str) -> tuple[np.ndarray, str] | None:
    try:
        arr, meta = get_decoder(transfer_syntax).as_array(ds, index=0, as_rgb=True)
    except Exception as exc:  # no decoder for this syntax, or damaged data
        log.warning("%s: rendered/thumbnail not written: %s", ds.SOPInstanceUID, exc)
        return None
    return arr, str(meta["photometric_interpretation"])


def _jpeg(image: np.ndarray) -> bytes:
    return imagecodecs.jpeg8_encode(np.ascontiguousarray(image), level=JPEG_QUALITY)


def render(ds: Dataset, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """8-bit image of one frame, as a viewer would show it by default.

    Parameters
    ----------
    ds
        Dataset with the image attributes (rescale, window, palette, bits stored).
    pixels
        The frame, (rows, columns) or (rows, columns, 3).
    photometric
        Photometric interpretation of ``pixels`` (colour frames decoded by JPEG 2000
        decoders are RGB whatever the dataset says).

    Returns
    -------
    numpy.ndarray
        uint8, (rows, columns) for grey or (rows, columns, 3) RGB. Grey frames use the
        first Window Center/Width after the modality LUT, else the frame's min/max;
        MONOCHROME1 is inverted.
    """
    if photometric == "PALETTE COLOR":
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _colour_to_uint8(apply_color_lut(pixels, ds), bits)
    if pixels.ndim == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        return _colour_to_uint8(pixels, int(ds.get("BitsStored", 8)))
    return _window(ds, pixels, invert=photometric == "MONOCHROME1")


def _colour_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return (arr >> max(bits - 8, 0)).clip(0, 255).astype(np.uint8)


def _window(ds: Dataset, frame: np.ndarray, invert: bool) -> np.ndarray:
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    window = _window_values(ds)
    if window is None:
        low, high = float(values.min()), float(values.max())
    else:
        center, width = window
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    scaled = (values - low) * (255 / max(high - low, 1e-6))
    image = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    return 255 - image if invert else image


def _window_values(ds: Dataset) -> tuple[float, float] | None:
    """First Window Center and Width, or None if absent or unusable."""
    try:
        center, width = (_first(ds.get(k)) for k in ("WindowCenter", "WindowWidth"))
    except (TypeError, ValueError):
        return None
    if center is None or width is None or width < 1:
        return None
    return center, width


def _first(value: object) -> float | None:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return float(value)


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink ``image`` so its longest side is ``size`` (area average; never enlarges).

    Parameters
    ----------
    image
        uint8, (rows, columns) or (rows, columns, 3).
    size
        Longest side of the result, in pixels.

    Returns
    -------
    numpy.ndarray
        uint8 image, ``image`` itself when already small enough.
    """
    rows, columns = image.shape[:2]
    scale = size / max(rows, columns)
    if scale >= 1:
        return image
    out = image.astype(np.float32)
    for axis, length in ((0, rows), (1, columns)):
        out = _box_mean(out, axis, length, max(1, round(length * scale)))
    return np.round(out).astype(np.uint8)


def _box_mean(arr: np.ndarray, axis: int, length: int, target: int) -> np.ndarray:
    """Means of ``target`` consecutive blocks along ``axis`` (sizes differ by at most one).

    When ``target`` divides ``length`` (512 to 128, 256 to 128...), the blocks are summed
    with strided adds, in the same order as ``np.add.reduceat`` would (same result,
    about 30 times faster).
    """
    if length % target == 0:
        step = length // target
        view = np.moveaxis(arr, axis, 0)
        total = view[0::step].copy()
        for offset in range(1, step):
            total += view[offset::step]
        return np.moveaxis(total, 0, axis) / np.float32(step)
    starts = np.arange(target) * length // target
    counts = np.diff(np.append(starts, length))
    shape = [1] * arr.ndim
    shape[axis] = target
    return np.add.reduceat(arr, starts, axis=axis) / counts.reshape(shape)
