"""Transcode any incoming DICOM object to HTJ2K lossless, verified, or say why it is kept.

Pixels are decoded once with pydicom (pylibjpeg-openjpeg for JPEG 2000, imagecodecs for
lossless JPEG and JPEG-LS, registered in :mod:`appliance.transcode.pixels`), every frame is
encoded with OpenJPH through ``imagecodecs.htj2k_encode`` (reversible 5/3 wavelet, RPCL,
one tile-part per resolution, TLM markers, at least 5 decomposition levels and more for
images over 2048 pixels: the shape PS3.5 10.18 asks of HTJ2K with RPCL Options, see
:mod:`appliance.transcode.codestream`) and decoded back with OpenJPH to check that
the pixels are identical before anything is stored.

Colour images are encoded with the reversible colour transform (RCT) and stored as
``YBR_RCT``, as PS3.5 section 8.2 requires when the RCT is used; it halves the size of
typical RGB images. JPEG 2000 decoders (OpenJPEG, OpenJPH, so pydicom and Cornerstone)
undo the RCT and return RGB.

Size: about 7% larger than J2K lossless (OpenJPEG reversible 5/3 at its defaults: 5
decompositions, 64x64 code-blocks, LRCP, one layer), 1.0735x on the 300-slice synthetic CT
of ``bench/codec.py`` and 1.06-1.09x on pydicom's CT/MR test files. The gap is the HT
block coder's (no context-adaptive arithmetic coding), not a setting: measured lossless,
3, 4, 6 or 7 decompositions (1.0739-1.0799x), 256x256 tiles (1.0779x), and with
``ojph_compress`` code-blocks 32x128 or 128x32 (1.0737-1.0740x vs 1.0729x at 64x64),
128x128 precincts (1.0737x) do no better than the defaults used here; declaring Bits
Stored as the bit depth instead of 16 (imagecodecs does not expose it) saves under 0.2%.
Signed input costs the same as the same pixels offset to unsigned. TLM and one tile-part
per resolution add about 110 bytes a frame (0.06% on 512x512 CT).
"""

from __future__ import annotations

import copy
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import imagecodecs
import numpy as np
import pydicom
from pydicom import uid as tsuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import UID

from appliance.transcode.codestream import colour_transform, decomposition_levels
from appliance.transcode.pixels import (
    TranscodeError,
    decode_all,
    encapsulated_frames,
    native_frames,
    sop_of,
    verified_htj2k_frames,
)

TARGET_SYNTAX = tsuid.HTJ2KLossless

# Syntaxes whose pixels are decoded exactly by pydicom (with the plugins installed).
_LOSSLESS_INPUT = frozenset(
    {
        *tsuid.UncompressedTransferSyntaxes,
        tsuid.RLELossless,
        tsuid.JPEGLossless,
        tsuid.JPEGLosslessSV1,
        tsuid.JPEGLSLossless,
        tsuid.JPEG2000Lossless,
    }
)
_HTJ2K_LOSSLESS = frozenset({tsuid.HTJ2KLossless, tsuid.HTJ2KLosslessRPCL})
_LOSSY_INPUT = frozenset(
    {
        tsuid.JPEGBaseline8Bit,
        tsuid.JPEGExtended12Bit,
        tsuid.JPEGLSNearLossless,
        tsuid.JPEG2000,
        tsuid.JPEG2000MC,
        tsuid.HTJ2K,
        *tsuid.MPEGTransferSyntaxes,
    }
)
HTJ2K_ENCODE_OPTIONS = {
    "reversible": True,
    "planar": False,
    "tlm": True,
    "tilepart": imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
}
_MAX_BOT_OFFSET = 2**32 - 1
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_VERIFIER = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="htj2k-verify")


@dataclass(frozen=True)
class TranscodeResult:
    """The outcome of :func:`transcode_to_htj2k`.

    Attributes
    ----------
    dataset
        What to store: the HTJ2K dataset, or the input dataset itself when kept.
    transcoded
        True when ``dataset`` is a new HTJ2K lossless dataset.
    reason
        Why the object was kept as received (None when transcoded).
    transfer_syntax
        Transfer syntax UID of ``dataset``.
    frames
        Per-frame bytes as a DICOMweb client expects them in ``frame_transfer_syntax``:
        codestreams for encapsulated syntaxes, little endian native bytes otherwise;
        empty when there is no pixel data.
    pixels
        The decoded first frame (rows, columns[, samples]) when the transcoder had it,
        colour frames as RGB, for rendering without decoding again; else None.
    """

    dataset: Dataset
    transcoded: bool
    reason: str | None
    transfer_syntax: str
    frames: list[bytes]
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def frame_transfer_syntax(self) -> str:
        """Transfer syntax UID that ``frames`` are encoded in."""
        return frame_transfer_syntax(self.transfer_syntax)


