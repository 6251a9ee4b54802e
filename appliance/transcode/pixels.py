"""Pixel data as received: decoded for transcoding, or cut into frames as stored.

pydicom decodes every lossless input syntax once its plugins are installed; lossless JPEG
and JPEG-LS come from imagecodecs, registered here as a pydicom decoding plugin (pydicom
has no decoder for them without GPL libjpeg or pyjpegls). An object kept as received
keeps its frames as they are: codestreams of encapsulated syntaxes (a received HTJ2K
frame is checked to decode), little endian bytes of native ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
from pydicom import uid as tsuid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

# pydicom decoding plugin interface (see pydicom's "decoder plugins" guide): pydicom has
# no decoder for lossless JPEG or JPEG-LS unless GPL libjpeg or pyjpegls is installed;
# imagecodecs (already a dependency) decodes both.
DECODER_DEPENDENCIES = {
    tsuid.JPEGLossless: ("imagecodecs",),
    tsuid.JPEGLosslessSV1: ("imagecodecs",),
    tsuid.JPEGLSLossless: ("imagecodecs",),
}


def is_available(uid: str) -> bool:
    """Tell pydicom whether this module can decode ``uid`` (decoding plugin hook).

    Parameters
    ----------
    uid
        A transfer syntax UID.

    Returns
    -------
    bool
        True for lossless JPEG (process 14) and lossless JPEG-LS.
    """
    return uid in DECODER_DEPENDENCIES


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one lossless JPEG or JPEG-LS frame for pydicom (decoding plugin hook)."""
    if runner.transfer_syntax == tsuid.JPEGLSLossless:
        arr = imagecodecs.jpegls_decode(src)
    else:
        arr = imagecodecs.jpegsof3_decode(src)
    runner.set_option("planar_configuration", 0)
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return arr.tobytes()


def _register_decoding_plugin() -> None:
    for uid in DECODER_DEPENDENCIES:
        decoder = get_decoder(uid)
        if "imagecodecs" not in decoder.available_plugins:
            decoder.add_plugin("imagecodecs", (__name__, "_decode_frame"))


_register_decoding_plugin()


class TranscodeError(Exception):
    """Pixel data could not be decoded, encoded or verified; the message names the SOP."""


def sop_of(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOP Instance UID>"))


def decode_all(ds: Dataset, syntax: UID) -> tuple[np.ndarray, str]:
    """All frames as (frames, rows, columns[, samples]) and their photometric."""
    try:
        arr, meta = get_decoder(syntax).as_array(ds, as_rgb=False)
    except Exception as exc:  # pydicom raises many types for bad or truncated data
        raise TranscodeError(
            f"{sop_of(ds)}: cannot decode {syntax.name} pixel data: {exc}"
        ) from exc
    samples = int(meta["samples_per_pixel"])
    shape = (int(meta["number_of_frames"]), int(meta["rows"]), int(meta["columns"]))
    arr = arr.reshape(shape + ((samples,) if samples > 1 else ()))
    kind = "i" if ds.get("PixelRepresentation", 0) else "u"
    dtype = np.dtype(f"{kind}{ds.BitsAllocated // 8}")
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr, str(meta["photometric_interpretation"])


def encapsulated_frames(ds: Dataset) -> Iterator[bytes]:
    eot = ds.get("ExtendedOffsetTable")
    offsets = (eot, ds.ExtendedOffsetTableLengths) if eot is not None else None
    nr_frames = int(ds.get("NumberOfFrames", 1) or 1)
    return generate_frames(ds.PixelData, number_of_frames=nr_frames, extended_offsets=offsets)


def verified_htj2k_frames(ds: Dataset) -> tuple[list[bytes], np.ndarray]:
    """Frames of a received HTJ2K lossless dataset, each checked to decode."""
    expected = (ds.Rows, ds.Columns) + ((ds.SamplesPerPixel,) if ds.SamplesPerPixel > 1 else ())
    frames = list(encapsulated_frames(ds))
    first = None
    for index, frame in enumerate(frames, start=1):
        try:
            decoded = imagecodecs.htj2k_decode(frame, planar=False)
        except imagecodecs.Htj2kError as exc:
            raise TranscodeError(f"{sop_of(ds)}: HTJ2K frame {index} does not decode") from exc
        if decoded.shape != expected:
            raise TranscodeError(
                f"{sop_of(ds)}: HTJ2K frame {index} is {decoded.shape}, expected {expected}"
            )
        first = decoded if first is None else first
    return frames, first


def native_frames(ds: Dataset, syntax: UID) -> list[bytes]:
    """Little endian bytes of each frame of a native dataset, as stored."""
    decoder = get_decoder(syntax)
    try:
        if syntax.is_little_endian and ds.get("BitsAllocated") != 1:
            return [bytes(buf) for buf, _ in decoder.iter_buffer(ds)]
        arr, meta = decoder.as_array(ds, raw=True, correct_unused_bits=False)
    except Exception as exc:  # pydicom raises many types for bad or truncated data
        raise TranscodeError(f"{sop_of(ds)}: cannot read {syntax.name} pixel data: {exc}") from exc
    arr = arr.reshape(int(meta["number_of_frames"]), -1)
    if ds.get("BitsAllocated") == 1:
        return [np.packbits(frame, bitorder="little").tobytes() for frame in arr]
    return [frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes() for frame in arr]
