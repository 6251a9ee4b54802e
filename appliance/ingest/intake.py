"""Accepting an object into the pipeline: durable spool file, journal row, queued task.

The receiver (C-STORE), STOW-RS and ``neuronova import`` all come through here, so the
same durability and verification apply to each.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import pydicom

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.ingest.header import Received, describe
from appliance.ingest.journal import ALWAYS, Journal, Refusal
from appliance.ingest.spool import Spool

log = logging.getLogger("neuronova.ingest")
SETTLE_SECONDS = 60


class HeldError(ApplianceError):
    """No such held object, or its file is gone."""


class IngestQueue(Protocol):
    """Where accepted objects go on: the task queue (:class:`appliance.jobs.queue.Queue`,
    which the caller builds: the queue sits in a layer above ingest)."""

    def enqueue_ingest(self, sop_uid: str, spool_path: str, delay: float | None = None) -> None:
        """Queue the ingest of one spooled object."""
        ...

    def enqueue_images(self, sop_uid: str, spool_path: str) -> None:
        """Queue the JPEGs of a stored instance."""
        ...

    def enqueue_images_sweep(self) -> None:
        """Queue one task writing the JPEGs every stored instance still lacks."""
        ...


class Ingest:
    """The entry to the pipeline for one data home."""

    def __init__(
        self, settings: Settings, queue: IngestQueue, journal: Journal | None = None
    ) -> None:
        layout = self.layout = settings.layout
        self.spool = Spool(layout.spool_dir, min_free=settings.dicom.min_free_mb * 1024**2,
                           warn_free=settings.dicom.warn_free_bytes)  # fmt: skip
        self.journal = journal or Journal(layout.database_file)
        self.queue = queue

    def accept(
        self, data: bytes, ds: pydicom.Dataset, source: str, policy: str = ALWAYS
    ) -> Refusal | None:
        """Make ``data`` durable, then journal and queue it, or hold it under ``policy``.

        ``ds`` is the parsed header of ``data``. Returns the refusal when the object is
        held (kept for an admin, not queued). Raises :class:`ValueError` for an object
        without its UIDs and :class:`~appliance.ingest.spool.SpoolFull` when the disk is
        nearly full; nothing is kept in either case.
        """
        item = describe(ds)
        path = self.spool.write(item.sop_uid, data)
        return self._journal(ds, item, path, source, len(data), policy)

    def receive(
        self,
        received: Path,
        ds: pydicom.Dataset,
        source: str,
        policy: str,
        synced: Future[None] | None = None,
    ) -> Refusal | None:
        """The receiver's :meth:`accept`: a whole file in the spool's ``incoming/`` is moved
        into the spool (no copy; fsynced first, or by ``synced``, see
        :meth:`Spool.adopt`), then journaled and queued, or held under ``policy``.

        Returns the refusal when the object is held (kept for an admin, not queued).
        """
        item = describe(ds)
        path = self.spool.adopt(item.sop_uid, received, synced)
        return self._journal(ds, item, path, source, path.stat().st_size, policy)

    def _journal(
        self, ds: pydicom.Dataset, item: Received, path: Path, source: str, size: int, policy: str
    ) -> Refusal | None:
        refusal = self.journal.record_received(ds, item, path.name, source, size, policy)
        if refusal is None:
            self.queue.enqueue_ingest(item.sop_uid, path.name)
        return refusal

    def release_held(self, held_id: int) -> Received:
        """Journal and queue a held object as an admin accepted it (whatever the policy).

        Raises :class:`HeldError` when there is no such held object or its file is gone.
        """
        row, path = self._held(held_id)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        item = describe(ds)
        with self.journal.transaction():  # never both journaled and still held
            self.journal.record_received(ds, item, path.name, row["source"], row["size"] or 0)
            self.journal.forget_held(held_id)
        self.queue.enqueue_ingest(item.sop_uid, path.name)
        return item

    def retry_failed(self, sop_uids: list[str] | None = None) -> list[str]:
        """Queue failed objects again: all of them (``None``), or those of ``sop_uids``
        that failed. Their spool files were kept when they failed. Returns the SOP
        Instance UIDs queued."""
        if sop_uids is not None and not sop_uids:
            return []
        again = self.journal.retry_failed(sop_uids)
        for sop_uid, spool_path in again:
            self.queue.enqueue_ingest(sop_uid, spool_path)
        return [sop_uid for sop_uid, _ in again]

    def discard_held(self, held_id: int) -> dict:
        """Delete a held object (its spool file, then its row); returns the row."""
        row, path = self._held(held_id)
        path.unlink()
        self.journal.forget_held(held_id)
        return row

    def _held(self, held_id: int) -> tuple[dict, Path]:
        """A held object's row and its spool file."""
        row = self.journal.held_object(held_id)
        if row is None:
            raise HeldError(f"no held object {held_id} (see `neuronova held list`)")
        path = self.layout.spool_file(row["spool_path"])
        if not path.exists():
            raise HeldError(f"the file of held object {held_id} is gone: {path}")
        return row, path

    def recover(self, reset_claims: bool = True) -> int:
        """After a crash: re-queue every object that is durable but not yet stored.

        Returns how many were queued. Interrupted claims go back to ``received`` (only
        with ``reset_claims``: not while another worker runs, whose claims they may be); spool
        files the journal never heard of (a crash between fsync and journal) are
        journaled now; files of objects already stored are removed. If stored objects
        still lack their JPEGs, one task writes them all, a batch at a time (queueing a
        task per object made a start cost a second per ~5,000 of them).
        """
        self.spool.discard_partial()
        if reset_claims:
            self.journal.reset_interrupted()
        for path in self.spool.files():
            self._adopt(path)
        pending = self.journal.pending()
        for sop_uid, spool_path in pending:
            self.queue.enqueue_ingest(sop_uid, spool_path)
        if pending:
            log.info("re-queued %d object(s) received before the last stop", len(pending))
        if self.journal.images_pending(1):
            self.queue.enqueue_images_sweep()
            log.info("stored objects still lack their JPEGs: queued the task writing them")
        return len(pending)

    def _adopt(self, path: Path) -> None:
        sop_uid = Spool.sop_of(path)
        state = self.journal.spool_file_state(sop_uid, path.name)
        if state == "stored":
            path.unlink(missing_ok=True)
        elif state is None and self.journal.superseded(sop_uid, path.name):
            self._drop_unacknowledged(path)
        elif state is None:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                self.journal.record_received(
                    ds, describe(ds), path.name, "recovered", path.stat().st_size
                )
            except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
                log.error("spool file %s is unreadable (%s); left in place", path.name, exc)

    def _drop_unacknowledged(self, path: Path) -> None:
        """Remove a spool file whose SOP Instance the journal has in another file.

        Either an older copy that a newer one replaced, or a copy whose journal write a
        crash interrupted (so its sender never got Success): the journaled copy is the
        last one acknowledged. Adopting this one instead could let an older copy
        replace a newer one in the archive. Files younger than :data:`SETTLE_SECONDS`
        are left alone: a receiver running beside this recovery may be journaling them.
        """
        if time.time() - path.stat().st_mtime < SETTLE_SECONDS:
            return
        log.info("removed %s from the spool: another copy of it is journaled", path.name)
        path.unlink(missing_ok=True)
