"""The Huey tasks of the ingest pipeline, registered on a Huey instance at run time."""

from __future__ import annotations

import functools
import logging

from huey import Huey

from appliance.config import Settings
from appliance.transcode.queue import Queue

log = logging.getLogger("neuronova.worker")
INGEST_PRIORITY = 10


def register_tasks(huey: Huey, settings: Settings) -> Queue:
    """Register the pipeline's tasks on ``huey``; the pipeline is built on first use."""
    from appliance.transcode.pipeline import Pipeline

    @functools.cache
    def pipeline() -> Pipeline:
        return Pipeline(settings)

    # Ingest before JPEGs where the storage orders by priority (SQLite; Redis is FIFO).
    first = INGEST_PRIORITY if huey.storage.priority else None

    @huey.task(name="ingest_instance", priority=first)
    def ingest_instance(sop_uid: str, spool_path: str) -> str:
        """Transcode, verify, store and prepare one spooled object (idempotent)."""
        outcome = pipeline().process(sop_uid, spool_path)
        if outcome.retry_in is not None:
            ingest_instance.schedule((sop_uid, spool_path), delay=outcome.retry_in)
        if outcome.images_later:
            write_images(sop_uid, spool_path)
        return outcome.state

    @huey.task(name="write_images")
    def write_images(sop_uid: str, spool_path: str) -> str:
        """Write the rendered and thumbnail JPEGs of a stored instance (idempotent)."""
        outcome = pipeline().write_images(sop_uid, spool_path)
        if outcome.retry_in is not None:
            write_images.schedule((sop_uid, spool_path), delay=outcome.retry_in)
        return outcome.state

    return Queue(huey, ingest_instance, write_images)
