"""A received C-STORE data set, checked to be whole before it is acknowledged, and the few
header elements the journal needs, without decoding the data set.

The receiver runs this for every object while the modality waits for the answer, so it
walks the encoding itself instead of building pydicom elements: every element's tag and
length is read (values are skipped, pixel data is never read), sequences and
encapsulated pixel data are followed item by item, and the walk must end exactly at the
end of the data set (PS3.5 section 7). Only the top-level elements the caller names are
kept, and decoded by pydicom. A Deflated data set (PS3.5 A.5) is inflated as it is
walked, a chunk at a time, and refused once it inflates beyond a limit.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

PREAMBLE = 128 + 4  # the preamble and "DICM" (PS3.10 7.1)
_META_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL, Explicit VR Little Endian
# VRs with a reserved field and a 4-byte length in Explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_CHARACTER_SET = 0x00080005
_MAX_DEPTH = 32
# The header elements kept (UIDs, names, dates, descriptions) are short by definition;
# a larger declared length is refused before its value is read into memory.
MAX_HEADER_VALUE = 64 * 1024
_KNOWN_VRS = frozenset(vr.value for vr in VR)
_CHUNK = 256 * 1024


class _Truncated(Exception):
    """The data set ends inside an element."""


class _Source(Protocol):
    """The encoded data set, read forwards."""

    def take(self, size: int) -> bytes:
        """Exactly ``size`` bytes; :class:`_Truncated` when fewer remain."""

    def skip(self, size: int) -> None:
        """Pass over ``size`` bytes; :class:`_Truncated` when fewer remain."""

    def at_end(self) -> bool:
        """Whether every byte was read."""


class _FileSource:
    """A data set in a file, from the current position to ``end``; values are seeked over."""

    def __init__(self, fp: BinaryIO, end: int) -> None:
        self._fp = fp
        self._left = end - fp.tell()

    def take(self, size: int) -> bytes:
        self._use(size)
        return self._fp.read(size)

    def skip(self, size: int) -> None:
        self._use(size)
        self._fp.seek(size, 1)

    def at_end(self) -> bool:
        return self._left == 0

    def _use(self, size: int) -> None:
        if size > self._left:
            raise _Truncated
        self._left -= size


class _InflatingSource:
    """A Deflated data set, inflated a chunk at a time; at most ``limit`` bytes in all."""

    def __init__(self, fp: BinaryIO, limit: int) -> None:
        self._fp = fp
        self._limit = limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = b""
        self._inflated = 0

    def take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._inflate():
                raise _Truncated
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def skip(self, size: int) -> None:
        while size > len(self._buffer):
            size -= len(self._buffer)
            self._buffer = b""
            if not self._inflate():
                raise _Truncated
        self._buffer = self._buffer[size:]

    def at_end(self) -> bool:
        return not self._buffer and not self._inflate()

    def _inflate(self) -> bool:
        """Inflate the next chunk into the buffer; False at the end of the stream."""
        while not self._inflater.eof:
            data = self._inflater.unconsumed_tail or self._fp.read(_CHUNK)
            try:
                out = self._inflater.decompress(data, _CHUNK) if data else self._inflater.flush()
            except zlib.error as exc:
                raise ValueError(f"the deflated data set does not inflate: {exc}") from None
            self._inflated += len(out)
            if self._inflated > self._limit:
                raise ValueError(f"the deflated data set inflates beyond {_mb(self._limit)}")
            if out:
                self._buffer += out
                return True
            if not data:
                raise ValueError("the deflated data set ends before its end marker")
        return False


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"


class _Walker:
    """Follows every element of one data set; keeps the wanted top-level ones."""

    def __init__(
        self, source: _Source, implicit: bool, little: bool, wanted: frozenset[int]
    ) -> None:
        self.source = source
        self.implicit = implicit
        endian = "<" if little else ">"
        self._implicit = struct.Struct(endian + "HHL")  # also items and delimiters
        self._explicit = struct.Struct(endian + "HH2sH")
        self._length = struct.Struct(endian + "L")
        self._wanted = wanted
        self.found: dict[BaseTag, RawDataElement] = {}
        self.little = little
        self.tag = 0  # the element being read, for the error message

    def walk(self, depth: int = 0) -> None:
        """Elements up to the end of the data set (``depth`` 0) or an Item Delimiter."""
        if depth > _MAX_DEPTH:
            raise ValueError(f"sequences are nested more than {_MAX_DEPTH} deep")
        while not (depth == 0 and self.source.at_end()):
            tag, vr, length = self._element_header()
            self.tag = tag
            if tag == _ITEM_END and depth:
                return
            if tag >> 16 == 0xFFFE:
                raise ValueError(f"unexpected delimiter {_tag_text(tag)} in the data set")
            if length == _UNDEFINED:
                self._items(depth, implicit=self.implicit or vr == b"UN")
            elif depth == 0 and tag in self._wanted:
                if length > MAX_HEADER_VALUE:
                    raise ValueError(
                        f"{_tag_text(tag)} declares {length} bytes; "
                        f"at most {MAX_HEADER_VALUE // 1024} KB is accepted"
                    )
                vr_text = None if vr is None else vr.decode("ascii", "replace")
                if vr_text is not None and vr_text not in _KNOWN_VRS:
                    raise ValueError(f"{_tag_text(tag)} has an unknown VR {vr_text!r}")
                value = self.source.take(length)
                self.found[BaseTag(tag)] = RawDataElement(
                    BaseTag(tag), vr_text, length, value, 0, self.implicit, self.little, True
                )
            else:
                self.source.skip(length)

    def _element_header(self) -> tuple[int, bytes | None, int]:
        """Tag, VR (None in Implicit VR and for items and delimiters) and value length."""
        head = self.source.take(8)
        if self.implicit:
            group, element, length = self._implicit.unpack(head)
            return group << 16 | element, None, length
        group, element, vr, length = self._explicit.unpack(head)
        tag = group << 16 | element
        if group == 0xFFFE:
            return tag, None, self._implicit.unpack(head)[2]
        if vr in _LONG_VRS:
            return tag, vr, self._length.unpack(self.source.take(4))[0]
        if not (vr.isalpha() and vr.isupper()):
            raise ValueError(
                f"element {_tag_text(tag)} has no VR: the data set is not in Explicit VR"
            )
        return tag, vr, length

    def _items(self, depth: int, implicit: bool) -> None:
        """The items of an undefined-length sequence or encapsulated pixel data."""
        saved, self.implicit = self.implicit, implicit
        try:
            while True:
                group, element, length = self._implicit.unpack(self.source.take(8))
                tag = group << 16 | element
                if tag == _SEQUENCE_END:
                    return
                if tag != _ITEM:
                    raise ValueError(f"expected an item, found {_tag_text(tag)}")
                if length == _UNDEFINED:
                    self.walk(depth + 1)
                else:
                    self.source.skip(length)
        finally:
            self.implicit = saved


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@functools.lru_cache(maxsize=8)
def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    """The tags of ``keywords``, and Specific Character Set's."""
    return frozenset({int(Tag(k)) for k in keywords} | {_CHARACTER_SET})


