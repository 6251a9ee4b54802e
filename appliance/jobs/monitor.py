"""The queue monitor: the appliance's tasks by kind, as Flower shows Celery's.

One place computes the queue's state for ``neuronova ingest status``, the System page
(``/api/admin/queue``), ``neuronova doctor`` and ``/api/metrics``. It reads three sources:

- Huey's storage, through Huey's API (SQLite or Redis alike): tasks pending and
  scheduled (retries waiting for their time), counted by task name;
- the ingest journal: received objects waiting or claimed, the oldest of them, objects
  whose JPEGs are still to come, and failed objects with their reason;
- the workers' activity files (:mod:`appliance.jobs.activity`): tasks running and
  each kind's last outcome; the backup status file for the last backup.

Reading pending tasks unpickles each one (about 5 us); at most :data:`SCAN_LIMIT` are
read, those beyond are counted as ``unclassified``.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlite_utils
from huey.api import TaskWrapper

from appliance.backup.status import read_status
from appliance.config import Settings
from appliance.jobs.activity import read_activity
from appliance.jobs.queue import Queue
from appliance.layout import HomeLayout

try:  # the cloud profile's queue; an install for the appliance profile may lack the package
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    RedisError = OSError  # type: ignore[misc, assignment]

# What Huey's storage raises when its SQLite file or Redis cannot be reached.
STORAGE_ERRORS = (sqlite3.Error, OSError, RedisError)
SCAN_LIMIT = 5000
FAILED_SHOWN = 200
AUDITED_UIDS = 50  # an audit row of a retry names at most this many objects
INGEST, PREVIEWS, BACKUPS = "ingest", "previews", "backups"
# Task name -> kind; a task not listed here is a kind of its own name.
KIND_OF = {
    "ingest_instance": INGEST,
    "write_images": PREVIEWS,
    "write_pending_images": PREVIEWS,
    "daily_backup": BACKUPS,
}
LABELS = {
    INGEST: "Ingest: transcode and store received objects",
    PREVIEWS: "Previews: rendered and thumbnail JPEGs",
    BACKUPS: "Backups (daily)",
    "retention": "Retention rule",
    "study_details": "Search details of older studies (filled in once after an upgrade)",
}
WAITING_SQL = """
SELECT coalesce(sum(state = 'received'), 0), coalesce(sum(state = 'processing'), 0),
       min(CASE WHEN state != 'failed' THEN received_at END), coalesce(sum(state = 'failed'), 0)
FROM instances WHERE state IN ('received', 'processing', 'failed')
"""
PREVIEWS_SQL = """
SELECT count(*), min(stored_at) FROM instances
WHERE state = 'stored' AND images_at IS NULL AND frames > 0
"""
FAILED_SQL = """
SELECT sop_uid, study_uid, source, attempts, updated_at, error FROM instances
WHERE state = 'failed' {study} ORDER BY updated_at DESC, sop_uid LIMIT ?
"""
T = TypeVar("T")
Reader = Callable[[Callable[[sqlite_utils.Database], T]], T]


def age_s(iso: str | None) -> float | None:
    """Seconds since the ISO 8601 time ``iso`` (None for None)."""
    if not iso:
        return None
    return round(max(0.0, time.time() - datetime.fromisoformat(iso).timestamp()), 1)


def failed_objects(
    db: sqlite_utils.Database, limit: int | None = FAILED_SHOWN, study: str | None = None
) -> list[dict[str, Any]]:
    """Failed objects, newest first, with their reason (``error``) and attempts; at most
    ``limit`` (None: all), of every study or of ``study``."""
    where, args = ("AND study_uid = ?", [study]) if study else ("", [])
    return list(db.query(FAILED_SQL.format(study=where), [*args, -1 if limit is None else limit]))


@dataclass(frozen=True)
class Queued:
    """What Huey's storage holds: tasks by name, ready to run and scheduled for later, and
    how many were not read (beyond :data:`SCAN_LIMIT`)."""

    pending: Counter[str] = field(default_factory=Counter)
    scheduled: Counter[str] = field(default_factory=Counter)
    unclassified: int = 0
    error: str | None = None


@dataclass
class KindState:
    """One kind of task: what waits, runs and failed, and how it last ended."""

    kind: str
    label: str
    periodic: bool
    pending: int | None = 0
    scheduled: int | None = 0
    running: int = 0
    waiting: int | None = None  # objects not done yet (ingest, previews)
    oldest_pending_age_s: float | None = None
    failed: int | None = None
    last: dict[str, Any] | None = None


@dataclass
class QueueState:
    """The whole queue: totals, kinds, and the newest failed objects."""

    backend: str
    pending: int | None
    scheduled: int | None
    unclassified: int
    workers: int
    oldest_pending_age_s: float | None
    failed_total: int
    kinds: list[KindState]
    failed: list[dict[str, Any]]
    error: str | None = None

    def kind(self, name: str) -> KindState:
        """The state of kind ``name`` (ingest, previews, ...)."""
        return next(k for k in self.kinds if k.kind == name)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the API and ``ingest status --json``)."""
        return asdict(self)


