"""The daily backup task, declared beside the backup it runs
(:func:`appliance.backup.daily.run_daily_backup`, which only the queue worker loads and
gives it); :mod:`appliance.jobs.queue` registers it with every other task."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from huey import Huey, crontab
from huey.api import TaskWrapper

from appliance.config import Settings


def backup_schedule(settings: Settings) -> Callable[[datetime], bool]:
    """Daily at ``[backup] time`` (UTC, as Huey's periodic tasks run); the task does
    nothing when ``[backup] destination`` is empty."""
    hour, minute = settings.backup.hour_minute
    return crontab(minute=str(minute), hour=str(hour))


def register_backup_task(
    huey: Huey, settings: Settings, run: Callable[[], bool | None]
) -> TaskWrapper:
    """Register ``daily_backup`` on ``huey`` at :func:`backup_schedule`; ``run()`` takes it."""

    @huey.periodic_task(backup_schedule(settings), name="daily_backup")
    def daily_backup() -> bool | None:
        """Back up, prune and copy off-site per ``[backup]`` (appliance.backup.daily)."""
        return run()

    return daily_backup
