"""The spool: received objects made durable (fsync) before the sender hears Success."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from appliance.durable import fsync_dir, fsync_file, write_atomic
from appliance.uids import is_valid_uid

MIN_FREE_BYTES = 512 * 1024**2
# A file being received (C-STORE, STOW) is written more often than this: twice the
# receiver's idle timeout, and nginx gives up on a silent STOW client sooner.
STALE_PARTIAL = 60.0
# fsyncs begun by sync_soon() at once: one per association that is storing (an fsync
# holds no lock; more associations than this wait for a thread, not for each other).
SYNC_THREADS = 8
log = logging.getLogger("neuronova.spool")


class SpoolFull(Exception):
    """Not enough free disk space to accept more objects."""


class Spool:
    """Durable files, one per received object, named after its SOP Instance UID."""

    def __init__(self, root: Path, min_free: int = MIN_FREE_BYTES, warn_free: int = 0) -> None:
        self.root = root
        self.min_free = min_free
        self.warn_free = warn_free
        self._low = False
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._syncing = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="spool-fsync")

    def free_bytes(self) -> int:
        """Free space on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def write(self, sop_uid: str, data: bytes) -> Path:
        """Write ``data`` (a Part 10 file) durably and return its path.

        Raises :class:`SpoolFull` when the write would leave less than ``min_free``
        bytes, and :class:`ValueError` for an invalid UID. A failed write leaves no file.
        """
        final = self._name(sop_uid, len(data))
        write_atomic(final, data, temp_dir=self.incoming)
        fsync_dir(self.root)
        return final

    def sync_soon(self, received: Path) -> Future[None]:
        """Begin the fsync of a file received into :attr:`incoming`, on a thread of the
        spool's: the receiver checks the object meanwhile (the disk and the CPU work at
        once), then hands the future to :meth:`adopt`."""
        return self._syncing.submit(fsync_file, received)

    def adopt(self, sop_uid: str, received: Path, synced: Future[None] | None = None) -> Path:
        """Make a file received into :attr:`incoming` durable under its spool name.

        The receiver writes each data set there as it arrives (pynetdicom's chunked
        receive), so it is fsynced and renamed, never copied: fsynced here, or by
        ``synced`` (:meth:`sync_soon`), which is waited for before the rename. Raises as
        :meth:`write`, and the fsync's error.
        """
        final = self._name(sop_uid, received.stat().st_size)
        if synced is None:
            fsync_file(received)
        else:
            synced.result()
        os.replace(received, final)
        fsync_dir(self.root)
        return final

    def _name(self, sop_uid: str, size: int) -> Path:
        """A new spool file name for ``sop_uid``, if ``size`` more bytes leave enough room."""
        if not is_valid_uid(sop_uid):
            raise ValueError(f"invalid SOP Instance UID {sop_uid[:80]!r}")
        free = self.free_bytes()
        self._watch(free)
        if free - size < self.min_free:
            raise SpoolFull(f"less than {self.min_free // 1024**2} MiB free in {self.root}")
        return self.root / f"{sop_uid}.{uuid.uuid4().hex[:12]}.dcm"

    def _watch(self, free: int) -> None:
        """Log once each time free space crosses ``warn_free`` (down, and back up)."""
        if (free < self.warn_free) == self._low:
            return
        self._low = not self._low
        if self._low:
            log.warning("disk space low: %d MiB free in %s; new objects are refused below "
                        "%d MiB", free // 1024**2, self.root, self.min_free // 1024**2)  # fmt: skip
        else:
            log.info("disk space back above %d MiB in %s", self.warn_free // 1024**2, self.root)

    @staticmethod
    def sop_of(path: Path) -> str:
        """The SOP Instance UID a spool file is named after (``<uid>.<tag>.dcm``)."""
        return path.name.rsplit(".", 2)[0]

    def files(self) -> list[Path]:
        """Every complete spool file, oldest first."""
        return sorted(self.root.glob("*.dcm"), key=lambda p: p.stat().st_mtime)

    def discard_partial(self, older_than: float = STALE_PARTIAL) -> int:
        """Remove writes that were never acknowledged; return how many.

        A file in :attr:`incoming` not written for ``older_than`` seconds belongs to an
        association or upload that ended mid-object (aborted, timed out, or a crash):
        pynetdicom removes its file only after the C-STORE handler ran. A younger one
        may be an object arriving now (the receiver and the app keep running while a
        worker restarts), so it is left for a later call.
        """
        limit = time.time() - older_than
        partial = [p for p in self.incoming.iterdir() if p.stat().st_mtime <= limit]
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)
