"""The lifecycle tasks, declared beside the work they run (which only the queue worker
gives them): retention (:func:`appliance.lifecycle.retention.apply_retention`) and the
study details older studies lack (:func:`appliance.lifecycle.study_details.fill_study_details`);
:mod:`appliance.jobs.queue` registers them with every other task."""

from __future__ import annotations

from collections.abc import Callable

from huey import Huey, crontab
from huey.api import TaskWrapper

RETENTION_SCHEDULE = crontab(minute="17")  # hourly; the work does nothing when it is off
# Hourly, and once when the worker starts (appliance.jobs.worker); nothing to do after that.
STUDY_DETAILS_SCHEDULE = crontab(minute="41")


def register_retention_task(huey: Huey, run: Callable[[], int]) -> TaskWrapper:
    """Register ``retention`` on ``huey``; ``run()`` applies the rule (how many went)."""

    @huey.periodic_task(RETENTION_SCHEDULE, name="retention")
    def retention() -> int:
        """Apply ``[retention]`` (the worker's consumer runs it; off by default)."""
        return run()

    return retention


def register_study_details_task(huey: Huey, run: Callable[[], int]) -> TaskWrapper:
    """Register ``study_details`` on ``huey``; ``run()`` fills in what studies received
    before migration 4 lack for QIDO (how many it filled)."""

    @huey.periodic_task(STUDY_DETAILS_SCHEDULE, name="study_details")
    def study_details() -> int:
        """Fill in older studies' QIDO details from Orthanc (the worker runs it)."""
        return run()

    return study_details
