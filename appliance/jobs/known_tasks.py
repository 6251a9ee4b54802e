"""Queued tasks another version named differently: skipped with one warning, not a
traceback and a pause each.

The queue stores each task under its registered name. A task an older version queued
under a name this version does not register (a task renamed or moved) cannot run here:
Huey logged a traceback for each one and its consumer then paused before reading the
queue again, backing off up to 10 s, so 35,515 such previews in one upgraded home held
every new ingest up to 10 s. Where the worker reads the queue and the schedule, such a
task is dropped; where another process only looks (the queue monitor of the web app, the
doctor and ``neuronova ingest status``), it is left for the worker. Nothing is lost by
dropping them: at each start the worker queues again, from the journal, every object
not yet stored and one task for the previews still missing
(:meth:`appliance.ingest.intake.Ingest.recover`).
"""

from __future__ import annotations

import logging
from collections import Counter

from huey.api import Task
from huey.exceptions import HueyException

log = logging.getLogger(__name__)
REPORT_EVERY = 1000  # after the first warning for a name, one line per this many dropped
skipped: Counter[str] = Counter()  # task name -> how many this process skipped


class KnownTasksOnly:
    """A mixin for a :class:`huey.Huey` class: tasks of names it does not register are
    skipped (and counted) where Huey reads the queue and the schedule; reading to run
    them (the worker) removes them, reading to count them (the monitor) does not."""

    def dequeue(self) -> Task | None:
        """The next queued task this version knows, or None (none, or one dropped)."""
        data = self.storage.dequeue()  # type: ignore[attr-defined]
        return None if data is None else self._known(data)

    def _deserialize_all(self, messages: list[bytes]) -> list[Task]:
        """Huey's reading of the schedule and of pending tasks, without unknown ones."""
        return [task for task in map(self._known, messages) if task is not None]

    def _known(self, data: bytes) -> Task | None:
        try:
            return self.deserialize_task(data)  # type: ignore[attr-defined]
        except HueyException as exc:  # "NAME not found in TaskRegistry"
            _skip(str(exc).split(" ", 1)[0])
            return None


def _skip(name: str) -> None:
    """Count a task this version cannot run; warn at the first of its name, then rarely.
    The words hold in every process: the worker drops the task, a monitor only reads it."""
    skipped[name] += 1
    count = skipped[name]
    if count == 1:
        log.warning(
            "skipped a queued task of another version: %s (no task of that name here). The "
            "worker drops such tasks; at each start it queues again, from the journal, "
            "every object not yet stored and the previews still missing",
            name,
        )
    elif count % REPORT_EVERY == 0:
        log.warning("skipped %d queued tasks of another version named %s so far", count, name)
