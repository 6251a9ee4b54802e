"""The work behind the tasks in the queue worker: the domains' code, built on first use.

Only the worker loads this module (and through it the codec, the FHIR push and the
backup): the processes that only enqueue register the same tasks without their work.
One journal (the app database's connection and its lock) serves every task's work.
"""

from __future__ import annotations

import functools

from appliance.backup.daily import run_daily_backup
from appliance.config import Settings
from appliance.fhir.push import Pusher
from appliance.ingest.journal import Journal
from appliance.jobs.queue import Work
from appliance.lifecycle.retention import apply_retention
from appliance.lifecycle.study_details import fill_study_details
from appliance.store.orthanc import OrthancStore
from appliance.transcode.pipeline import Pipeline


def worker_work(settings: Settings, journal: Journal | None = None) -> Work:
    """The :class:`Work` of a worker for ``settings``: the transcode pipeline, the FHIR
    pusher, the retention rule, the daily backup and the older studies' details, sharing
    ``journal`` (by default one opened on the first task run)."""

    @functools.cache
    def the_journal() -> Journal:
        return journal or Journal(settings.layout.database_file)

    @functools.cache
    def pipeline() -> Pipeline:
        return Pipeline(settings, the_journal())

    @functools.cache
    def pusher() -> Pusher:
        return Pusher(settings, the_journal())

    def retention() -> int:
        return len(apply_retention(settings, the_journal()))

    def study_details() -> int:
        return fill_study_details(the_journal(), OrthancStore(settings))

    return Work(pipeline, pusher, retention, lambda: run_daily_backup(settings), study_details)
