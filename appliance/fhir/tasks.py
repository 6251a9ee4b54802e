"""The FHIR push tasks: push a changed study, and sweep for overdue pushes.

Declared here, beside the push (:class:`~appliance.fhir.push.Pusher`), which only the
queue worker loads and gives them; :mod:`appliance.jobs.queue` registers them with every
other task. After each stored object the ingest task runs :attr:`PushTasks.instance_stored`,
this domain's own step: it marks the study changed and queues its push.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from huey import Huey, crontab
from huey.api import TaskWrapper

SETTLE = 5.0  # seconds between a study's first change and its push: let the series land
PUSH_SWEEP_SCHEDULE = crontab()  # every minute; one indexed SELECT when nothing is overdue


class Rerun(Protocol):
    """What a push reports: its state, and when to run again (None: do not)."""

    state: str
    retry_in: float | None


class PushWork(Protocol):
    """The work behind the push tasks (the pusher, in the worker)."""

    def push(self, study_uid: str) -> Rerun:
        """Push a changed study to the clinic's FHIR server."""
        ...

    def instance_stored(self, sop_uid: str) -> str | None:
        """Mark the study of a stored instance changed; the study whose push to queue."""
        ...

    def overdue(self) -> list[str]:
        """The studies whose push is overdue (each is due again a minute later)."""
        ...


@dataclass(frozen=True)
class PushTasks:
    """The push tasks as registered on one Huey, and the step after a stored object."""

    push: TaskWrapper
    sweep: TaskWrapper
    instance_stored: Callable[[str], None]


def register_push_tasks(huey: Huey, work: Callable[[], PushWork]) -> PushTasks:
    """Register ``push_imaging_study`` and ``push_sweep`` on ``huey``; ``work()`` does
    what they ask."""

    @huey.task(name="push_imaging_study")
    def push_imaging_study(study_uid: str) -> str:
        """Push a changed study to ``[fhir] push_url``, again later if it failed or changed."""
        outcome = work().push(study_uid)
        if outcome.retry_in is not None:
            push_imaging_study.schedule((study_uid,), delay=outcome.retry_in)
        return outcome.state

    @huey.periodic_task(PUSH_SWEEP_SCHEDULE, name="push_sweep")
    def push_sweep() -> int:
        """Queue the FHIR pushes that are overdue (a deleted study, a lost queue entry)."""
        studies = work().overdue()
        for study_uid in studies:
            push_imaging_study(study_uid)
        return len(studies)

    def instance_stored(sop_uid: str) -> None:
        """Queue the push of the study of a stored object (when ``[fhir] push_url`` is on
        and no push of it is pending)."""
        study_uid = work().instance_stored(sop_uid)
        if study_uid:
            push_imaging_study.schedule((study_uid,), delay=SETTLE)

    return PushTasks(push_imaging_study, push_sweep, instance_stored)
