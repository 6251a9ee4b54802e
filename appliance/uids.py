"""DICOM UIDs as the appliance accepts them: digits and dots, at most 64 characters.

Every UID that ends up in a file path, an SQL row, an nginx URI or a header passes
:func:`is_valid_uid` first.
"""

from __future__ import annotations

import re

UID_PATTERN = r"[0-9]+(?:\.[0-9]+)*"
MAX_UID_LENGTH = 64
_UID_RE = re.compile(UID_PATTERN)


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a string of digits and dots (no empty parts), 64 at most."""
    return (
        isinstance(value, str) and len(value) <= MAX_UID_LENGTH and bool(_UID_RE.fullmatch(value))
    )
