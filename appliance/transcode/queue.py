"""The task queue: Huey on a SQLite file in the data home, or on Redis (cloud profile)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper
from huey.storage import SqliteStorage

from appliance.config import Settings
from appliance.layout import HomeLayout

QUEUE_NAME = "neuronova"


class QueueStorage(SqliteStorage):
    """SQLite queue storage in WAL mode with ``synchronous=NORMAL``.

    A lost queue entry costs nothing: every object is durable in the spool and the
    journal, and the worker re-queues what is pending at start. So enqueueing need not
    wait for an fsync (FULL costs ~3 ms on the receiver's hot path), while NORMAL still
    keeps the file safe from corruption.
    """

    def _create_connection(self) -> sqlite3.Connection:
        conn = super()._create_connection()
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn


class LocalHuey(SqliteHuey):
    """Huey on :class:`QueueStorage`."""

    storage_class = QueueStorage


@dataclass(frozen=True)
class Queue:
    """The Huey instance and the tasks registered on it."""

    huey: Huey
    ingest: TaskWrapper
    images: TaskWrapper

    def enqueue_ingest(self, sop_uid: str, spool_path: str, delay: float | None = None) -> None:
        """Queue the ingest of one spooled object (after ``delay`` seconds, if given)."""
        if delay:
            self.ingest.schedule((sop_uid, spool_path), delay=delay)
        else:
            self.ingest(sop_uid, spool_path)

    def enqueue_images(self, sop_uid: str, spool_path: str) -> None:
        """Queue the JPEGs of a stored instance (after every queued ingest)."""
        self.images(sop_uid, spool_path)


def create_queue(settings: Settings, *, immediate: bool = False) -> Queue:
    """The queue for ``settings``, with the appliance's tasks registered.

    Parameters
    ----------
    settings
        ``redis_url`` selects Redis; otherwise the queue is ``db/queue.db`` in the home.
    immediate
        Run tasks synchronously when enqueued (unit tests).

    Task return values are not stored (``results=False``): nothing reads them (the
    journal holds every outcome), and Huey would keep one row per task forever.
    """
    if settings.redis_url:
        huey: Huey = RedisHuey(
            QUEUE_NAME, url=settings.redis_url, immediate=immediate, results=False
        )
    else:
        path = HomeLayout(settings.home).queue_file
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = LocalHuey(
            QUEUE_NAME, filename=str(path), immediate=immediate, timeout=30, results=False
        )
    from appliance.transcode.tasks import register_tasks

    return register_tasks(huey, settings)
