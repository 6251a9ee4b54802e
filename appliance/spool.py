"""The spool: received objects made durable (fsync) before the sender hears Success."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from appliance.durable import fsync_dir, write_atomic
from appliance.uids import is_valid_uid

MIN_FREE_BYTES = 512 * 1024**2


class SpoolFull(Exception):
    """Not enough free disk space to accept more objects."""


class Spool:
    """Durable files, one per received object, named after its SOP Instance UID."""

    def __init__(self, root: Path, min_free: int = MIN_FREE_BYTES) -> None:
        self.root = root
        self.min_free = min_free
        (root / "incoming").mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        """Free space on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def write(self, sop_uid: str, data: bytes) -> Path:
        """Write ``data`` (a Part 10 file) durably and return its path.

        Raises :class:`SpoolFull` when the write would leave less than ``min_free``
        bytes, and :class:`ValueError` for an invalid UID. A failed write leaves no file.
        """
        if not is_valid_uid(sop_uid):
            raise ValueError(f"invalid SOP Instance UID {sop_uid[:80]!r}")
        if self.free_bytes() - len(data) < self.min_free:
            raise SpoolFull(f"less than {self.min_free // 1024**2} MiB free in {self.root}")
        final = self.root / f"{sop_uid}.{uuid.uuid4().hex[:12]}.dcm"
        write_atomic(final, data, temp_dir=self.root / "incoming")
        fsync_dir(self.root)
        return final

    @staticmethod
    def sop_of(path: Path) -> str:
        """The SOP Instance UID a spool file is named after (``<uid>.<tag>.dcm``)."""
        return path.name.rsplit(".", 2)[0]

    def files(self) -> list[Path]:
        """Every complete spool file, oldest first."""
        return sorted(self.root.glob("*.dcm"), key=lambda p: p.stat().st_mtime)

    def discard_partial(self) -> int:
        """Remove writes interrupted by a crash (never acknowledged); return how many."""
        partial = list((self.root / "incoming").iterdir())
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)
