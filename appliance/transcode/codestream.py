"""Whether an HTJ2K codestream may be labelled HTJ2K with RPCL Options (``.4.202``).

PS3.5 section 10.18 asks three things of a ``1.2.840.10008.1.2.4.202`` codestream, so that
a client can fetch its first bytes and decode the image at a reduced resolution: RPCL
progression order, TLM marker segments (the tile-part lengths up front), and enough
wavelet decomposition levels that the lowest resolution is at most 64 pixels on either
side. :func:`rpcl_problem` checks them with one linear walk over the marker segments of
the main header and of every tile-part header (found through each SOT's length), never
reading the coded data: microseconds for a CT slice.
"""

from __future__ import annotations

import struct

RPCL_SYNTAX = "1.2.840.10008.1.2.4.202"
MAX_LOWEST_RESOLUTION = 64  # pixels, either side (PS3.5 10.18)
_RPCL = 2  # progression order byte of COD (ISO/IEC 15444-1 Table A.16)
_SOC, _SOT, _SOD, _EOC = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9
_SIZ, _COD, _COC, _TLM, _POC = 0xFF51, 0xFF52, 0xFF53, 0xFF55, 0xFF5F


class _Walk:
    """What the marker segments say, gathered header by header."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None  # (width, height) of the image
        self.components = 0
        self.orders: set[int] = set()
        self.levels: set[int] = set()
        self.tlm = False
        self.poc = False
        self.colour_transform = False

    def segment(self, marker: int, body: bytes) -> None:
        """Record one marker segment (``body`` follows its length field)."""
        if marker == _SIZ:
            x, y, x0, y0 = struct.unpack_from(">4I", body, 2)
            self.size = (x - x0, y - y0)
            self.components = struct.unpack_from(">H", body, 34)[0]
        elif marker == _COD:
            self.orders.add(body[1])
            self.colour_transform |= body[4] == 1
            self.levels.add(body[5])
        elif marker == _COC:
            self.levels.add(body[2 if self.components < 257 else 3])
        elif marker == _TLM:
            self.tlm = True
        elif marker == _POC:
            self.poc = True

    def problem(self) -> str | None:
        """The first condition of PS3.5 10.18 that the codestream fails, or None."""
        if self.size is None or not self.levels:
            return "no SIZ or COD marker segment"
        if self.orders != {_RPCL} or self.poc:
            return "progression order is not RPCL throughout"
        if not self.tlm:
            return "no TLM marker segment"
        levels = min(self.levels)
        lowest = max(-(-side // 2**levels) for side in self.size)
        if lowest > MAX_LOWEST_RESOLUTION:
            return f"{levels} decomposition levels leave a lowest resolution of {lowest} pixels"
        return None


def rpcl_problem(codestream: bytes) -> str | None:
    """Why ``codestream`` does not meet PS3.5 10.18's conditions for ``.4.202``, or None.

    Parameters
    ----------
    codestream
        A JPEG 2000 / HTJ2K codestream (no JP2 box wrapper).

    Returns
    -------
    str or None
        A short reason (bad or truncated structure, order, no TLM, too few decomposition
        levels), or None when the codestream qualifies.
    """
    try:
        return _walk(codestream).problem()
    except ValueError as exc:
        return str(exc)


def colour_transform(codestream: bytes) -> bool:
    """Whether the codestream's COD asks for the multiple component (colour) transform.

    Raises
    ------
    ValueError
        The marker segments are malformed or truncated.
    """
    return _walk(codestream).colour_transform


def _walk(codestream: bytes) -> _Walk:
    """The marker segments of every header of ``codestream``; ValueError with a short
    reason when they are malformed."""
    walk = _Walk()
    try:
        if struct.unpack_from(">H", codestream)[0] != _SOC:
            raise ValueError("does not start with SOC")
        pos = _header(codestream, 2, walk)
        while (marker := struct.unpack_from(">H", codestream, pos)[0]) == _SOT:
            length = struct.unpack_from(">I", codestream, pos + 6)[0]
            _header(codestream, pos + 12, walk)
            if length == 0:  # the last tile-part runs to EOC
                break
            pos += length
        else:
            if marker != _EOC:
                raise ValueError(f"marker 0x{marker:04X} where a tile-part or EOC should be")
    except (struct.error, IndexError):
        raise ValueError("truncated or malformed marker segments") from None
    return walk


def _header(codestream: bytes, pos: int, walk: _Walk) -> int:
    """Walk the marker segments from ``pos`` up to SOT (main header) or SOD (tile-part
    header); returns the position of that marker."""
    while True:
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker in (_SOT, _SOD):
            return pos
        if marker >> 8 != 0xFF or length < 2:
            raise struct.error(f"not a marker segment at {pos}")
        body = codestream[pos + 4 : pos + 2 + length]
        if len(body) != length - 2:
            raise struct.error("segment runs past the end")
        walk.segment(marker, body)
        pos += 2 + length


def decomposition_levels(rows: int, columns: int) -> int:
    """Wavelet decomposition levels for a ``rows`` x ``columns`` image: OpenJPH's default
    of 5, or more when that would leave a lowest resolution over 64 pixels (e.g. 6 for a
    4096-pixel mammogram), so that every codestream meets PS3.5 10.18."""
    levels = 5
    while -(-max(rows, columns) // 2**levels) > MAX_LOWEST_RESOLUTION:
        levels += 1
    return levels
