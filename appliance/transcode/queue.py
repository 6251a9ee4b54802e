"""The task queue: Huey on a SQLite file in the data home, or on Redis (cloud profile).

Every process that enqueues (receiver, web app, CLI) and the worker that runs the tasks
build the same queue with :func:`create_queue`. Only the worker passes the code that does
the work (the transcode pipeline), so enqueueing never loads the codec.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Protocol

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import TaskWrapper
from huey.storage import SqliteStorage

from appliance.config import Settings
from appliance.fhir.push import SETTLE
from appliance.layout import HomeLayout
from appliance.transcode.wakeup import Wakeup

QUEUE_NAME = "neuronova"
INGEST_PRIORITY = 10
RETENTION_SCHEDULE = crontab(minute="17")  # hourly; the work does nothing when it is off
PUSH_SWEEP_SCHEDULE = crontab()  # every minute; one indexed SELECT when nothing is overdue


class TaskOutcome(Protocol):
    """What a task's work reports: its final state, and whether to run again later."""

    state: str
    retry_in: float | None
    images_later: bool
    push_study: str | None


class Rerun(Protocol):
    """What a task that may run again reports: its state, when to run again."""

    state: str
    retry_in: float | None


class TaskWork(Protocol):
    """The work behind the queue's tasks (the transcode pipeline, in the worker)."""

    def process(self, sop_uid: str, spool_path: str) -> TaskOutcome:
        """Transcode, verify, store and prepare one spooled object."""
        ...

    def write_images(self, sop_uid: str, spool_path: str) -> TaskOutcome:
        """Write the rendered and thumbnail JPEGs of a stored instance."""
        ...

    def apply_retention(self) -> int:
        """Delete the studies the retention rule expires (none when it is off)."""
        ...

    def push_study(self, study_uid: str) -> Rerun:
        """Push a changed study to the clinic's FHIR server."""
        ...

    def overdue_pushes(self) -> list[str]:
        """The studies whose push is overdue (each is due again a minute later)."""
        ...

    def daily_backup(self) -> bool | None:
        """Take the daily backup (None when ``[backup] destination`` is off)."""
        ...


class EnqueueOnly(RuntimeError):
    """A task ran in a process that only enqueues (no work was given to the queue)."""


class QueueStorage(SqliteStorage):
    """SQLite queue storage in WAL mode with ``synchronous=NORMAL``, whose dequeue waits
    to be woken (:mod:`appliance.transcode.wakeup`) when the queue is empty.

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


class LocalHuey(SqliteHuey):
    """Huey on :class:`QueueStorage`."""

    storage_class = QueueStorage


@dataclass(frozen=True)
class Queue:
    """The Huey instance and the tasks registered on it."""

    huey: Huey
    ingest: TaskWrapper
    images: TaskWrapper
    retention: TaskWrapper
    backup: TaskWrapper
    push: TaskWrapper
    push_sweep: TaskWrapper

    def enqueue_ingest(self, sop_uid: str, spool_path: str, delay: float | None = None) -> None:
        """Queue the ingest of one spooled object (after ``delay`` seconds, if given)."""
        if delay:
            self.ingest.schedule((sop_uid, spool_path), delay=delay)
        else:
            self.ingest(sop_uid, spool_path)

    def enqueue_images(self, sop_uid: str, spool_path: str) -> None:
        """Queue the JPEGs of a stored instance (after every queued ingest)."""
        self.images(sop_uid, spool_path)

    def tasks(self) -> list[TaskWrapper]:
        """Every task registered on the queue, in the order of the fields above."""
        found = (getattr(self, f.name) for f in fields(self))
        return [task for task in found if isinstance(task, TaskWrapper)]


def create_queue(
    settings: Settings,
    *,
    work: Callable[[], TaskWork] | None = None,
    immediate: bool = False,
) -> Queue:
    """The queue for ``settings``, with the appliance's tasks registered.

    Parameters
    ----------
    settings
        ``redis_url`` selects Redis; otherwise the queue is ``db/queue.db`` in the home.
    work
        Builds the work behind the tasks, on the first task run (the worker passes the
        transcode pipeline). Without it the queue only enqueues.
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
    cached = functools.cache(work or _enqueue_only)
    return _register_tasks(huey, cached, backup_schedule(settings))


def backup_schedule(settings: Settings) -> Callable[[datetime], bool]:
    """Daily at ``[backup] time`` (UTC, as Huey's periodic tasks run); the task does
    nothing when ``[backup] destination`` is empty."""
    hour, minute = settings.backup_hour_minute
    return crontab(minute=str(minute), hour=str(hour))


def _enqueue_only() -> TaskWork:
    raise EnqueueOnly("this process only enqueues; tasks run in the queue worker")


def _register_tasks(
    huey: Huey, work: Callable[[], TaskWork], backup_at: Callable[[datetime], bool]
) -> Queue:
    """Register the appliance's tasks on ``huey``; ``work()`` does what they ask."""
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
        if outcome.push_study:
            push_imaging_study.schedule((outcome.push_study,), delay=SETTLE)
        return outcome.state

    @huey.task(name="push_imaging_study")
    def push_imaging_study(study_uid: str) -> str:
        """Push a changed study to ``[fhir] push_url``, again later if it failed or changed."""
        outcome = work().push_study(study_uid)
        if outcome.retry_in is not None:
            push_imaging_study.schedule((study_uid,), delay=outcome.retry_in)
        return outcome.state

    @huey.task(name="write_images")
    def write_images(sop_uid: str, spool_path: str) -> str:
        """Write the rendered and thumbnail JPEGs of a stored instance (idempotent)."""
        outcome = work().write_images(sop_uid, spool_path)
        if outcome.retry_in is not None:
            write_images.schedule((sop_uid, spool_path), delay=outcome.retry_in)
        return outcome.state

    @huey.periodic_task(RETENTION_SCHEDULE, name="retention")
    def retention() -> int:
        """Apply ``[retention]`` (the worker's consumer runs it; off by default)."""
        return work().apply_retention()

    @huey.periodic_task(backup_at, name="daily_backup")
    def daily_backup() -> bool | None:
        """Back up, prune and copy off-site per ``[backup]`` (appliance.backup.daily)."""
        return work().daily_backup()

    @huey.periodic_task(PUSH_SWEEP_SCHEDULE, name="push_sweep")
    def push_sweep() -> int:
        """Queue the FHIR pushes that are overdue (a deleted study, a lost queue entry)."""
        studies = work().overdue_pushes()
        for study_uid in studies:
            push_imaging_study(study_uid)
        return len(studies)

    return Queue(
        huey, ingest_instance, write_images, retention, daily_backup, push_imaging_study, push_sweep
    )
