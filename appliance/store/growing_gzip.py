"""A gzipped JSON array that grows by appending items, without compressing again what it
already holds.

The file is one ordinary gzip member (RFC 1952): any reader (nginx's ``gzip_static`` and
``gunzip``, browsers, :func:`gzip.decompress`) sees ``[item,item,...]``. Its deflate
stream (RFC 1951) is cut after the items of each append at a byte boundary (a sync flush:
an empty stored block), and only the closing ``]`` (a final block) and the trailer (CRC-32
and length) come after that cut. Appending keeps the bytes before the cut, compresses
the new items on their own and writes a new closing block and trailer: the cost of an
append is that of its items, not of the file.

The new items are compressed with the last 32 KiB of the text as a preset dictionary
(zlib's ``zdict``), as pigz does for its blocks: a back-reference into text already in
the file is valid where the decoder reads it, so a file grown item by item compresses
about as well as one compressed in one go (the DICOM JSON of a series' instances is
mostly the same from one to the next).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

WINDOW = 32 * 1024  # deflate's window: the most a back-reference can reach
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_CLOSE = b"]"


@dataclass(frozen=True)
class Cut:
    """Where a grown file's appendable part ends, and what the next append needs.

    ``body_end``: bytes of the file before the closing block; ``crc`` and ``length``:
    CRC-32 and length of the text before the closing ``]``; ``window``: its last
    :data:`WINDOW` bytes.
    """

    body_end: int
    crc: int
    length: int
    window: bytes

    def tail(self, level: int) -> bytes:
        """The closing ``]`` as a final deflate block, then the gzip trailer."""
        closing = zlib.compressobj(level, zlib.DEFLATED, -15)
        block = closing.compress(_CLOSE) + closing.flush(zlib.Z_FINISH)
        crc = zlib.crc32(_CLOSE, self.crc)
        return block + struct.pack("<II", crc, (self.length + len(_CLOSE)) & 0xFFFFFFFF)

    def file_size(self, level: int) -> int:
        """The size of the file this cut describes."""
        return self.body_end + len(self.tail(level))


EMPTY = Cut(0, 0, 0, b"")  # a file not written yet


def append(cut: Cut, items: Iterable[bytes], level: int) -> tuple[bytes, Cut]:
    """Compress ``items`` to follow the text ``cut`` ends.

    Returns the bytes to write at ``cut.body_end`` (the gzip header first, for
    :data:`EMPTY`), to be followed by the new cut's :meth:`Cut.tail`.
    """
    joined = b",".join(items)
    opening = b"[" if cut.length == 0 else b""
    separator = b"," if cut.length > 1 and joined else b""  # "[" alone: no item yet
    text = opening + separator + joined
    compressor = _compressor(level, cut.window)
    body = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if cut.body_end == 0:
        body = HEADER + body
    window = (cut.window + text)[-WINDOW:]
    grown = Cut(cut.body_end + len(body), zlib.crc32(text, cut.crc), cut.length + len(text), window)
    return body, grown


def _compressor(level: int, window: bytes) -> zlib._Compress:
    """A raw deflate compressor; with ``window`` as its preset dictionary if any."""
    if window:
        return zlib.compressobj(level, zlib.DEFLATED, -15, zdict=window)
    return zlib.compressobj(level, zlib.DEFLATED, -15)
