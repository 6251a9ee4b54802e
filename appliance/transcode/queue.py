"""The task queue: Huey on a SQLite file in the data home, or on Redis (cloud profile)."""

from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey

from appliance.config import Settings
from appliance.layout import HomeLayout

QUEUE_NAME = "neuronova"


def create_huey(settings: Settings, *, immediate: bool = False) -> Huey:
    """The Huey instance for ``settings``, with the appliance's tasks registered.

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
        huey = SqliteHuey(QUEUE_NAME, filename=str(path), immediate=immediate)
    from appliance.transcode.tasks import register_tasks

    register_tasks(huey, settings)
    return huey
