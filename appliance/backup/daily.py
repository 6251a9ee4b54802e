"""Taking a backup and recording its result; the daily backup the queue worker runs.

The daily backup (``[backup] destination``, at ``[backup] time`` UTC) takes a snapshot,
prunes the repository to ``[backup] keep_daily``/``keep_weekly``, and copies it to
``[backup] remote`` if one is set. Its result, failure included, goes to
``HOME/run/backup-status.json``; it never raises into the worker.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from appliance.backup import offsite
from appliance.backup.manifest import backup_key
from appliance.backup.prune import Keep, prune
from appliance.backup.repository import BackupError, Repository, RepositoryBusy
from appliance.backup.snapshot import Progress, take_snapshot
from appliance.backup.status import write_status
from appliance.config import Settings

log = logging.getLogger("neuronova.backup")
FAILURES = (BackupError, OSError, sqlite3.Error)
"""What a backup can meet that its message explains (a full disk, a remote refusing...)."""


def keep_of(settings: Settings) -> Keep:
    """``[backup] keep_daily`` and ``keep_weekly``."""
    return Keep(settings.backup.keep_daily, settings.backup.keep_weekly)


def backup_now(
    settings: Settings, dest: Path, progress: Progress, *, daily: bool = False
) -> dict[str, Any]:
    """Take a snapshot of the running home into ``dest`` and record the result.

    With ``daily``, also prune ``dest`` to the retention and push it to ``[backup]
    remote``, as the daily task does. Returns the status record; a failure is recorded
    before it is raised (one of :data:`FAILURES`), except :class:`RepositoryBusy`: the
    backup already using ``dest`` records its own result.
    """
    layout = settings.layout
    remote = settings.backup.remote if daily else ""
    record: dict[str, Any] = {"dest": str(dest), "snapshot": None, "remote": remote or None}
    try:
        result = take_snapshot(settings, dest, progress)
        record.update(
            snapshot=result.name,
            files=result.files,
            instances=result.instances,
            bytes_copied=result.bytes_copied,
            seconds=round(result.seconds, 2),
            **result.work.record(),
        )
        repo = Repository(dest, backup_key(layout))
        if daily:
            record["pruned"] = len(prune(repo, keep_of(settings)).removed)
        if remote:
            pushed = offsite.push(repo, offsite.Remote.from_settings(settings),
                                  keep_of(settings), lambda _line: None)  # fmt: skip
            record["remote_snapshots"] = pushed.snapshots
    except RepositoryBusy:
        raise
    except FAILURES as exc:
        write_status(layout, ok=False, error=str(exc), **record)
        raise
    return write_status(layout, ok=True, **record)


def run_daily_backup(settings: Settings) -> bool | None:
    """The daily task: :func:`backup_now` into ``[backup] destination``; never raises.

    Returns None when no destination is set or another backup is using it (several
    workers each queue the periodic task), else whether the backup succeeded.
    """
    if not settings.backup.destination:
        return None
    dest = Path(settings.backup.destination)
    try:
        record = backup_now(settings, dest, lambda _done, _total: None, daily=True)
    except RepositoryBusy as exc:  # e.g. a second worker's scheduler queued it too
        log.info("daily backup skipped: %s", exc)
        return None
    except FAILURES as exc:
        log.error("daily backup into %s failed: %s", dest, exc)
        return False
    except Exception as exc:  # recorded and logged: the worker goes on
        log.exception("daily backup into %s failed unexpectedly", dest)
        write_status(settings.layout, ok=False, dest=str(dest), snapshot=None,
                     error=f"unexpected error: {exc!r}")  # fmt: skip
        return False
    log.info("daily backup %s into %s: %s bytes copied", record["snapshot"], dest,
             record["bytes_copied"])  # fmt: skip
    return True
