"""A received C-STORE data set, checked to be whole before it is acknowledged, and the few
header elements the journal needs, without decoding the data set.

The receiver runs this for every object while the modality waits for the answer, so it
walks the encoding itself instead of building pydicom elements: every element's tag and
length is read (values are skipped, pixel data is never read), sequences and
encapsulated pixel data are followed item by item, a sequence or item of defined length
must hold exactly its declared bytes, and the walk must end exactly at the end of the
data set (PS3.5 section 7): what this accepts, DCMTK (Orthanc's parser) reads whole.
Only the top-level elements the caller names are kept, and decoded by pydicom. A
Deflated data set (PS3.5 A.5) is inflated as it is walked, a chunk at a time, and
refused once it inflates beyond a limit.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

from appliance.ingest.encoded_source import FileSource, InflatingSource, Source, Truncated

PREAMBLE = 128 + 4  # the preamble and "DICM" (PS3.10 7.1)
_META_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL, Explicit VR Little Endian
# VRs with a reserved field and a 4-byte length in Explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
# Implicit VR tells a sequence only by its tag.
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_CHARACTER_SET = 0x00080005
_MAX_DEPTH = 32
# The header elements kept (UIDs, names, dates, descriptions) are short by definition;
# a larger declared length is refused before its value is read into memory.
MAX_HEADER_VALUE = 64 * 1024
_VR_CODES = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)


def _holds_items(tag: int, vr: bytes | None) -> bool:
    """Whether an element of undefined length is a sequence, as DCMTK reads it: SQ, UN
    (PS3.5 6.2.2), or in Implicit VR a tag the dictionary calls SQ or does not know."""
    if vr is not None:
        return vr in (b"SQ", b"UN")
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return True


class _Walker:
    """Follows every element of one data set; keeps the wanted top-level ones.

    Sequences and items are walked whatever their length: one of defined length must
    hold exactly its declared bytes, and nothing inside it may run past its end (DCMTK
    refuses such an object: "larger than explicit length of surrounding item").
    ``limit`` is the position where the innermost defined-length sequence or item ends
    (None at the top level, where the end of the data set bounds it). The recursion is
    bounded by :data:`_MAX_DEPTH` and every byte is passed once: linear time.
    """

    def __init__(
        self, source: Source, implicit: bool, little: bool, wanted: frozenset[int]
    ) -> None:
        self.source = source
        self._wanted = wanted
        self.found: dict[BaseTag, RawDataElement] = {}
        self.top = 0  # the top-level element being read, for the truncation message
        self.limit: int | None = None
        self._holder = "the data set"
        self._encode(implicit, little)

    def _encode(self, implicit: bool, little: bool) -> None:
        """Read on in this encoding (a UN sequence's items are Implicit VR Little Endian)."""
        self.implicit, self.little = implicit, little
        endian = "<" if little else ">"
        self._implicit = struct.Struct(endian + "HHL")  # also items and delimiters
        self._explicit = struct.Struct(endian + "HH2sH")
        self._length = struct.Struct(endian + "L")
        self._item_tag = struct.pack(endian + "HH", _ITEM >> 16, _ITEM & 0xFFFF)

    def walk(self, depth: int = 0, end: int | None = None) -> None:
        """Elements up to the end of the data set (``depth`` 0), of a defined-length item
        (``end``) or of an undefined-length item (its Item Delimiter)."""
        if depth > _MAX_DEPTH:
            raise ValueError(f"sequences are nested more than {_MAX_DEPTH} deep")
        done = self._done(depth, end)
        while not done():
            tag, vr, length = self._element_header()
            if depth == 0:
                self.top = tag
            if tag == _ITEM_END and depth and end is None:
                self._within(0, tag)
                return
            if tag >> 16 == 0xFFFE:
                raise ValueError(f"unexpected delimiter {_tag_text(tag)} in the data set")
            if length == _UNDEFINED:
                self._undefined_length(tag, vr, depth)
                continue
            if self.limit is not None:  # (the top level's elements save a call)
                self._within(length, tag)
            if vr == b"SQ" or (vr is None and self._implicit_sequence(tag, length)):
                self._bounded(length, _tag_text(tag), self._items, tag, depth, length)
            elif depth == 0 and tag in self._wanted:
                self._keep(tag, vr, length)
            else:
                self.source.skip(length)

    def _done(self, depth: int, end: int | None) -> Callable[[], bool]:
        """Whether the elements of the data set or item are over (an Item Delimiter ends an
        undefined-length item, in :meth:`walk`)."""
        if end is not None:
            return lambda: self.source.position == end
        return self.source.at_end if depth == 0 else lambda: False

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
        if vr not in _VR_CODES:
            raise _bad_vr(tag, vr)
        return tag, vr, length

    def _within(self, length: int, tag: int, item: bool = False) -> None:
        """Refuse ``length`` more bytes (of element ``tag``, or of an item of it) that would
        run past the end of the defined-length sequence or item around them."""
        if self.limit is not None and self.source.position + length > self.limit:
            what = "an item" if item else _tag_text(tag)
            over = self.source.position + length - self.limit
            raise ValueError(f"{what} overruns {self._holder} by {over} bytes")

    def _implicit_sequence(self, tag: int, length: int) -> bool:
        """Implicit VR: a tag the dictionary calls SQ, or a private element whose value
        starts with an item (DCMTK reads the private sequences its dictionary knows)."""
        if tag in _SEQUENCE_TAGS:
            return True
        return bool(tag >> 16 & 1) and length >= 8 and self.source.peek(4) == self._item_tag

    def _bounded(
        self, length: int, holder: str, walk: Callable[..., None], *args: int | None
    ) -> None:
        """``walk(*args)`` over the next ``length`` bytes, none of it past them. (An error
        ends the whole walk, so the bound is restored only on the way out of a good one.)"""
        saved = self.limit, self._holder
        self.limit, self._holder = self.source.position + length, holder
        walk(*args)
        self.limit, self._holder = saved

    def _keep(self, tag: int, vr: bytes | None, length: int) -> None:
        if length > MAX_HEADER_VALUE:
            raise ValueError(
                f"{_tag_text(tag)} declares {length} bytes; "
                f"at most {MAX_HEADER_VALUE // 1024} KB is accepted"
            )
        vr_text = None if vr is None else vr.decode("ascii")
        self.found[BaseTag(tag)] = RawDataElement(
            BaseTag(tag), vr_text, length, self.source.take(length), 0, self.implicit,
            self.little, True,
        )  # fmt: skip

    def _undefined_length(self, tag: int, vr: bytes | None, depth: int) -> None:
        """Encapsulated Pixel Data, or a sequence (UN: in Implicit VR Little Endian)."""
        self._within(0, tag)
        if tag == _PIXEL_DATA and vr in (None, b"OB", b"OW"):
            self._fragments()
        elif _holds_items(tag, vr):
            saved = self.implicit, self.little
            if vr == b"UN":
                self._encode(True, True)
            self._items(tag, depth, None)
            self._encode(*saved)
        else:
            raise ValueError(f"{_tag_text(tag)} has an undefined length and is no sequence")

    def _item_header(self) -> tuple[int, int]:
        group, element, length = self._implicit.unpack(self.source.take(8))
        return group << 16 | element, length

    def _items(self, tag: int, depth: int, length: int | None) -> None:
        """The items of a sequence: ``length`` bytes of them, or up to its delimiter."""
        end = None if length is None else self.source.position + length
        while end is None or self.source.position < end:
            item, size = self._item_header()
            self._within(0 if size == _UNDEFINED else size, tag, item=True)
            if item == _SEQUENCE_END and end is None:
                return
            if item != _ITEM:
                raise ValueError(f"expected an item in {_tag_text(tag)}, found {_tag_text(item)}")
            if size == _UNDEFINED:
                self.walk(depth + 1)
            else:
                self._bounded(size, "its item", self.walk, depth + 1, self.source.position + size)

    def _fragments(self) -> None:
        """Encapsulated Pixel Data: items of defined length up to the Sequence Delimiter."""
        while True:
            item, size = self._item_header()
            self._within(0 if size == _UNDEFINED else size, _PIXEL_DATA)
            if item == _SEQUENCE_END:
                return
            if item != _ITEM:
                raise ValueError(f"expected a fragment in (7FE0,0010), found {_tag_text(item)}")
            if size == _UNDEFINED:
                raise ValueError("a fragment of (7FE0,0010) has an undefined length")
            self.source.skip(size)


def _bad_vr(tag: int, vr: bytes) -> ValueError:
    """Not a VR (DCMTK reads an unknown one of two capitals with a 4-byte length)."""
    if vr.isalpha() and vr.isupper():
        return ValueError(f"{_tag_text(tag)} has an unknown VR {vr.decode('ascii')!r}")
    return ValueError(f"element {_tag_text(tag)} has no VR: the data set is not in Explicit VR")


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
    source: Source = InflatingSource(fp, limit) if syntax.is_deflated else FileSource(fp, end)
    wanted = _tags(tuple(keywords))
    walker = _Walker(source, syntax.is_implicit_VR, syntax.is_little_endian, wanted)
    try:
        walker.walk()
    except Truncated:
        raise ValueError(f"data set truncated inside element {_tag_text(walker.top)}") from None
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
