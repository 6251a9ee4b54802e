"""The task queue: Huey on a SQLite file in the data home, or on Redis (cloud profile),
and the one list of the appliance's tasks.

Every process that enqueues (receiver, web app, CLI) and the worker that runs the tasks
build the same queue with :func:`create_queue`. Each domain declares its tasks beside the
code they run (``transcode.tasks``, ``fhir.tasks``, ``lifecycle.tasks``, ``backup.tasks``);
:func:`register_tasks` registers them all. Only the worker passes the :class:`Work` behind
them (:func:`appliance.jobs.work.worker_work`), so enqueueing never loads the codec or FHIR.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NoReturn

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper
from huey.storage import SqliteStorage

from appliance.backup.tasks import register_backup_task
from appliance.config import Settings
from appliance.fhir.tasks import PushWork, register_push_tasks
from appliance.jobs.known_tasks import KnownTasksOnly
from appliance.jobs.wakeup import Wakeup
from appliance.lifecycle.tasks import register_retention_task, register_study_details_task
from appliance.transcode.tasks import IngestWork, register_ingest_tasks

QUEUE_NAME = "neuronova"


class EnqueueOnly(RuntimeError):
    """A task ran in a process that only enqueues (no work was given to the queue)."""


class QueueStorage(SqliteStorage):
    """SQLite queue storage in WAL mode with ``synchronous=NORMAL``, whose dequeue waits
    to be woken (:mod:`appliance.jobs.wakeup`) when the queue is empty.

    A lost queue entry costs nothing: every object is durable in the spool and the
    journal, and the worker re-queues what is pending at start. So enqueueing need not
    wait for an fsync (FULL costs ~3 ms on the receiver's hot path), while NORMAL still
    keeps the file safe from corruption.

    Huey's consumer does not sleep between dequeues of a ``blocking`` storage: as with
    its Redis and Postgres storages, :meth:`dequeue` waits (up to :attr:`read_timeout`
    seconds) for a task to be queued.
    """

    blocking = True
    read_timeout = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.wakeup = Wakeup(self.filename)

    def _create_connection(self) -> sqlite3.Connection:
        conn = super()._create_connection()
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        """Queue ``data``, then wake the worker."""
        super().enqueue(data, priority)
        self.wakeup.notify()

    def dequeue(self) -> bytes | None:
        """The next task; when there is none, the next one queued within
        :attr:`read_timeout` seconds, else None (also when woken for nothing)."""
        self.wakeup.listen()
        data = super().dequeue()
        if data is None and self.wakeup.wait(self.read_timeout):
            data = super().dequeue()
        return data

    def close(self) -> None:
        """Close the database connection and the wake-up sockets."""
        self.wakeup.close()
        super().close()


class LocalHuey(KnownTasksOnly, SqliteHuey):
    """Huey on :class:`QueueStorage`."""

    storage_class = QueueStorage


class ServerHuey(KnownTasksOnly, RedisHuey):
    """Huey on Redis (the cloud profile's queue)."""


@dataclass(frozen=True)
class Work:
    """Builds the work behind each domain's tasks; each is called on every task run (the
    worker's are cached, :mod:`appliance.jobs.work`)."""

    pipeline: Callable[[], IngestWork]
    pusher: Callable[[], PushWork]
    apply_retention: Callable[[], int]
    daily_backup: Callable[[], bool | None]
    study_details: Callable[[], int]


def _enqueue_only() -> NoReturn:
    raise EnqueueOnly("this process only enqueues; tasks run in the queue worker")


ENQUEUE_ONLY = Work(_enqueue_only, _enqueue_only, _enqueue_only, _enqueue_only, _enqueue_only)


@dataclass(frozen=True)
class Queue:
    """The Huey instance and the tasks registered on it."""

    huey: Huey
    ingest: TaskWrapper
    images: TaskWrapper
    images_sweep: TaskWrapper
    retention: TaskWrapper
    backup: TaskWrapper
    push: TaskWrapper
    push_sweep: TaskWrapper
    study_details: TaskWrapper

    def enqueue_ingest(self, sop_uid: str, spool_path: str, delay: float | None = None) -> None:
        """Queue the ingest of one spooled object (after ``delay`` seconds, if given)."""
        if delay:
            self.ingest.schedule((sop_uid, spool_path), delay=delay)
        else:
            self.ingest(sop_uid, spool_path)

    def enqueue_images(self, sop_uid: str, spool_path: str) -> None:
        """Queue the JPEGs of a stored instance (after every queued ingest)."""
        self.images(sop_uid, spool_path)

    def enqueue_images_sweep(self) -> None:
        """Queue the task writing the JPEGs every stored instance still lacks."""
        self.images_sweep()

    def tasks(self) -> list[TaskWrapper]:
        """Every task registered on the queue, in the order of the fields above."""
        found = (getattr(self, f.name) for f in fields(self))
        return [task for task in found if isinstance(task, TaskWrapper)]


def create_queue(
    settings: Settings, *, work: Work = ENQUEUE_ONLY, immediate: bool = False
) -> Queue:
    """The queue for ``settings``, with the appliance's tasks registered.

    Parameters
    ----------
    settings
        ``redis_url`` selects Redis; otherwise the queue is ``db/queue.db`` in the home.
    work
        The work behind the tasks (the worker passes its own). Without it the queue only
        enqueues: a task run here raises :class:`EnqueueOnly`.
    immediate
        Run tasks synchronously when enqueued (unit tests).

    Task return values are not stored (``results=False``): nothing reads them (the
    journal holds every outcome), and Huey would keep one row per task forever.
    """
    if settings.queue.redis_url:
        huey: Huey = ServerHuey(
            QUEUE_NAME, url=settings.queue.redis_url, immediate=immediate, results=False
        )
    else:
        path = settings.layout.queue_file
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = LocalHuey(
            QUEUE_NAME, filename=str(path), immediate=immediate, timeout=30, results=False
        )
    return register_tasks(huey, settings, work)


def register_tasks(huey: Huey, settings: Settings, work: Work) -> Queue:
    """The one list of the appliance's tasks, each registered by its own domain on ``huey``."""
    push = register_push_tasks(huey, work.pusher)
    ingest = register_ingest_tasks(huey, work.pipeline, stored=push.instance_stored)
    retention = register_retention_task(huey, work.apply_retention)
    backup = register_backup_task(huey, settings, work.daily_backup)
    details = register_study_details_task(huey, work.study_details)
    return Queue(huey, ingest.ingest, ingest.images, ingest.images_sweep, retention, backup,
                 push.push, push.sweep, details)  # fmt: skip
