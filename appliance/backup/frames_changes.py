"""Which series' frame folders can have changed since the last snapshot: the journal says.

Every file below ``frames/<study>/<series>/`` is written by the ingest of an instance of
that series, and the journal moves the instance's ``updated_at`` as it goes (received,
claimed, stored: frame files and the first previews are written between claim and
stored) or, for the previews written later, leaves it without ``images_at`` until they
are there. The series metadata is rewritten just after ``stored``. So a snapshot asks the
journal (``instances (state, updated_at)`` index: what changed, not what is stored)

- for the series with an instance whose ``updated_at`` is at most :data:`MARGIN` before
  the previous snapshot's question (the margin covers the series metadata, written after
  ``stored`` once Orthanc answered, within its 60 s timeout, and the journal's whole
  seconds: the series of the last minutes before a snapshot are looked at once more by
  the next one), and
- adds the series the previous snapshot found still in progress (:func:`in_progress`: an
  instance received or being stored, or stored with its previews still to come): their
  files keep changing without ``updated_at`` moving.

A study deleted goes with its folder (``frames/`` changes); what the journal does not know
(a folder written by hand, a ``neuronova frames`` repair) waits for the weekly full walk
(:mod:`appliance.backup.home_files`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.ingest.journal import FAILED, PROCESSING, RECEIVED, STORED
from appliance.uids import is_valid_uid

MARGIN = timedelta(minutes=10)
STATES = (RECEIVED, PROCESSING, STORED, FAILED)
MAX_PENDING = 100_000  # series in progress a manifest names (more: a full walk next time)
Series = tuple[str, str]  # (study UID, series UID)

CHANGED = (
    "SELECT DISTINCT study_uid, series_uid FROM instances "
    f"WHERE state IN ({', '.join('?' * len(STATES))}) AND updated_at >= ?"
)
UNFINISHED = (
    "SELECT DISTINCT study_uid, series_uid FROM instances "
    "WHERE state IN (?, ?) OR (state = ? AND frames > 0 AND images_at IS NULL)"
)
UNFINISHED_IN = (
    "SELECT 1 FROM instances WHERE series_uid = ? "
    "AND (state IN (?, ?) OR (state = ? AND frames > 0 AND images_at IS NULL)) LIMIT 1"
)


def _connect(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)


def changed_since(database: Path, asked: str) -> set[Series]:
    """The series with an instance that moved since :data:`MARGIN` before ``asked`` (the
    previous snapshot's question, ISO 8601); empty without a database."""
    if not database.is_file():
        return set()
    since = (datetime.fromisoformat(asked) - MARGIN).isoformat(timespec="seconds")
    db = _connect(database)
    try:
        return {(a, b) for a, b in db.execute(CHANGED, [*STATES, since]) if valid((a, b))}
    finally:
        db.close()


def changed_series(database: Path, log: dict[str, Any]) -> set[Series]:
    """The series to look at after the snapshot whose ``frames_log`` is ``log``: those that
    changed since (:func:`changed_since`) and those it found in progress."""
    return changed_since(database, log["asked"]) | {(a, b) for a, b in log["pending"]}


def in_progress(database: Path, among: Iterable[Series] | None) -> list[Series]:
    """The series (of ``among``; None: of the whole journal, for a full walk) whose files
    are still being written, sorted."""
    if not database.is_file():
        return []
    db = _connect(database)
    try:
        states = [RECEIVED, PROCESSING, STORED]
        if among is None:
            found = set(db.execute(UNFINISHED, states))
        else:
            found = {s for s in among if db.execute(UNFINISHED_IN, [s[1], *states]).fetchone()}
    finally:
        db.close()
    return sorted(s for s in found if valid(s))


def valid(series: Any) -> bool:
    """Whether ``series`` is a (study UID, series UID) pair, as a manifest must name it."""
    return isinstance(series, (list, tuple)) and len(series) == 2 and all(map(is_valid_uid, series))
