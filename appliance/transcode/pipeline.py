"""One object's way from the spool to Orthanc: decode, HTJ2K-encode, verify, store,
prepare the frame files nginx serves, remove the spool file.

Every step is idempotent: the journal's claim lets one worker at a time handle a given
spool file, Orthanc overwrites an instance stored twice, frame files are replaced
atomically. A transient failure (Orthanc down) is retried with backoff; a permanent one
is recorded with its reason and kept for ``neuronova ingest retry``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from appliance import metrics
from appliance.config import Settings
from appliance.db import now_iso
from appliance.ingest.journal import FAILED, STORED, Journal, stored_in_series
from appliance.layout import spool_name
from appliance.store import series_metadata
from appliance.store.orthanc import (
    METADATA_ORIGIN,
    OrthancRejected,
    OrthancStore,
    OrthancUnavailable,
)
from appliance.transcode.codec import (
    HTJ2K_ENCODE_OPTIONS,
    TranscodeError,
    TranscodeResult,
    dataset_to_bytes,
    transcode_to_htj2k,
)
from appliance.transcode.frames import write_images, write_instance_files

log = logging.getLogger("neuronova.worker")
MAX_ATTEMPTS = 12
BACKOFF_CAP = 120.0
IMAGES_RETRY = 30.0
# A preview (JPEG) task that finds an object being ingested waits this long: on 2 cores
# its CPU would be taken from the transcoding that makes objects viewable.
IMAGES_AFTER_INGEST = 1.0


@dataclass(frozen=True)
class Outcome:
    """What happened: ``state``; for a transient failure, when to try again; whether the
    rendered and thumbnail JPEGs are still to be written (:meth:`Pipeline.write_images`);
    for a sweep (:meth:`Pipeline.write_pending_images`), whether it wrote a full batch, so
    that more may be left."""

    state: str
    retry_in: float | None = None
    images_later: bool = False
    more_left: bool = False


class Pipeline:
    """The ingest steps for one data home."""

    def __init__(self, settings: Settings, journal: Journal | None = None) -> None:
        self.layout = layout = settings.layout
        self.journal = journal or Journal(layout.database_file)
        self.frames_root = layout.frames_dir
        self.orthanc = OrthancStore(settings)
        self._ingesting = _Count()

    def process(self, sop_uid: str, spool_path: str) -> Outcome:
        """Run every step for one spool file; safe to call twice for the same file.

        ``spool_path`` is the file's name in the spool folder, or its absolute path in a
        task queued before migration 5, maybe in the home's earlier place
        (:func:`~appliance.layout.spool_name`)."""
        with self._ingesting:
            return self._process(sop_uid, spool_name(spool_path))

    def _process(self, sop_uid: str, spool_path: str) -> Outcome:
        if not self.journal.claim(sop_uid, spool_path):
            if self.journal.superseded(sop_uid, spool_path):
                self.layout.spool_file(spool_path).unlink(missing_ok=True)  # a newer copy won
            return Outcome("skipped")
        started = time.perf_counter()
        try:
            outcome = self._process_claimed(sop_uid, spool_path)
        except Exception as exc:  # a bug must leave a visible failure, not a stuck object
            log.exception("%s: unexpected error", sop_uid)
            self.journal.fail(sop_uid, spool_path, f"unexpected error: {exc!r}")
            return Outcome(FAILED)
        if outcome.state == STORED:  # the transcode time histogram of /api/metrics
            took = metrics.observation(
                "transcode_seconds", time.perf_counter() - started, metrics.TRANSCODE_BUCKETS
            )
            with self.journal.transaction() as db:
                metrics.add(db, took)
        return outcome

    def _process_claimed(self, sop_uid: str, spool_path: str) -> Outcome:
        try:
            data = self.layout.spool_file(spool_path).read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data))
        except (OSError, InvalidDicomError, ValueError) as exc:
            self.journal.fail(sop_uid, spool_path, f"cannot read the spooled object: {exc}")
            return Outcome(FAILED)
        result = _transcode(ds)
        payload = _stored_bytes(ds, result) if result.transcoded else data
        images_now = not result.transcoded or self.journal.first_of_series(
            sop_uid, str(ds.SeriesInstanceUID)
        )
        try:
            self._prepare_frames(result, images_now)
            self.orthanc.store(payload)
        except OrthancUnavailable as exc:
            return self._retry(sop_uid, spool_path, str(exc))
        except (OrthancRejected, ValueError, OSError) as exc:
            log.error("%s failed permanently: %s", sop_uid, exc)
            self.journal.fail(sop_uid, spool_path, str(exc))
            return Outcome(FAILED)
        self._finish(sop_uid, spool_path, result, len(payload), images_now)
        self._prepare_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop_uid)
        return Outcome(STORED, images_later=bool(result.frames) and not images_now)

    def _prepare_metadata(self, study: str, series: str, sop_uid: str) -> None:
        """Rebuild the series' metadata file with this stored instance's metadata, as
        Orthanc answers it (:mod:`appliance.store.series_metadata`). If Orthanc does not
        answer or the file cannot be written, the series file is removed and Orthanc
        answers for the series; the instance stays stored either way."""
        try:
            series_metadata.update_series(
                self.frames_root, study, series, sop_uid,
                self._instance_metadata(study, series, sop_uid), self._stored_sops(series),
            )  # fmt: skip
        except OSError as exc:
            log.error("%s: series metadata left to Orthanc: %s", sop_uid, exc)
            with contextlib.suppress(OSError):
                Path(self.frames_root, study, series, series_metadata.FILE_NAME).unlink()

    def prepare_series_metadata(self, study: str, series: str) -> bool:
        """Prepare the metadata file of a series stored before the worker did it at ingest
        (``neuronova frames metadata``); whether the series now has one."""
        return series_metadata.prepare_series(
            self.frames_root, study, series,
            lambda sop: self._instance_metadata(study, series, sop), self._stored_sops(series),
        )  # fmt: skip

    def _instance_metadata(self, study: str, series: str, sop_uid: str) -> bytes | None:
        """One instance's DICOM JSON as Orthanc gives it; None (logged) if it does not."""
        try:
            answer = self.orthanc.instance_metadata(study, series, sop_uid)
            return series_metadata.instance_json(answer, METADATA_ORIGIN)
        except (OrthancUnavailable, OrthancRejected, ValueError) as exc:
            log.warning("%s: series metadata left to Orthanc: %s", sop_uid, exc)
            return None

    def _stored_sops(self, series: str) -> Callable[[], set[str]]:
        """What the journal holds as stored in the series, read when called."""
        return lambda: self.journal.read(lambda db: stored_in_series(db, series))

    def _prepare_frames(self, result: TranscodeResult, images: bool) -> None:
        """Frame files always; the JPEGs too when ``images``.

        The rendered and thumbnail JPEGs of an HTJ2K instance are written with its frames
        only for the first instance of its series (the series' and study's picture, shown
        as soon as the series is viewable) and for objects kept as received. For the
        others they come from a lower-priority task once the instance is stored
        (:meth:`write_images`): OHIF needs only the frames, and the JPEGs were a quarter
        of the worker's CPU per CT slice (render 2.3 ms, JPEG 1.4 ms, thumbnail 0.9 ms,
        two durable writes), time that kept every later slice from being viewable.
        """
        if result.frames:
            write_instance_files(
                self.frames_root,
                result.dataset,
                result.frames,
                result.transfer_syntax,
                result.pixels,
                images=images,
            )

    def write_images(self, sop_uid: str, spool_path: str) -> Outcome:
        """Write the JPEGs of a stored HTJ2K instance from its copy in Orthanc (idempotent).

        The journal's ``images_at`` records it, so :meth:`Ingest.recover` queues again
        what a crash interrupted; a newer copy of the instance makes this a no-op. While
        this worker ingests an object, it is done :data:`IMAGES_AFTER_INGEST` seconds
        later instead (ingest tasks come first in the queue, and this keeps a preview
        started between two of them from taking their CPU).
        """
        if self._ingesting.value:
            return Outcome("later", retry_in=IMAGES_AFTER_INGEST)
        spool_path = spool_name(spool_path)  # as in process()
        if not self.journal.images_pending_for(sop_uid, spool_path):
            return Outcome("skipped")
        try:
            data = self.orthanc.fetch(sop_uid, self.journal.orthanc_keys(sop_uid))
        except OrthancUnavailable as exc:
            log.warning("%s: JPEGs postponed: %s", sop_uid, exc)
            return Outcome("retry", retry_in=IMAGES_RETRY)
        except OrthancRejected as exc:
            log.error("%s: JPEGs not written: %s", sop_uid, exc)
            data = None
        if data is not None:
            ds = pydicom.dcmread(io.BytesIO(data))
            write_images(self.frames_root, ds, str(ds.file_meta.TransferSyntaxUID))
        self.journal.images_written(sop_uid, spool_path)
        return Outcome(STORED)

    def write_pending_images(self, limit: int) -> Outcome:
        """Write the JPEGs of up to ``limit`` stored instances that lack them.

        ``more_left`` when the batch was full (at worst, one more run finds nothing);
        ``retry_in`` when an ingest took the turn or Orthanc is away.
        """
        batch = self.journal.images_pending(limit)
        for sop_uid, spool_path in batch:
            written = self.write_images(sop_uid, spool_path)
            if written.retry_in is not None:
                return Outcome("later", retry_in=written.retry_in)
        full = len(batch) == limit
        return Outcome("more" if full else STORED, more_left=full)

    def _retry(self, sop_uid: str, spool_path: str, error: str) -> Outcome:
        """Try again later with backoff. After :data:`MAX_ATTEMPTS` the object fails, but
        only while Orthanc answers (the failure is this object's): through an outage
        every object waits, retried every :data:`BACKOFF_CAP` seconds, and goes on
        by itself once Orthanc is back (no `ingest retry` for a whole morning's work)."""
        attempts = self.journal.release(sop_uid, spool_path, error)
        if attempts >= MAX_ATTEMPTS and self.orthanc.answers():
            self.journal.fail(sop_uid, spool_path, f"gave up after {attempts} attempts: {error}")
            return Outcome(FAILED)
        delay = min(2.0**attempts, BACKOFF_CAP)
        log.warning("%s: %s; retrying in %.0f s (attempt %d)", sop_uid, error, delay, attempts)
        return Outcome("retry", retry_in=delay)

    def _finish(
        self, sop_uid: str, spool_path: str, result: TranscodeResult, size: int, images: bool
    ) -> None:
        self.journal.stored(
            sop_uid,
            spool_path,
            ts_out=result.transfer_syntax,
            action="transcoded" if result.transcoded else "kept",
            reason=result.reason,
            size_out=size,
            frames=len(result.frames),
            images_at=now_iso() if images else None,
        )
        self.layout.spool_file(spool_path).unlink(missing_ok=True)


