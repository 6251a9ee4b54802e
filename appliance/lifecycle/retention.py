"""Retention: studies older than ``[retention] years`` (off at 0, the default), by their
StudyDate or by the date they were received, deleted like an admin's deletion
(:mod:`appliance.lifecycle.deletion`), audited as user ``retention``.

A study without a StudyDate is never expired by ``study_date``. The queue's worker runs
:func:`apply_retention` hourly when it is on; ``neuronova retention --dry-run`` lists what
would go.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from appliance.config import Settings
from appliance.ingest.journal import Journal
from appliance.lifecycle.deletion import (
    DeletedStudy,
    StudyDeletionError,
    StudyNotFound,
    delete_study,
)

log = logging.getLogger("neuronova.retention")
RETENTION_USER = "retention"


def cutoff(years: int, today: dt.date | None = None) -> dt.date:
    """The date ``years`` years before ``today`` (29 February becomes 28 February)."""
    today = today or dt.date.today()
    try:
        return today.replace(year=today.year - years)
    except ValueError:
        return today.replace(year=today.year - years, day=28)


def expired_studies(
    settings: Settings, journal: Journal, today: dt.date | None = None
) -> list[dict[str, Any]]:
    """The studies the retention rule would delete now, oldest first (none when it is off)."""
    if not settings.retention.years:
        return []
    limit = cutoff(settings.retention.years, today)
    # Oldest first by the rule's own date, so that SQLite walks that date's index and reads
    # only the expired studies (ordered by the other date it would read them all).
    if settings.retention.by == "study_date":
        where, arg = "study_date != '' AND study_date < ?", limit.strftime("%Y%m%d")
        order = "study_date, received_at"
    else:
        where, arg = "received_at < ?", limit.isoformat()
        order = "received_at"
    sql = (
        "SELECT study_uid, patient_id, patient_name, study_date, received_at FROM studies "
        f"WHERE {where} ORDER BY {order}, study_uid"
    )
    return journal.read(lambda db: list(db.query(sql, [arg])))


def apply_retention(settings: Settings, journal: Journal) -> list[DeletedStudy]:
    """Delete every expired study; one that cannot be deleted now is logged and left for
    the next run."""
    deleted = []
    for study in expired_studies(settings, journal):
        try:
            deleted.append(delete_study(settings, journal, study["study_uid"], RETENTION_USER))
        except (StudyDeletionError, StudyNotFound) as exc:
            log.warning("retention: %s", exc)
    if deleted:
        log.info("retention deleted %d studies older than %d years (by %s)",
                 len(deleted), settings.retention.years, settings.retention.by)  # fmt: skip
    return deleted