def frame_transfer_syntax(transfer_syntax: str) -> str:
    """Transfer syntax of the frames of a dataset stored in ``transfer_syntax``.

    Parameters
    ----------
    transfer_syntax
        Transfer syntax UID of the stored dataset.

    Returns
    -------
    str
        ``transfer_syntax`` for encapsulated syntaxes, else Explicit VR Little Endian
        (frames of native datasets are always sent little endian).
    """
    if UID(transfer_syntax).is_encapsulated:
        return str(transfer_syntax)
    return str(tsuid.ExplicitVRLittleEndian)


def transcode_to_htj2k(ds: Dataset) -> TranscodeResult:
    """Transcode ``ds`` to HTJ2K lossless, verified, or keep it as received.

    Parameters
    ----------
    ds
        A dataset with ``file_meta.TransferSyntaxUID`` set (as read from a Part 10
        file or received over DICOM). It is not modified.

    Returns
    -------
    TranscodeResult
        The dataset to store, its frames, and the reason when it was kept.

    Raises
    ------
    TranscodeError
        The pixel data cannot be decoded or the HTJ2K round trip is not exact.
    """
    syntax = _transfer_syntax(ds)
    reason = _keep_reason(ds, syntax)
    if reason is not None:
        return _kept(ds, syntax, reason)
    arr, photometric = decode_all(ds, syntax)
    reason = _photometric_reason(photometric, arr)
    if reason is not None:
        return _kept(ds, syntax, reason)
    rct = photometric == "RGB"
    codestreams, checks = [], []
    for frame in arr:  # each frame is verified on another core while the next is encoded
        codestreams.append(_encode(frame, rct, ds))
        checks.append(_VERIFIER.submit(_round_trip_error, codestreams[-1], frame))
    out = _htj2k_dataset(ds, codestreams, "YBR_RCT" if rct else photometric)
    for index, check in enumerate(checks, start=1):
        if (error := check.result()) is not None:
            raise TranscodeError(f"{sop_of(ds)}: frame {index}: {error}")
    return TranscodeResult(out, True, None, str(TARGET_SYNTAX), codestreams, arr[0])


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Serialise ``ds`` as a DICOM Part 10 file (preamble, file meta, data set).

    Parameters
    ----------
    ds
        A dataset with ``file_meta.TransferSyntaxUID`` set.

    Returns
    -------
    bytes
        The file content, ready to be stored in Orthanc.
    """
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise TranscodeError(f"{sop_of(ds)}: no (0002,0010) Transfer Syntax UID in file meta")
    return UID(syntax)


def _keep_reason(ds: Dataset, syntax: UID) -> str | None:
    """Why ``ds`` must be stored as received, or None if it can be transcoded."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data"
    if "PixelData" not in ds:
        return "no pixel data"
    if syntax in _LOSSY_INPUT:
        return f"lossy transfer syntax {syntax.name} ({syntax}): never re-compressed"
    if ds.get("LossyImageCompression") == "01":
        return "Lossy Image Compression is 01 (lossy-compressed before): never re-compressed"
    bits = ds.get("BitsAllocated")
    if bits not in (8, 16):
        return f"Bits Allocated {bits}: only 8 and 16 are transcoded"
    if ds.get("SamplesPerPixel", 1) not in (1, 3):
        return f"Samples per Pixel {ds.SamplesPerPixel}: only 1 and 3 are transcoded"
    if syntax in _HTJ2K_LOSSLESS:
        return "already HTJ2K lossless"
    if syntax not in _LOSSLESS_INPUT:
        return f"no lossless decoder for transfer syntax {syntax.name} ({syntax})"
    return None


def _photometric_reason(photometric: str, arr: np.ndarray) -> str | None:
    colour = arr.ndim == 4  # (frames, rows, columns, samples)
    allowed = ("RGB", "YBR_FULL") if colour else ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    if photometric in allowed:
        return None
    return f"Photometric Interpretation {photometric} is not transcoded"


def _encode(frame: np.ndarray, rct: bool, ds: Dataset) -> bytes:
    try:
        return _htj2k_encode(frame, rct)
    except imagecodecs.Htj2kError as exc:
        raise TranscodeError(f"{sop_of(ds)}: HTJ2K encoding failed: {exc}") from exc


def _htj2k_encode(frame: np.ndarray, rct: bool) -> bytes:
    levels = decomposition_levels(*frame.shape[:2])
    return imagecodecs.htj2k_encode(frame, rgb=rct, resolutions=levels, **HTJ2K_ENCODE_OPTIONS)