class _Count:
    """How many threads are inside a ``with`` block of it now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def __enter__(self) -> None:
        with self._lock:
            self.value += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.value -= 1


def _stored_bytes(source: pydicom.Dataset, result: TranscodeResult) -> bytes:
    """The Part 10 file of a transcoded dataset.

    The HTJ2K dataset shares the received elements it did not replace. When they were
    read as Explicit VR Little Endian (the stored syntax's encoding) they are declared
    so, and pydicom writes their received bytes as they are; otherwise (a new dataset
    has no original encoding) it decodes and re-encodes every element: 5.4 ms of the
    worker's 23 ms per CT slice, against about 1 ms this way.
    """
    out = result.dataset
    if source.original_encoding == (False, True) and out is not source:
        out.set_original_encoding(False, True, source.original_character_set)
    return dataset_to_bytes(out)


def warm_up_codec() -> None:
    """Encode and decode a small grey and colour image with OpenJPH, on this thread only.

    Call it before worker threads transcode. OpenJPH (inside imagecodecs) fills global
    tables on first use without a lock: in 4 of 80 fresh processes whose first HTJ2K
    encodes and decodes ran at the same moment on different threads, the encoder wrote
    corrupt codestreams. The round-trip check caught every one (the object was kept as
    received), but the series was then not all HTJ2K. After this warm-up: 0 of 80.
    """
    pixels = np.random.default_rng(0).integers(0, 4096, (16, 16, 3), dtype=np.uint16)
    for image, rgb in ((pixels[..., 0], False), (pixels.astype(np.uint8), True)):
        codestream = imagecodecs.htj2k_encode(image, rgb=rgb, **HTJ2K_ENCODE_OPTIONS)
        if not np.array_equal(imagecodecs.htj2k_decode(codestream, planar=False), image):
            raise RuntimeError("the HTJ2K codec does not round-trip a test image")


def _transcode(ds: pydicom.Dataset) -> TranscodeResult:
    """HTJ2K if possible; otherwise the object as received, with the reason."""
    try:
        return transcode_to_htj2k(ds)
    except Exception as exc:  # a codec failure must not lose the object: keep it as received
        if isinstance(exc, TranscodeError):
            log.warning("keeping %s as received: %s", ds.get("SOPInstanceUID", "?"), exc)
        else:
            log.exception("unexpected transcoding error")
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        return TranscodeResult(ds, False, f"transcoding failed: {exc}", syntax, [])
