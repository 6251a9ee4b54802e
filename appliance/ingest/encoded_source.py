"""The bytes of an encoded data set, read forwards: from a file (values seeked over) or
inflated from a Deflated one (PS3.5 A.5) a chunk at a time, up to a limit. Used by
:mod:`appliance.ingest.part10`'s walk."""

from __future__ import annotations

import zlib
from typing import BinaryIO, Protocol

_CHUNK = 256 * 1024


class Truncated(Exception):
    """The data set ends inside an element."""


class Source(Protocol):
    """The encoded data set, read forwards; ``position`` counts the bytes passed so far."""

    position: int

    def take(self, size: int) -> bytes:
        """Exactly ``size`` bytes; :class:`Truncated` when fewer remain."""

    def skip(self, size: int) -> None:
        """Pass over ``size`` bytes; :class:`Truncated` when fewer remain."""

    def at_end(self) -> bool:
        """Whether every byte was read."""

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read."""


class FileSource:
    """A data set in a file, from the current position to ``end``; values are seeked over."""

    def __init__(self, fp: BinaryIO, end: int) -> None:
        self._fp = fp
        self._left = end - fp.tell()
        self.position = 0

    def take(self, size: int) -> bytes:
        self._use(size)
        return self._fp.read(size)

    def skip(self, size: int) -> None:
        self._use(size)
        self._fp.seek(size, 1)

    def at_end(self) -> bool:
        return self._left == 0

    def peek(self, size: int) -> bytes:
        data = self._fp.read(min(size, self._left))
        self._fp.seek(-len(data), 1)
        return data

    def _use(self, size: int) -> None:
        if size > self._left:
            raise Truncated
        self._left -= size
        self.position += size


class InflatingSource:
    """A Deflated data set, inflated a chunk at a time; at most ``limit`` bytes in all.

    Reads move an offset through the inflated chunk (no copy of what is left of it), so
    many small reads cost what one large one does.
    """

    def __init__(self, fp: BinaryIO, limit: int) -> None:
        self._fp = fp
        self._limit = limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = b""
        self._offset = 0
        self._inflated = 0
        self.position = 0

    def take(self, size: int) -> bytes:
        while len(self._buffer) - self._offset < size:
            if not self._inflate():
                raise Truncated
        data = self._buffer[self._offset : self._offset + size]
        self._offset += size
        self.position += size
        return data

    def skip(self, size: int) -> None:
        self.position += size
        while size > len(self._buffer) - self._offset:
            size -= len(self._buffer) - self._offset
            self._buffer, self._offset = b"", 0
            if not self._inflate():
                raise Truncated
        self._offset += size

    def at_end(self) -> bool:
        return self._offset == len(self._buffer) and not self._inflate()

    def peek(self, size: int) -> bytes:
        while len(self._buffer) - self._offset < size and self._inflate():
            pass
        return self._buffer[self._offset : self._offset + size]

    def _inflate(self) -> bool:
        """Inflate the next chunk onto what is left of the buffer; False at the end."""
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
                self._buffer, self._offset = self._buffer[self._offset :] + out, 0
                return True
            if not data:
                raise ValueError("the deflated data set ends before its end marker")
        return False


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"
