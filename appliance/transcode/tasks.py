"""The transcoding tasks: ingest one spooled object, and write its JPEGs later.

Declared here, beside the code they run (:class:`~appliance.transcode.pipeline.Pipeline`);
:mod:`appliance.jobs.queue` registers them with every other task, and only the queue
worker gives them the pipeline. This module loads neither the codec nor the pipeline, so
the processes that only enqueue (the receiver, the web app) stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from huey import Huey
from huey.api import TaskWrapper

from appliance.ingest.journal import STORED

INGEST_PRIORITY = 10
SWEEP_BATCH = 50  # instances' JPEGs per write_pending_images run (then ingests go first)


class IngestOutcome(Protocol):
    """What an ingest or JPEG step reports: its state, when to run again (None: do not),
    whether the object's JPEGs are still to be written, and for a sweep whether more
    instances may still lack theirs."""

    state: str
    retry_in: float | None
    images_later: bool
    more_left: bool


class IngestWork(Protocol):
    """The work behind the transcoding tasks (the pipeline, in the worker)."""

    def process(self, sop_uid: str, spool_path: str) -> IngestOutcome:
        """Transcode, verify, store and prepare one spooled object."""
        ...

    def write_images(self, sop_uid: str, spool_path: str) -> IngestOutcome:
        """Write the rendered and thumbnail JPEGs of a stored instance."""
        ...

    def write_pending_images(self, limit: int) -> IngestOutcome:
        """Write the JPEGs of up to ``limit`` stored instances that lack them."""
        ...


@dataclass(frozen=True)
class IngestTasks:
    """The transcoding tasks as registered on one Huey."""

    ingest: TaskWrapper
    images: TaskWrapper
    images_sweep: TaskWrapper


def register_ingest_tasks(
    huey: Huey, work: Callable[[], IngestWork], stored: Callable[[str], None]
) -> IngestTasks:
    """Register ``ingest_instance``, ``write_images`` and ``write_pending_images`` on ``huey``.

    ``work()`` does what they ask; ``stored(sop_uid)`` runs after each object stored, for
    the steps of other domains that follow (the FHIR push queues itself there).
    """
    # Ingest before JPEGs where the storage orders by priority (SQLite; Redis is FIFO).
    first = INGEST_PRIORITY if huey.storage.priority else None

    @huey.task(name="ingest_instance", priority=first)
    def ingest_instance(sop_uid: str, spool_path: str) -> str:
        """Transcode, verify, store and prepare one spooled object (idempotent)."""
        outcome = work().process(sop_uid, spool_path)
        if outcome.retry_in is not None:
            ingest_instance.schedule((sop_uid, spool_path), delay=outcome.retry_in)
        if outcome.images_later:
            write_images(sop_uid, spool_path)
        if outcome.state == STORED:
            stored(sop_uid)
        return outcome.state

    @huey.task(name="write_images")
    def write_images(sop_uid: str, spool_path: str) -> str:
        """Write the rendered and thumbnail JPEGs of a stored instance (idempotent)."""
        outcome = work().write_images(sop_uid, spool_path)
        if outcome.retry_in is not None:
            write_images.schedule((sop_uid, spool_path), delay=outcome.retry_in)
        return outcome.state

    @huey.task(name="write_pending_images")
    def write_pending_images() -> str:
        """Write the JPEGs every stored instance still lacks, :data:`SWEEP_BATCH` per run,
        behind queued ingests: queued once at start instead of a task per instance
        (:meth:`appliance.ingest.intake.Ingest.recover`), so a start costs the same
        whatever the backlog, and the tasks a queue kept are not queued twice."""
        outcome = work().write_pending_images(SWEEP_BATCH)
        if outcome.more_left:  # queued again, behind queued ingests
            write_pending_images()
        elif outcome.retry_in is not None:
            write_pending_images.schedule(delay=outcome.retry_in)
        return outcome.state

    return IngestTasks(ingest_instance, write_images, write_pending_images)