def reencode_htj2k(codestream: bytes) -> bytes:
    """An HTJ2K lossless codestream encoded again as the transcoder would (RPCL, TLM,
    enough decomposition levels for PS3.5 10.18), verified to decode to the same pixels.

    The colour transform is kept as it was, so the frame's Photometric Interpretation
    still holds.

    Raises
    ------
    TranscodeError
        The codestream does not decode, or the new one does not decode to its pixels.
    """
    try:
        pixels = imagecodecs.htj2k_decode(codestream, planar=False)
        rct = pixels.ndim == 3 and colour_transform(codestream)
        new = _htj2k_encode(pixels, rct)
    except (imagecodecs.Htj2kError, ValueError) as exc:
        raise TranscodeError(f"cannot re-encode the HTJ2K codestream: {exc}") from exc
    if (error := _round_trip_error(new, pixels)) is not None:
        raise TranscodeError(error)
    return new


def _round_trip_error(codestream: bytes, frame: np.ndarray) -> str | None:
    """Why ``codestream`` does not decode to exactly ``frame``, or None if it does."""
    try:
        decoded = imagecodecs.htj2k_decode(codestream, planar=False)
    except imagecodecs.Htj2kError as exc:
        return f"HTJ2K codestream does not decode: {exc}"
    if decoded.dtype != frame.dtype or not np.array_equal(decoded, frame):
        return (
            "HTJ2K round trip is not exact "
            f"({frame.dtype}{frame.shape} in, {decoded.dtype}{decoded.shape} out)"
        )
    return None


def _htj2k_dataset(ds: Dataset, codestreams: list[bytes], photometric: str) -> Dataset:
    """A new dataset with ``ds``'s other elements and the HTJ2K pixel data."""
    if ds.file_meta.TransferSyntaxUID.is_little_endian:
        out = Dataset(dict(ds.items()))  # shares the elements: only replace, never mutate
    else:
        out = copy.deepcopy(ds)
        _swap_big_endian_words(out)
    out.file_meta = _htj2k_file_meta(ds.file_meta)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in out:
            del out[keyword]
    out.add_new("PhotometricInterpretation", "CS", photometric)
    if out.get("SamplesPerPixel", 1) > 1:
        out.add_new("PlanarConfiguration", "US", 0)
    _set_encapsulated(out, codestreams)
    return out


def _swap_big_endian_words(ds: Dataset) -> None:
    """Byte-swap OW/OL/OF/OD/OV values read from Explicit VR Big Endian (pydicom keeps
    them as read), so that they are right when written little endian."""

    def swap(dataset: Dataset, elem: pydicom.DataElement) -> None:
        size = _WORD_SIZES.get(elem.VR)
        if size and elem.value and elem.tag != 0x7FE00010:
            elem.value = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()

    ds.walk(swap)


def _htj2k_file_meta(meta: FileMetaDataset) -> FileMetaDataset:
    out = FileMetaDataset(dict(meta.items()))  # shares the elements: only replace
    out.add_new("TransferSyntaxUID", "UI", TARGET_SYNTAX)
    for keyword in ("ImplementationClassUID", "ImplementationVersionName"):
        if keyword in out:
            del out[keyword]  # dcmwrite(enforce_file_format=True) sets pydicom's
    return out


def _set_encapsulated(ds: Dataset, codestreams: list[bytes]) -> None:
    """Store ``codestreams`` as encapsulated Pixel Data, one fragment per frame."""
    total = sum(8 + len(c) + len(c) % 2 for c in codestreams)
    if total <= _MAX_BOT_OFFSET:
        ds.add_new("PixelData", "OB", encapsulate(codestreams, has_bot=True))
    else:
        data, offsets, lengths = encapsulate_extended(codestreams)
        ds.add_new("PixelData", "OB", data)
        ds.add_new("ExtendedOffsetTable", "OV", offsets)
        ds.add_new("ExtendedOffsetTableLengths", "OV", lengths)
    ds["PixelData"].is_undefined_length = True


def _kept(ds: Dataset, syntax: UID, reason: str) -> TranscodeResult:
    """Result for ``ds`` stored as received, with its frames."""
    pixels = None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        frames = []
    elif syntax in _HTJ2K_LOSSLESS:
        frames, pixels = verified_htj2k_frames(ds)
    elif syntax.is_encapsulated:
        frames = list(encapsulated_frames(ds))
    else:
        frames = native_frames(ds, syntax)
    return TranscodeResult(ds, False, reason, str(syntax), frames, pixels)