def scan(
    fp: BinaryIO, end: int, transfer_syntax: str, keywords: Sequence[str], limit: int
) -> Dataset:
    """Check that an encoded data set is whole and return the elements named by ``keywords``.

    Every element is walked (values are skipped, not decoded); Specific Character Set is
    always kept so that names decode correctly.

    Parameters
    ----------
    fp
        A binary file positioned at the start of the data set (after any file meta).
    end
        The offset in ``fp`` at which the data set ends (the file's size).
    transfer_syntax
        The transfer syntax UID it is encoded in.
    keywords
        DICOM keywords of the top-level elements wanted.
    limit
        The most bytes a Deflated data set may inflate to.

    Returns
    -------
    pydicom.dataset.Dataset
        Those of the elements that are present, with ``file_meta.TransferSyntaxUID``.

    Raises
    ------
    ValueError
        The data set is not whole (it ends inside an element), is malformed, or does
        not inflate (or inflates beyond ``limit``); the message says which.
    """
    syntax = UID(transfer_syntax)
    source: _Source = _InflatingSource(fp, limit) if syntax.is_deflated else _FileSource(fp, end)
    wanted = _tags(tuple(keywords))
    walker = _Walker(source, syntax.is_implicit_VR, syntax.is_little_endian, wanted)
    try:
        walker.walk()
    except _Truncated:
        raise ValueError(f"data set truncated inside element {_tag_text(walker.tag)}") from None
    ds = Dataset(walker.found)
    charset = convert_encodings(ds.get("SpecificCharacterSet") or default_encoding)
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian, charset)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def scan_file(path: Path, transfer_syntax: str, keywords: Sequence[str], limit: int) -> Dataset:
    """:func:`scan` the data set of a Part 10 file with preamble and File Meta Information.

    Raises :class:`ValueError` also for a file whose File Meta Information is not there.
    """
    with open(path, "rb") as fp:
        head = fp.read(PREAMBLE + _META_GROUP_LENGTH.size)
        if len(head) < PREAMBLE + _META_GROUP_LENGTH.size or head[128:132] != b"DICM":
            raise ValueError("the file has no DICOM preamble")
        group, element, vr, _, length = _META_GROUP_LENGTH.unpack_from(head, PREAMBLE)
        if (group, element, vr) != (0x0002, 0x0000, b"UL"):
            raise ValueError("the file meta has no group length")
        fp.seek(length, 1)
        return scan(fp, path.stat().st_size, transfer_syntax, keywords, limit)
