"""Fill in the QIDO details of studies recorded before migration 4.

A QIDO study search is answered from the app's ``studies`` table
(:mod:`appliance.store.study_search`) only when every study it finds has the two
attributes the table gained in migration 4 (``ReferringPhysicianName``, ``StudyID``);
studies received before have NULL there, and Orthanc answers the searches that find
them. The queue worker fills them in from Orthanc's own record of each study, 100 per
``/tools/find``, when it starts and every hour (with nothing to do, one pass over the
table, a row per study).
"""

from __future__ import annotations

import logging

from appliance.ingest.journal import Journal
from appliance.store.orthanc import OrthancStore

log = logging.getLogger(__name__)
BATCH = 100  # studies per Orthanc request
MISSING = (
    "SELECT study_uid FROM studies "
    "WHERE referring_physician IS NULL OR dicom_study_id IS NULL LIMIT ?"
)
FILL = (
    "UPDATE studies SET referring_physician = coalesce(referring_physician, ?), "
    "dicom_study_id = coalesce(dicom_study_id, ?) WHERE study_uid = ?"
)


def fill_study_details(journal: Journal, orthanc: OrthancStore) -> int:
    """Copy the details each study lacks from Orthanc (empty if Orthanc does not hold the
    study: its next instance, if one comes, brings them); how many studies were filled.
    A value an ingest recorded meanwhile stays."""
    filled = 0
    while uids := journal.read(lambda db: [u for (u,) in db.execute(MISSING, [BATCH])]):
        tags = orthanc.studies_tags(uids)
        rows = [(*_details(tags.get(uid, {})), uid) for uid in uids]
        with journal.transaction() as db:
            db.conn.executemany(FILL, rows)
        filled += len(uids)
    if filled:
        log.info("search details filled in for %d studies received before this version", filled)
    return filled


def _details(tags: dict[str, str]) -> tuple[str, str]:
    return tags.get("ReferringPhysicianName", ""), tags.get("StudyID", "")
