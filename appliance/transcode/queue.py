"""The task queue: Huey on a SQLite file in the data home, or on Redis (cloud profile)."""

from __future__ import annotations

from dataclasses import dataclass

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from appliance.config import Settings
from appliance.layout import HomeLayout

QUEUE_NAME = "neuronova"


@dataclass(frozen=True)
class Queue:
    """The Huey instance and the tasks registered on it."""

    huey: Huey
    ingest: TaskWrapper

    def enqueue_ingest(self, sop_uid: str, spool_path: str, delay: float | None = None) -> None:
        """Queue the ingest of one spooled object (after ``delay`` seconds, if given)."""
        if delay:
            self.ingest.schedule((sop_uid, spool_path), delay=delay)
        else:
            self.ingest(sop_uid, spool_path)


def create_queue(settings: Settings, *, immediate: bool = False) -> Queue:
    """The queue for ``settings``, with the appliance's tasks registered.

    Parameters
    ----------
    settings
        ``redis_url`` selects Redis; otherwise the queue is ``db/queue.db`` in the home.
    immediate
        Run tasks synchronously when enqueued (unit tests).
    """
    if settings.redis_url:
        huey: Huey = RedisHuey(QUEUE_NAME, url=settings.redis_url, immediate=immediate)
    else:
        path = HomeLayout(settings.home).queue_file
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey(QUEUE_NAME, filename=str(path), immediate=immediate, timeout=30)
    from appliance.transcode.tasks import register_tasks

    return register_tasks(huey, settings)