def kind_of(task_name: str) -> str:
    """The kind a task of this name counts under."""
    return KIND_OF.get(task_name, task_name)


class QueueMonitor:
    """Computes :class:`QueueState` for one home's queue."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.layout = settings.layout

    def queued(self) -> Queued:
        """Read Huey's storage (safe from any thread; Redis may be slow or down).

        A task enqueued with a delay waits in the queue until a worker moves it to the
        schedule: it counts as scheduled.
        """
        huey = self.queue.huey
        try:
            pending_total, scheduled_total = huey.pending_count(), huey.scheduled_count()
            tasks = huey.pending(SCAN_LIMIT)
            scheduled = Counter(task.name for task in huey.scheduled(SCAN_LIMIT))
        except STORAGE_ERRORS as exc:
            return Queued(error=f"queue storage unreachable: {type(exc).__name__}: {exc}")
        pending = Counter(task.name for task in tasks if huey.ready_to_run(task))
        later = Counter(task.name for task in tasks if not huey.ready_to_run(task))
        unread = pending_total - len(tasks) + scheduled_total - scheduled.total()
        return Queued(pending, scheduled + later, unread)

    def snapshot(self, read: Reader, failed_limit: int = FAILED_SHOWN) -> QueueState:
        """The state now; ``read`` runs a query on the app database (``Journal.read``, or
        :func:`on` for a database of the caller's thread). Huey is read first, outside it."""
        queued = self.queued()
        return read(lambda db: self.combine(db, queued, failed_limit))

    def combine(
        self, db: sqlite_utils.Database, queued: Queued, failed_limit: int = FAILED_SHOWN
    ) -> QueueState:
        """The state from what :meth:`queued` read and the journal in ``db``."""
        received, processing, oldest, failed_total = db.execute(WAITING_SQL).fetchone()
        previews, oldest_preview = db.execute(PREVIEWS_SQL).fetchone()
        activity = read_activity(self.layout)
        kinds: dict[str, KindState] = {}
        for task in self.queue.tasks():
            state = kinds.setdefault(kind_of(task.name), self._kind(task))
            state.pending = _add(state.pending, queued, queued.pending[task.name])
            state.scheduled = _add(state.scheduled, queued, queued.scheduled[task.name])
            state.running += activity.running.get(task.name, 0)
            state.last = activity.last.get(task.name, state.last)
        ingest = kinds[INGEST]
        ingest.running = processing  # claimed objects: exact, whichever worker has them
        ingest.waiting, ingest.failed = received + processing, failed_total
        ingest.oldest_pending_age_s = age_s(oldest)
        kinds[PREVIEWS].waiting = previews
        kinds[PREVIEWS].oldest_pending_age_s = age_s(oldest_preview)
        backups = kinds.setdefault(BACKUPS, KindState(BACKUPS, LABELS[BACKUPS], True, None, None))
        backups.last = _last_backup(self.layout) or backups.last
        return QueueState(
            backend="redis" if self.settings.queue.redis_url else "sqlite",
            pending=None if queued.error else queued.pending.total() + queued.unclassified,
            scheduled=None if queued.error else queued.scheduled.total(),
            unclassified=queued.unclassified,
            workers=activity.workers,
            oldest_pending_age_s=ingest.oldest_pending_age_s,
            failed_total=failed_total,
            kinds=list(kinds.values()),
            failed=failed_objects(db, failed_limit),
            error=queued.error,
        )

    @staticmethod
    def _kind(task: TaskWrapper) -> KindState:
        kind = kind_of(task.name)
        periodic = hasattr(task.task_class, "validate_datetime")
        return KindState(kind, LABELS.get(kind, kind.replace("_", " ").capitalize()), periodic)


def on(db: sqlite_utils.Database) -> Reader:
    """A :data:`Reader` for a database used on the caller's own thread."""
    return lambda query: query(db)


def _add(count: int | None, queued: Queued, more: int) -> int | None:
    return None if queued.error or count is None else count + more


def _last_backup(layout: HomeLayout) -> dict[str, Any] | None:
    record = read_status(layout)
    if record is None:
        return None
    return {"finished": record.get("finished"), "ok": bool(record.get("ok")),
            "result": record.get("dest"), "error": record.get("error")}  # fmt: skip
