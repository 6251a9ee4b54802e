"""The retention task, declared beside the rule it applies
(:func:`appliance.lifecycle.retention.apply_retention`, which only the queue worker gives
it); :mod:`appliance.jobs.queue` registers it with every other task."""

from __future__ import annotations

from collections.abc import Callable

from huey import Huey, crontab
from huey.api import TaskWrapper

RETENTION_SCHEDULE = crontab(minute="17")  # hourly; the work does nothing when it is off


def register_retention_task(huey: Huey, run: Callable[[], int]) -> TaskWrapper:
    """Register ``retention`` on ``huey``; ``run()`` applies the rule (how many went)."""

    @huey.periodic_task(RETENTION_SCHEDULE, name="retention")
    def retention() -> int:
        """Apply ``[retention]`` (the worker's consumer runs it; off by default)."""
        return run()

    return retention
