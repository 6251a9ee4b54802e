"""A received C-STORE data set as a Part 10 file, and the few header elements the journal
needs, without decoding the whole data set.

The receiver runs this for every object while the modality waits for the answer, so it
avoids pydicom's general machinery where a fixed encoding will do: the File Meta
Information group (PS3.10 section 7.1) is always Explicit VR Little Endian with the same
six elements, and only the header elements named by the caller are parsed.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREFIX = b"\x00" * 128 + b"DICM"
_LONG_VRS = (b"OB",)  # VRs with a reserved field and a 4-byte length (PS3.5 7.1.2)


def file_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a received data set.

    The same bytes as pynetdicom's ``encode_file_meta(create_file_meta(...))`` (which the
    receiver used before): version 00 01, the Media Storage SOP Class and Instance UIDs,
    the Transfer Syntax UID, pynetdicom's Implementation Class UID and Version Name.

    Parameters
    ----------
    sop_class, sop_instance
        Affected SOP Class and Instance UIDs of the C-STORE request.
    transfer_syntax
        The presentation context's transfer syntax UID.

    Returns
    -------
    bytes
        What goes before the data set in a Part 10 file.

    Raises
    ------
    ValueError
        A UID is not ASCII (``UnicodeEncodeError``) or a value is too long.
    """
    group = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _uid(sop_class)),
            _element(0x0003, b"UI", _uid(sop_instance)),
            _element(0x0010, b"UI", _uid(transfer_syntax)),
            _element(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
            _element(0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" ")),
        ]
    )
    return PREFIX + _element(0x0000, b"UL", struct.pack("<I", len(group))) + group


def _uid(value: str) -> bytes:
    return _even(value.encode("ascii"), b"\x00")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"file meta element (0002,{element:04X}) is too long")
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def read_header(stream: bytes, transfer_syntax: str, keywords: Sequence[str]) -> Dataset:
    """The elements named by ``keywords`` of an encoded data set (no file meta).

    Parsing stops after the highest of those tags, so the pixel data is never read;
    Specific Character Set is always kept so that names decode correctly.

    Parameters
    ----------
    stream
        The data set as received (deflated for the Deflated transfer syntax).
    transfer_syntax
        The transfer syntax UID it is encoded in.
    keywords
        DICOM keywords of the elements wanted (top-level elements).

    Returns
    -------
    pydicom.dataset.Dataset
        Those of the elements that are present, with ``file_meta.TransferSyntaxUID``.

    Raises
    ------
    ValueError
        The data set cannot be parsed (e.g. a deflated stream that does not inflate).
    """
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        try:
            stream = zlib.decompress(stream, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise ValueError(f"the deflated data set does not inflate: {exc}") from None
    tags: list[BaseTag | int] = sorted(Tag(k) for k in keywords)
    last = tags[-1]
    ds = read_dataset(
        io.BytesIO(stream),
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, _vr, _length: tag > last,
        specific_tags=tags,
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds
